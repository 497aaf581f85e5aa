#ifndef CLIPSERVE_TESTS_TESTING_PICKLE_BYTES_H_
#define CLIPSERVE_TESTS_TESTING_PICKLE_BYTES_H_

#include <cstdint>
#include <string>

// Pieces of pickles as torch.save and torch.jit.save write them, for tests that build
// checkpoints byte by byte (what no writer would produce).

namespace clipserve::testing {

// BINUNICODE `s` (shorter than 64 KiB).
inline std::string PickleUnicode(const std::string& s) {
  const auto n = static_cast<uint32_t>(s.size());
  return std::string("X") + static_cast<char>(n & 0xFF) + static_cast<char>(n >> 8) +
         std::string(2, '\0') + s;
}

// _rebuild_tensor_v2(storage `key` of 4 floats, 0, (4,), (1,)).
inline std::string PickleFloatTensor(const std::string& key) {
  return "ctorch._utils\n_rebuild_tensor_v2\n((" + PickleUnicode("storage") +
         "ctorch\nFloatStorage\n" + PickleUnicode(key) + PickleUnicode("cpu") +
         std::string("K\x04tQK\x00(K\x04t(K\x01ttR", 16);
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_PICKLE_BYTES_H_
