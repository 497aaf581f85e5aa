#include "client/npy_writer.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(NpyHeaderTest, IsVersion1WithAlignedDictionary) {
  const std::string header = NpyHeader(3, 512);
  ASSERT_GE(header.size(), 10u);
  EXPECT_EQ(header.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<uint8_t>(header[8]) |
                            (static_cast<size_t>(static_cast<uint8_t>(header[9])) << 8);
  EXPECT_EQ(header.size(), 10 + header_len);
  EXPECT_EQ(header.size() % 64, 0u) << "data starts 64-byte aligned";
  EXPECT_EQ(header.back(), '\n');
  const std::string dict = header.substr(10);
  EXPECT_EQ(
      dict.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 512), }", 0), 0u)
      << dict;
  EXPECT_EQ(dict.find_first_not_of(' ', dict.find('}') + 1), dict.size() - 1)
      << "only spaces pad the dictionary";
}

TEST(NpyHeaderTest, LargeShapesStillAligned) {
  for (size_t rows : {0ul, 1ul, 99999ul, 12345678901ul}) {
    const std::string header = NpyHeader(rows, 768);
    EXPECT_EQ(header.size() % 64, 0u);
    EXPECT_NE(header.find("(" + std::to_string(rows) + ", 768)"), std::string::npos);
  }
}

TEST(WriteNpyTest, WritesLittleEndianFloat32RowMajor) {
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 3e-8f, 100.f, -0.0f};
  std::ostringstream out;
  ASSERT_TRUE(WriteNpy(out, 2, 3, values).ok());
  const std::string bytes = out.str();
  const std::string header = NpyHeader(2, 3);
  ASSERT_EQ(bytes.size(), header.size() + values.size() * 4);
  EXPECT_EQ(bytes.substr(0, header.size()), header);
  // 1.0f is 0x3F800000: little-endian bytes 00 00 80 3F.
  EXPECT_EQ(bytes.substr(header.size(), 4), std::string("\x00\x00\x80\x3f", 4));
  std::vector<float> back(values.size());
  std::memcpy(back.data(), bytes.data() + header.size(), back.size() * 4);
  EXPECT_EQ(back, values);
}

TEST(WriteNpyTest, RejectsWrongValueCount) {
  std::ostringstream out;
  EXPECT_EQ(WriteNpy(out, 2, 3, std::vector<float>(5)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WriteNpyFileTest, WritesFileAndNamesPathOnError) {
  const std::string path = ::testing::TempDir() + "/npy_writer_test.npy";
  ASSERT_TRUE(WriteNpyFile(path, 1, 2, std::vector<float>{1, 2}).ok());
  std::ifstream file(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), {});
  EXPECT_EQ(bytes.size(), NpyHeader(1, 2).size() + 8);
  std::filesystem::remove(path);

  // The code says what is wrong: a missing folder, or a folder where the file goes.
  absl::Status status =
      WriteNpyFile("/nonexistent-dir/x.npy", 1, 1, std::vector<float>{1});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_NE(status.message().find("/nonexistent-dir/x.npy"), std::string::npos) << status;
  EXPECT_EQ(WriteNpyFile(::testing::TempDir(), 1, 1, std::vector<float>{1}).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace clipserve
