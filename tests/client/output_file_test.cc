#include "client/output_file.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/fresh_test_dir.h"

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

TEST_F(OutputFileTest, APipeOrDeviceIsWrittenInPlace) {
  absl::StatusOr<OutputFile> file = OutputFile::Open("/dev/null");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->write_path(), "/dev/null");
  EXPECT_TRUE(file->Commit().ok());
}

}  // namespace
}  // namespace clipserve
