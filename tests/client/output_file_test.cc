#include "client/output_file.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/fresh_test_dir.h"
#include "tests/testing/unprivileged.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

class OutputFileTest : public ::testing::Test {
 protected:
  void SetUp() override { root_ = testing::FreshTestDir("output_file_test"); }
  void TearDown() override { fs::remove_all(root_); }

  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  int Entries() const {
    return static_cast<int>(std::distance(fs::directory_iterator(root_), {}));
  }

  fs::path root_;
};

TEST_F(OutputFileTest, APathThatCannotBeWrittenFailsAtOpenNamingIt) {
  const std::string path = (root_ / "no_such_folder" / "x.npy").string();
  const absl::StatusOr<OutputFile> file = OutputFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(file.status().message().rfind(path + ": cannot write", 0), 0u)
      << file.status();
}

TEST_F(OutputFileTest, AFolderIsRefusedAtOpen) {
  const absl::StatusOr<OutputFile> file = OutputFile::Open(root_.string());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      file.status().message().rfind(root_.string() + ": cannot write: is a folder", 0),
      0u)
      << file.status();
}

TEST_F(OutputFileTest, CommitReplacesTheFileWithWhatWasWritten) {
  const std::string path = (root_ / "x.jsonl").string();
  Write(path, "old");
  absl::StatusOr<OutputFile> file = OutputFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_NE(file->write_path(), path);
  EXPECT_EQ(Read(path), "old");  // untouched until the commit
  Write(file->write_path(), "new");
  ASSERT_TRUE(file->Commit().ok());
  EXPECT_EQ(Read(path), "new");
  EXPECT_EQ(Entries(), 1);  // no temporary file left
}

TEST_F(OutputFileTest, AnUncommittedFileLeavesTheOldOneAndNoTemporary) {
  const std::string path = (root_ / "x.npy").string();
  Write(path, "old");
  {
    absl::StatusOr<OutputFile> file = OutputFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    OutputFile moved = *std::move(file);  // the moved-from object removes nothing
    Write(moved.write_path(), "half");
    EXPECT_EQ(Entries(), 2);
  }
  EXPECT_EQ(Read(path), "old");
  EXPECT_EQ(Entries(), 1);
}

// /dev/stdout with stdout redirected to a file is such a link: renaming over it would
// replace /dev/stdout itself (when /dev is writable, as for root in a container).
TEST_F(OutputFileTest, ALinkIsWrittenThrough) {
  const std::string target = (root_ / "target.jsonl").string();
  const std::string link = (root_ / "link.jsonl").string();
  Write(target, "old");
  fs::create_symlink(target, link);
  absl::StatusOr<OutputFile> file = OutputFile::Open(link);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->write_path(), link);
  Write(file->write_path(), "new");
  ASSERT_TRUE(file->Commit().ok());
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(Read(target), "new");
  EXPECT_EQ(Entries(), 2);
}

// Whatever already sits at the temporary name, a link planted there or a file a
// killed run of the same pid left, is neither written through nor renamed over the
// output: the temporary file is a new one.
TEST_F(OutputFileTest, TheTemporaryFileIsAlwaysANewOne) {
  const std::string path = (root_ / "x.npy").string();
  const std::string taken = absl::StrCat(path, ".partial-", getpid());
  const std::string elsewhere = (root_ / "elsewhere").string();
  Write(elsewhere, "theirs");
  fs::create_symlink(elsewhere, taken);
  absl::StatusOr<OutputFile> file = OutputFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_NE(file->write_path(), taken);
  EXPECT_EQ(file->write_path().rfind(taken + "-", 0), 0u) << file->write_path();
  Write(file->write_path(), "ours");
  ASSERT_TRUE(file->Commit().ok());
  EXPECT_EQ(Read(path), "ours");
  EXPECT_FALSE(fs::is_symlink(path));
  EXPECT_EQ(Read(elsewhere), "theirs");
  EXPECT_TRUE(fs::is_symlink(taken));  // left as it was found
}

TEST_F(OutputFileTest, TheReplacementKeepsThePermissionBits) {
  const std::string path = (root_ / "x.npy").string();
  Write(path, "old");
  const fs::perms mode =
      fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read;  // 0640
  fs::permissions(path, mode);
  absl::StatusOr<OutputFile> file = OutputFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  Write(file->write_path(), "new");
  ASSERT_TRUE(file->Commit().ok());
  EXPECT_EQ(Read(path), "new");
  EXPECT_EQ(fs::status(path).permissions(), mode);
}

