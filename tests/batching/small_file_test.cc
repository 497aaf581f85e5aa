#include "server/common/small_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fresh_test_dir.h"
#include "tests/testing/unprivileged.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class SmallFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
    return path;
  }

  const std::filesystem::path dir_ = testing::FreshTestDir("small_file");
};

TEST_F(SmallFileTest, ReadsAFileOfUpToTheCapWhole) {
  const std::string path = Write("ten", "0123456789");
  const absl::StatusOr<std::string> read = ReadSmallFile(path, "test file", 10);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "0123456789");
  const absl::StatusOr<std::string> empty =
      ReadSmallFile(Write("empty", ""), "test file", 10);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, "");
}

TEST_F(SmallFileTest, RefusesAFileOverTheCapNamingItAndTheCap) {
  const std::string path = Write("eleven", "0123456789A");
  const absl::Status status = ReadSmallFile(path, "test file", 10).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("cannot read test file '" + path + "': larger than 10 bytes"));
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("0123")))
      << "the contents are never quoted";
}

// The cap counts the bytes read, not the size stat() reports: /proc files report 0,
// and a file may grow between the check and the read.
TEST_F(SmallFileTest, TheCapCountsTheBytesReadNotTheSizeReported) {
  struct stat info;
  ASSERT_EQ(stat("/proc/self/maps", &info), 0);
  ASSERT_EQ(info.st_size, 0);
  const absl::Status status = ReadSmallFile("/proc/self/maps", "maps", 16).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("larger than 16 bytes"));
}

TEST_F(SmallFileTest, RefusesDevicesAndDirectories) {
  for (const std::string& path : {std::string("/dev/zero"), dir_.string()}) {
    const absl::Status status = ReadSmallFile(path, "test file", 1 << 20).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(std::string(status.message()), HasSubstr("not a regular file")) << path;
  }
}

// Opening a FIFO for reading waits for a writer: a path to one must fail, not hang.
TEST_F(SmallFileTest, RefusesAFifoWithoutWaitingForAWriter) {
  const std::string path = (dir_ / "fifo").string();
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  auto read = std::async(std::launch::async, [&] {
    return ReadSmallFile(path, "test file", 1 << 20).status();
  });
  if (read.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "ReadSmallFile waits for a writer on a FIFO";
    std::ofstream(path) << "";  // a writer, so the read (and the test) can end
  }
  const absl::Status status = read.get();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not a regular file"));
}

TEST_F(SmallFileTest, AMissingFileIsNotFoundAndAnEmptyPathInvalid) {
  const std::string missing = (dir_ / "missing").string();
  const absl::Status status = ReadSmallFile(missing, "test file", 10).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("cannot read test file '" + missing + "'"));
  EXPECT_EQ(ReadSmallFile((dir_ / "missing" / "below").string(), "test file", 10)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  const absl::Status empty = ReadSmallFile("", "test file", 10).status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.message()), HasSubstr("no file given for the test file"));
}

// Present, absent, or not for this user to know: a folder that may not be searched
// is an error, not an absence. Needs a user that file modes bind: as root, it runs as
// nobody.
TEST_F(SmallFileTest, IsRegularFileTellsAbsentFromForbidden) {
  const auto said = [](const std::string& path) -> std::string {
    const absl::StatusOr<bool> is = IsRegularFile(path, "test file");
    if (!is.ok()) return is.status().ToString();
    return *is ? "a file" : "no file";
  };
  const std::string file = Write("file", "x");
  EXPECT_EQ(said(file), "a file");
  EXPECT_EQ(said(dir_.string()), "no file");
  EXPECT_EQ(said((dir_ / "missing").string()), "no file");
  EXPECT_EQ(said(file + "/below"), "no file");
  std::filesystem::create_directories(dir_ / "locked");
  const std::string inside = Write("locked/file", "x");
  testing::RunUnprivileged(dir_, [&] {
    std::filesystem::permissions(dir_ / "locked", std::filesystem::perms::none);
    const absl::StatusOr<bool> forbidden = IsRegularFile(inside, "test file");
    std::filesystem::permissions(dir_ / "locked", std::filesystem::perms::owner_all);
    if (forbidden.ok()) GTEST_SKIP() << "this user searches folders whatever their mode";
    EXPECT_EQ(forbidden.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(
        std::string(forbidden.status().message()),
        HasSubstr("cannot look for test file '" + inside + "': Permission denied"));
  });
}

}  // namespace
}  // namespace clipserve
