#ifndef CLIPSERVE_CLIENT_NPY_WRITER_H_
#define CLIPSERVE_CLIENT_NPY_WRITER_H_

#include <cstddef>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace clipserve {

// Writers of NumPy's .npy format, version 1.0
// (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html), for a
// C-ordered little-endian float32 matrix: numpy.load() returns an array of dtype
// float32 and shape (rows, cols). All functions are thread-safe.

// The 10-byte preamble plus the header dictionary
// "{'descr': '<f4', 'fortran_order': False, 'shape': (rows, cols), }", padded with
// spaces and a final newline so that the data starts at a multiple of 64 bytes (as
// numpy itself writes, and as memory-mapping readers like).
std::string NpyHeader(size_t rows, size_t cols);

// Writes header and data (rows * cols values, row-major). INVALID_ARGUMENT when
// `values` does not hold rows * cols values; DATA_LOSS when the stream fails.
absl::Status WriteNpy(std::ostream& out, size_t rows, size_t cols,
                      absl::Span<const float> values);

// WriteNpy() into a file at `path`, created or replaced (with `append`, written
// after what it holds: OutputFile::appends()); errors name the path.
absl::Status WriteNpyFile(const std::string& path, size_t rows, size_t cols,
                          absl::Span<const float> values, bool append = false);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_NPY_WRITER_H_
