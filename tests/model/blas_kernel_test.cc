#include "server/model/blas_kernel.h"

#include <string>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

constexpr char kSapphireRapids[] =
    "processor\t: 0\n"
    "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl "
    "avx512_bf16 amx_bf16 amx_tile\n";
constexpr char kSkylakeServer[] =
    "flags\t\t: fpu sse avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n";
constexpr char kZen2[] = "flags\t\t: fpu sse sse2 avx avx2 fma\n";
constexpr char kOld[] = "flags\t\t: fpu sse sse2 sse3\n";

TEST(BetterOpenBlasCoreTest, AGenericKernelOnAnAvx512CpuGetsSkylakeX) {
  EXPECT_EQ(BetterOpenBlasCore("Prescott", kSapphireRapids), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Haswell", kSapphireRapids), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Zen", kSkylakeServer), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Sandybridge", kSkylakeServer), "SkylakeX");
}

TEST(BetterOpenBlasCoreTest, AGenericKernelOnAnAvx2CpuGetsHaswell) {
  EXPECT_EQ(BetterOpenBlasCore("Prescott", kZen2), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Nehalem", kZen2), "Haswell");
}

TEST(BetterOpenBlasCoreTest, AKernelAsGoodAsTheCpuIsKept) {
  EXPECT_EQ(BetterOpenBlasCore("SkylakeX", kSapphireRapids), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("Cooperlake", kSapphireRapids), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("SapphireRapids", kSapphireRapids), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("Haswell", kZen2), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("Zen", kZen2), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("Prescott", kOld), std::nullopt);
}

TEST(BetterOpenBlasCoreTest, UnknownKernelsAndCpusAreLeftAlone) {
  EXPECT_EQ(BetterOpenBlasCore("SomeFutureCore", kSapphireRapids), std::nullopt);
  EXPECT_EQ(BetterOpenBlasCore("Prescott", ""), std::nullopt);
  // AVX-512 foundation alone (no BW/VL/DQ) does not run SkylakeX kernels.
  EXPECT_EQ(BetterOpenBlasCore("Prescott", "flags\t: avx2 fma avx512f\n"), "Haswell");
}

TEST(OpenBlasCoreNameTest, NamesTheKernelOfTheLinkedOpenBlas) {
  // This test links LibTorch, which links the system BLAS: OpenBLAS, as
  // scripts/install-deps.sh installs it.
  EXPECT_FALSE(OpenBlasCoreName().empty());
}

}  // namespace
}  // namespace clipserve
