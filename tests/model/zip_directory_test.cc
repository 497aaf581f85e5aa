#include "server/model/zip_directory.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

struct Entry {
  std::string name;
  uint16_t method;
  std::string data;  // what the record holds in the file
  uint64_t size;     // what it says it inflates to
};

void Put(std::string* out, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out->push_back(static_cast<char>(value >> (8 * i)));
}

// A zip archive of `entries` as miniz writes one; with `zip64`, as it does past 4 GiB:
// the sizes and offsets saturated, the real ones in zip64 extra fields and records.
std::string Zip(const std::vector<Entry>& entries, bool zip64) {
  std::string out, directory;
  for (const Entry& e : entries) {
    const uint64_t offset = out.size();
    Put(&out, 0x04034b50, 4);
    Put(&out, 20, 2);
    Put(&out, 0, 2);
    Put(&out, e.method, 2);
    Put(&out, 0, 8);  // time, date, CRC (not read)
    Put(&out, e.data.size(), 4);
    Put(&out, e.size, 4);
    Put(&out, e.name.size(), 2);
    Put(&out, 0, 2);
    out += e.name + e.data;
    std::string extra;
    if (zip64) {
      Put(&extra, 1, 2);
      Put(&extra, 24, 2);
      Put(&extra, e.size, 8);
      Put(&extra, e.data.size(), 8);
      Put(&extra, offset, 8);
    }
    Put(&directory, 0x02014b50, 4);
    Put(&directory, 45, 2);
    Put(&directory, 45, 2);
    Put(&directory, 0, 2);
    Put(&directory, e.method, 2);
    Put(&directory, 0, 8);
    Put(&directory, zip64 ? 0xFFFFFFFF : e.data.size(), 4);
    Put(&directory, zip64 ? 0xFFFFFFFF : e.size, 4);
    Put(&directory, e.name.size(), 2);
    Put(&directory, extra.size(), 2);
    Put(&directory, 0, 6);  // comment length, disk, internal attributes
    Put(&directory, 0, 4);
    Put(&directory, zip64 ? 0xFFFFFFFF : offset, 4);
    directory += e.name + extra;
  }
  const uint64_t directory_offset = out.size();
  out += directory;
  if (zip64) {
    const uint64_t record = out.size();
    Put(&out, 0x06064b50, 4);
    Put(&out, 44, 8);
    Put(&out, 45, 2);
    Put(&out, 45, 2);
    Put(&out, 0, 8);
    Put(&out, entries.size(), 8);
    Put(&out, entries.size(), 8);
    Put(&out, directory.size(), 8);
    Put(&out, directory_offset, 8);
    Put(&out, 0x07064b50, 4);
    Put(&out, 0, 4);
    Put(&out, record, 8);
    Put(&out, 1, 4);
  }
  Put(&out, 0x06054b50, 4);
  Put(&out, 0, 4);
  Put(&out, zip64 ? 0xFFFF : entries.size(), 2);
  Put(&out, zip64 ? 0xFFFF : entries.size(), 2);
  Put(&out, zip64 ? 0xFFFFFFFF : directory.size(), 4);
  Put(&out, zip64 ? 0xFFFFFFFF : directory_offset, 4);
  Put(&out, 0, 2);
  return out;
}

std::string Write(const std::string& name, const std::string& bytes) {
  const std::string path = (std::filesystem::path(::testing::TempDir()) / name).string();
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

const std::vector<Entry> kEntries = {
    {"archive/data.pkl", 0, "pickle", 6},
    {"archive/data/0", 8, std::string(10, 'z'), 1 << 20},
};

TEST(ZipDirectoryTest, ReadsNamesMethodsAndSizesPlainOrZip64) {
  for (const bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64);
    auto records = ReadZipDirectory(Write("plain.zip", Zip(kEntries, zip64)));
    ASSERT_TRUE(records.ok()) << records.status();
    ASSERT_EQ(records->size(), 2u);
    EXPECT_EQ((*records)[0].name, "archive/data.pkl");
    EXPECT_EQ((*records)[0].method, 0);
    EXPECT_EQ((*records)[0].size, 6u);
    EXPECT_EQ((*records)[1].name, "archive/data/0");
    EXPECT_EQ((*records)[1].method, 8);
    EXPECT_EQ((*records)[1].compressed_size, 10u);
    EXPECT_EQ((*records)[1].size, uint64_t{1} << 20);
  }
}

