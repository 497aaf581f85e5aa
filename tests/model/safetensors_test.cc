#include "server/model/safetensors.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

// Builds a safetensors byte string from a header and a data section.
std::string File(const std::string& header, size_t data_bytes, uint64_t declared = 0) {
  const uint64_t n = declared ? declared : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\x01');
}

absl::StatusOr<std::vector<SafetensorsEntry>> Parse(const std::string& file) {
  return ParseSafetensorsHeader(file, file.size());
}

TEST(SafetensorsHeaderTest, ParsesEntriesInNameOrder) {
  auto entries = Parse(File(
      R"({"b": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
          "a": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]},
          "__metadata__": {"format": "pt"}})",
      24));
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].name, "a");
  EXPECT_EQ((*entries)[0].dtype, SafetensorsDtype::kF32);
  EXPECT_EQ((*entries)[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*entries)[1].end, 12u);
}

// Every dtype a torch.save storage may have, each with its element size: two elements
// must span exactly twice that many bytes.
TEST(SafetensorsHeaderTest, TakesTheDtypesTorchSaveHas) {
  const struct {
    const char* name;
    SafetensorsDtype dtype;
    int size;
  } dtypes[] = {
      {"F64", SafetensorsDtype::kF64, 8}, {"F32", SafetensorsDtype::kF32, 4},
      {"F16", SafetensorsDtype::kF16, 2}, {"BF16", SafetensorsDtype::kBF16, 2},
      {"I64", SafetensorsDtype::kI64, 8}, {"I32", SafetensorsDtype::kI32, 4},
      {"I16", SafetensorsDtype::kI16, 2}, {"I8", SafetensorsDtype::kI8, 1},
      {"U8", SafetensorsDtype::kU8, 1},   {"BOOL", SafetensorsDtype::kBool, 1},
  };
  for (const auto& d : dtypes) {
    const auto header = [&](int bytes) {
      return File(absl::StrCat(R"({"x": {"dtype": ")", d.name,
                               R"(", "shape": [2], "data_offsets": [0, )", bytes, "]}}"),
                  bytes);
    };
    auto entries = Parse(header(2 * d.size));
    ASSERT_TRUE(entries.ok()) << d.name << ": " << entries.status();
    EXPECT_EQ((*entries)[0].dtype, d.dtype) << d.name;
    EXPECT_THAT(Parse(header(2 * d.size + 1)).status().message(), HasSubstr("need"))
        << d.name;
  }
}

TEST(SafetensorsHeaderTest, RejectsEveryMalformation) {
  const struct {
    std::string file;
    const char* message;
  } cases[] = {
      {"", "8-byte"},
      {File("{}", 0, 1000), "past the end"},
      {File("{}", 0, 1ull << 40), "exceeds"},
      {File("[1, 2]", 0), "not a JSON object"},
      {File("{not json", 0), "not a JSON object"},
      {File(R"({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", 1),
       "F8_E4M3"},
      {File(R"({"x": {"dtype": "U16", "shape": [1], "data_offsets": [0, 2]}})", 2),
       "U16"},
      {File(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 4),
       "need 8"},
      {File(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}})", 4),
       "outside"},
      {File(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
       "non-negative"},
      {File(R"({"x": {"dtype": "F32", "shape": [4611686018427387904, 8],
                "data_offsets": [0, 4]}})",
            4),
       "overflow"},
      // Beside a 0 no byte count overflows, but the dimension would turn negative.
      {File(R"({"x": {"dtype": "F32", "shape": [0, 18446744073709551615],
                "data_offsets": [0, 0]}})",
            0),
       "'x': shape overflows"},
      {File(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
            8),
       "overlap"},
      {File(R"({"x": {"dtype": "F32", "shape": [1]}})", 4), "data_offsets"},
      {File(R"({"x": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
                "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
            8),
       "2-byte hole"},
      {File(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 6),
       "2 bytes that belong to no tensor"},
  };
  for (const auto& c : cases) {
    auto entries = Parse(c.file);
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(entries.status().message(), HasSubstr(c.message));
  }
}

// The error names the bad dtype without printing all of it: a million levels of
// nesting would overflow the stack of a printer that recurses.
TEST(SafetensorsHeaderTest, ADeeplyNestedDtypeIsRefusedNotACrash) {
  constexpr int kDepth = 1'000'000;
  auto entries = Parse(File(absl::StrCat(R"({"x": {"dtype": )", std::string(kDepth, '['),
                                         std::string(kDepth, ']'),
                                         R"(, "shape": [], "data_offsets": [0, 0]}})"),
                            0));
  EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(entries.status().message(),
              HasSubstr("unsupported safetensors dtype [[[[...]]]] for tensor 'x'"));
}

// A file's header errors name the file: a server names it once, at load.
TEST(SafetensorsFileTest, ErrorsNameTheFile) {
  const std::string dir = ::testing::TempDir();
  const std::string short_path = dir + "/short.safetensors";
  std::ofstream(short_path, std::ios::binary) << "abc";
  const absl::Status too_short = SafetensorsFile::Open(short_path).status();
  EXPECT_EQ(too_short.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_short.message(), HasSubstr(short_path + ": malformed safetensors"));
  const std::string f8_path = dir + "/f8.safetensors";
  std::ofstream(f8_path, std::ios::binary)
      << File(R"({"x": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [0, 1]}})", 1);
  const absl::Status f8 = SafetensorsFile::Open(f8_path).status();
  EXPECT_EQ(f8.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f8.message(), HasSubstr(f8_path + ": unsupported safetensors dtype"));
  std::remove(short_path.c_str());
  std::remove(f8_path.c_str());
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace clipserve
