#ifndef CLIPSERVE_SERVER_MODEL_BLAS_KERNEL_H_
#define CLIPSERVE_SERVER_MODEL_BLAS_KERNEL_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

// fp32 matrix products in LibTorch go to the BLAS; Debian's LibTorch uses OpenBLAS,
// which picks its kernels for the CPU it detects when the library loads. OpenBLAS
// 0.3.21 (bookworm) does not know some newer CPUs and falls back to a kernel from
// 2004 ("Prescott"), several times slower than the CPU can run; an environment may
// also pin an older kernel (OPENBLAS_CORETYPE). These helpers tell which kernel runs
// and which one the CPU could run instead. No LibTorch.

namespace clipserve {

// The OpenBLAS kernel family in use ("Haswell", "SkylakeX", ...), from OpenBLAS's own
// openblas_get_corename() looked up in the running process; empty when the process
// has no OpenBLAS.
std::string OpenBlasCoreName();

// The kernel family to ask OpenBLAS for (OPENBLAS_CORETYPE) when the one in use is
// weaker than what `cpuinfo` (contents of /proc/cpuinfo) says the CPU supports:
// AVX-512 F/BW/VL/DQ -> "SkylakeX"; AVX2 + FMA -> "Haswell". nullopt when `current` is as
// good, or unknown (left alone).
std::optional<std::string> BetterOpenBlasCore(absl::string_view current,
                                              absl::string_view cpuinfo);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_BLAS_KERNEL_H_