TEST(ZipDirectoryTest, WhatIsNoReadableZipIsInvalidArgument) {
  const std::string zip = Zip(kEntries, false);
  // The end record's directory offset (its last 6 bytes: offset, comment length).
  std::string outside = zip;
  outside.replace(outside.size() - 6, 4, std::string("\xff\xff\xff\x7f", 4));
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"empty", ""},
           {"cut", zip.substr(0, zip.size() / 2)},
           {"outside", outside},
           {"noise", std::string(100, 'x')}}) {
    SCOPED_TRACE(name);
    auto records = ReadZipDirectory(Write(name + ".zip", bytes));
    EXPECT_EQ(records.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ReadZipDirectory("/no/such/file.zip").status().code(),
            absl::StatusCode::kNotFound);
}

// The directory read must be the one LibTorch's zip reader (miniz) reads, or a bomb
// could hide behind a harmless decoy directory.
TEST(ZipDirectoryTest, ReadsTheDirectoryMinizReads) {
  // miniz takes the last end record, whatever its comment length: one that claims a
  // comment running past the file was skipped for an earlier one, a decoy.
  std::string long_comment = Zip(kEntries, false);
  long_comment.replace(long_comment.size() - 2, 2, "\xff\xff");
  auto records = ReadZipDirectory(Write("long_comment.zip", long_comment));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[1].method, 8);

  // With a zip64 locator miniz takes the zip64 values even where the classic ones are
  // not saturated (a decoy: here an empty directory).
  std::string decoy = Zip(kEntries, true);
  const size_t classic = decoy.size() - 22;
  decoy.replace(classic + 8, 12, std::string(12, '\0'));  // 0 entries, 0 bytes at 0
  records = ReadZipDirectory(Write("zip64_decoy.zip", decoy));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[1].size, uint64_t{1} << 20);

  // The same with the end record at the very start of the last 64 KiB + 22 bytes (the
  // most miniz searches): its zip64 locator lies before them.
  std::string far = decoy + std::string(0xFFFF, 'x');
  records = ReadZipDirectory(Write("zip64_decoy_far.zip", far));
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);

  // A gap between the directory and its end record moves every offset in miniz 3
  // (the gap read as data before the archive) and none in miniz 2: refused.
  for (const bool zip64 : {false, true}) {
    std::string gap = Zip(kEntries, zip64);
    gap.insert(gap.size() - 22 - (zip64 ? 76 : 0), 10, '\0');
    if (zip64) {
      // The locator points where the zip64 end record now is.
      const size_t locator = gap.size() - 22 - 20;
      std::string at;
      Put(&at, locator - 56, 8);
      gap.replace(locator + 8, 8, at);
    }
    records = ReadZipDirectory(Write("gap.zip", gap));
    EXPECT_EQ(records.status().code(), absl::StatusCode::kInvalidArgument) << zip64;
    EXPECT_THAT(records.status().message(), HasSubstr("not right before its end record"));
  }
}

TEST(ZipDirectoryTest, CompressedRecordsMayNotInflateToMoreThanFourTimesTheFile) {
  std::vector<ZipRecord> records = {
      {"a/data.pkl", 0, 10, 10}, {"a/data/0", 8, 10, 300}, {"a/data/1", 8, 10, 100}};
  EXPECT_TRUE(CheckInflatedSize(records, 100).ok());  // 400 <= 4 x 100
  const absl::Status refused = CheckInflatedSize(records, 99);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("inflate to 400 bytes"));
  EXPECT_THAT(refused.message(), HasSubstr("a/data/0"));
  // Stored records inflate to nothing more than they are, but each must lie in the
  // file apart from the others: entries that share one stored record (a review's
  // 8 MiB file naming one record 256 times took 2.3 GB) are refused.
  records = {{"a/data.pkl", 0, 100, 100}, {"a/data/0", 0, 300, 300}};
  EXPECT_TRUE(CheckInflatedSize(records, 400).ok());
  const absl::Status overlapping = CheckInflatedSize(records, 399);
  EXPECT_EQ(overlapping.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      overlapping.message(),
      HasSubstr("stored records hold 400 bytes in all, more than the file's 399"));
}

}  // namespace
}  // namespace clipserve