// Needs a user that file modes bind: as root, it runs as nobody.
TEST_F(OutputFileTest, AWritableFileInAFolderThatIsNotIsWrittenInPlace) {
  const std::string path = (root_ / "x.jsonl").string();
  Write(path, "old");
  testing::RunUnprivileged(root_, [&] {
    fs::permissions(root_, fs::perms::owner_read | fs::perms::owner_exec);
    const bool can_create = std::ofstream((root_ / "probe").string()).good();
    if (can_create) {
      fs::permissions(root_, fs::perms::owner_all);
      GTEST_SKIP() << "this user creates files whatever the folder's mode";
    }
    absl::StatusOr<OutputFile> file = OutputFile::Open(path);
    const absl::StatusOr<OutputFile> beside =
        OutputFile::Open((root_ / "new.jsonl").string());
    fs::permissions(root_, fs::perms::owner_all);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ(file->write_path(), path);
    EXPECT_EQ(Read(path), "old");  // opened to check, not truncated
    EXPECT_EQ(beside.status().code(), absl::StatusCode::kPermissionDenied);
  });
}

// Refused at once, not after the work: the replacement, which keeps the file's
// permission bits, could not have been written.
TEST_F(OutputFileTest, AReadOnlyFileIsRefusedAtOpen) {
  const std::string path = (root_ / "x.npy").string();
  Write(path, "old");
  fs::permissions(path, fs::perms::owner_read | fs::perms::group_read);
  testing::RunUnprivileged(root_, [&] {
    if (std::ofstream(path, std::ios::app).good()) {
      GTEST_SKIP() << "this user writes files whatever their mode";
    }
    absl::StatusOr<OutputFile> file = OutputFile::Open(path);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_NE(file.status().message().find(path), std::string::npos) << file.status();
    EXPECT_EQ(Read(path), "old");
    EXPECT_EQ(Entries(), 1) << "no temporary left";
  });
}

// The same through a link: written through, it is refused at once too, not after
// the work.
TEST_F(OutputFileTest, ALinkToAReadOnlyFileIsRefusedAtOpen) {
  const std::string target = (root_ / "x.npy").string();
  const std::string link = (root_ / "link.npy").string();
  Write(target, "old");
  fs::permissions(target, fs::perms::owner_read | fs::perms::group_read);
  fs::create_symlink(target, link);
  testing::RunUnprivileged(root_, [&] {
    if (std::ofstream(target, std::ios::app).good()) {
      GTEST_SKIP() << "this user writes files whatever their mode";
    }
    absl::StatusOr<OutputFile> file = OutputFile::Open(link);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(Read(target), "old");
  });
}

TEST_F(OutputFileTest, APipeOrDeviceIsWrittenInPlace) {
  absl::StatusOr<OutputFile> file = OutputFile::Open("/dev/null");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->write_path(), "/dev/null");
  EXPECT_TRUE(file->Commit().ok());
}

TEST(DescriptorNamedTest, NamesTheDescriptorOfEachSpelling) {
  EXPECT_EQ(DescriptorNamed("/dev/stdin"), 0);
  EXPECT_EQ(DescriptorNamed("/dev/stdout"), 1);
  EXPECT_EQ(DescriptorNamed("/dev/stderr"), 2);
  EXPECT_EQ(DescriptorNamed("/dev/fd/1"), 1);
  EXPECT_EQ(DescriptorNamed("/proc/self/fd/1"), 1);
  EXPECT_EQ(DescriptorNamed("/dev/fd/17"), 17);
  EXPECT_EQ(DescriptorNamed("/dev/fd/0"), 0);
  // /dev/fd/01 is no entry there; a second folder after the first is no descriptor.
  for (const char* other :
       {"", "-", "/dev/fd/", "/dev/fd/01", "/dev/fd//proc/self/fd/1", "/dev/fd/+1",
        "/dev/fd/-1", "/dev/fd/1x", "/dev/fd/1/", "/dev/fd/99999999999", "/proc/1/fd/1",
        "/dev/null", "dev/stdout", "/dev/stdout2"}) {
    EXPECT_EQ(DescriptorNamed(other), std::nullopt) << other;
  }
}

}  // namespace
}  // namespace clipserve
