#include "client/input_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fresh_test_dir.h"
#include "tests/testing/unprivileged.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class InputFilesTest : public ::testing::Test {
 protected:
  void SetUp() override { root_ = testing::FreshTestDir("input_files_test"); }
  void TearDown() override { fs::remove_all(root_); }

  std::string Touch(const std::string& relative, const std::string& content = "x") {
    const fs::path path = root_ / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << content;
    return path.string();
  }
  std::string P(const std::string& relative) const { return (root_ / relative).string(); }

  fs::path root_;
};

TEST_F(InputFilesTest, FolderListsImagesSortedByNameSkippingOthers) {
  Touch("b.jpg");
  Touch("a.PNG");
  Touch("c.webp");
  Touch("B.gif");
  Touch("notes.txt");
  Touch(".hidden.jpg");
  Touch("sub/d.jpg");
  auto files = ExpandImagePaths({root_.string()}, false);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files,
            (std::vector<std::string>{P("B.gif"), P("a.PNG"), P("b.jpg"), P("c.webp")}));
}

TEST_F(InputFilesTest, RecursiveDescendsWhereTheFolderSorts) {
  Touch("a.jpg");
  Touch("m/z.jpg");
  Touch("m/n/y.jpg");
  Touch("m/b.jpg");
  Touch("z.jpg");
  Touch(".git/x.jpg");
  auto files = ExpandImagePaths({root_.string()}, true);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{P("a.jpg"), P("m/b.jpg"), P("m/n/y.jpg"),
                                              P("m/z.jpg"), P("z.jpg")}));
}

TEST_F(InputFilesTest, RecursiveSkipsALinkBackUpTheTree) {
  Touch("a/x.jpg");
  Touch("b/y.jpg");
  fs::create_directory_symlink(root_, root_ / "a" / "loop");        // a/loop -> the root
  fs::create_directory_symlink(root_ / "b", root_ / "a" / "to_b");  // not a loop
  auto files = ExpandImagePaths({root_.string()}, /*recursive=*/true);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files,
            (std::vector<std::string>{P("a/to_b/y.jpg"), P("a/x.jpg"), P("b/y.jpg")}));
}

TEST_F(InputFilesTest, FilesAreTakenAsGivenInArgumentOrder) {
  const std::string second = Touch("photo.dat");
  const std::string first = Touch("x.jpg");
  auto files = ExpandImagePaths({second, first, second}, false);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{second, first, second}));
}

TEST_F(InputFilesTest, MissingPathIsNotFoundNamingIt) {
  auto files = ExpandImagePaths({P("missing.jpg")}, false);
  EXPECT_EQ(files.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(files.status().message().find(P("missing.jpg")), std::string::npos);
}

TEST_F(InputFilesTest, NothingFoundIsInvalidArgument) {
  Touch("sub/a.jpg");
  auto files = ExpandImagePaths({root_.string()}, false);
  EXPECT_EQ(files.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(files.status().message().find("--recursive"), std::string::npos);
}

TEST_F(InputFilesTest, ReadFileBytesAndErrorsNameThePath) {
  const std::string path = Touch("bytes.bin", std::string("\x00\x01\xff", 3));
  auto bytes = ReadFileBytes(path);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, std::string("\x00\x01\xff", 3));
  auto missing = ReadFileBytes(P("nope.jpg"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message().rfind(P("nope.jpg"), 0), 0u);
  auto folder = ReadFileBytes(root_.string());
  EXPECT_EQ(folder.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(InputFilesTest, ReadFileBytesRefusesAFileOverTheLimit) {
  const std::string path = Touch("big.jpg", std::string(200000, 'x'));
  EXPECT_EQ(ReadFileBytes(path, 200000)->size(), 200000u);
  const absl::Status big = ReadFileBytes(path, 199999).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(big.message(), path + ": 200000 bytes, over the limit of 199999");
  // Not a regular file (no size to look at first): refused while reading.
  const absl::Status piped = ReadFileBytes("/dev/zero", 100000).status();
  EXPECT_EQ(piped.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(piped.message().rfind("/dev/zero: at least ", 0), 0u) << piped;
}

TEST_F(InputFilesTest, ReadLinesSkipsBlankLinesAndCarriageReturns) {
  const std::string path =
      Touch("texts.txt", "a cat\r\n\na dog\n  \n\t \r\n  indented \nlast");
  auto lines = ReadLines(path);
  ASSERT_TRUE(lines.ok());
  EXPECT_EQ(*lines, (std::vector<std::string>{"a cat", "a dog", "  indented ", "last"}));
  EXPECT_TRUE(SplitLines("")->empty());
  EXPECT_TRUE(SplitLines(" \n\t\n")->empty());
  EXPECT_EQ(*SplitLines("one\n"), std::vector<std::string>{"one"});
}

TEST_F(InputFilesTest, ReadLinesDropsAByteOrderMarkAtTheStartOnly) {
  EXPECT_EQ(*SplitLines("\xEF\xBB\xBF"
                        "a cat\n\xEF\xBB\xBF"
                        "a dog"),
            (std::vector<std::string>{"a cat",
                                      "\xEF\xBB\xBF"
                                      "a dog"}));
  EXPECT_TRUE(SplitLines("\xEF\xBB\xBF")->empty());
}

// A subfolder that cannot be listed fails the expansion, or with `unlisted` is set
// aside there while the rest is listed. Needs a user that file modes bind: as root,
// it runs as nobody.
TEST_F(InputFilesTest, AnUnlistableSubfolderIsSetAsideWhenAsked) {
  Touch("a.jpg");
  Touch("locked/b.jpg");
  Touch("z/c.jpg");
  testing::RunUnprivileged(root_, [&] {
    fs::permissions(root_ / "locked", fs::perms::none);
    std::error_code listed;
    fs::directory_iterator probe(root_ / "locked", listed);
    if (!listed) {
      fs::permissions(root_ / "locked", fs::perms::owner_all);
      GTEST_SKIP() << "this user lists folders whatever their mode";
    }
    const auto failed = ExpandImagePaths({root_.string()}, /*recursive=*/true);
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kPermissionDenied);
    std::vector<absl::Status> unlisted;
    const auto files = ExpandImagePaths({root_.string()}, /*recursive=*/true, &unlisted);
    fs::permissions(root_ / "locked", fs::perms::owner_all);
    ASSERT_TRUE(files.ok()) << files.status();
    EXPECT_EQ(*files, (std::vector<std::string>{P("a.jpg"), P("z/c.jpg")}));
    ASSERT_EQ(unlisted.size(), 1u);
    EXPECT_EQ(unlisted[0].code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(unlisted[0].message().rfind(P("locked"), 0), 0u) << unlisted[0];
  });
}

// /dev/zero, an endless pipe or a huge file is refused at the limit, not read into
// memory until the client is killed.
TEST_F(InputFilesTest, TextAndTokenFilesAreReadUpToALimit) {
  const std::string path = Touch("texts", "a cat\na dog\n");
  ASSERT_TRUE(ReadLines(path, "text", 12).ok());
  const absl::Status over = ReadLines(path, "text", 11).status();
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(over.message()), HasSubstr("12 bytes, over the limit of 11"));
  // A device of endless bytes has no size to check first: the read stops at the limit.
  const absl::Status endless = ReadLines("/dev/zero", "text", 1 << 20).status();
  EXPECT_EQ(endless.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(endless.message()), HasSubstr("over the limit of 1048576"));
  // Short lines cost more kept than read (`yes`): their count is bounded too, before
  // they are kept.
  ASSERT_TRUE(ReadLines(path, "text", 100, 2).ok());
  const absl::Status lines = ReadLines(path, "label", 100, 1).status();
  EXPECT_EQ(lines.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(lines.message()),
              HasSubstr("more than 1 labels, over the limit"));
  EXPECT_FALSE(SplitLines("y\ny\ny\n", 2).has_value());
  // Standard input stops at the byte limit too.
  const int saved = dup(STDIN_FILENO);
  ASSERT_GE(saved, 0);
  const int zero = open("/dev/zero", O_RDONLY);
  ASSERT_GE(zero, 0);
  ASSERT_EQ(dup2(zero, STDIN_FILENO), STDIN_FILENO);
  const absl::Status from_stdin = ReadLines("-", "text", 1 << 20).status();
  dup2(saved, STDIN_FILENO);
  close(saved);
  close(zero);
  EXPECT_EQ(from_stdin.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(from_stdin.message()),
      HasSubstr("standard input: at least 1114112 bytes, over the limit of 1048576"));
  EXPECT_EQ(ReadTokenFile("/dev/zero").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadTokenFile(Touch("long_token", std::string(kMaxTokenFileBytes + 1, 'x')))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(InputFilesTest, ReadTokenFileTrimsAndWantsOneToken) {
  auto token = ReadTokenFile(Touch("token", "  s3cr3t-Token_v4l.~+/=\r\n"));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "s3cr3t-Token_v4l.~+/=");
  for (const char* contents : {"", " \n\t", "two words", "line1\nline2", "caf\xc3\xa9"}) {
    const std::string path = Touch("bad_token", contents);
    auto bad = ReadTokenFile(path);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << contents;
    EXPECT_EQ(bad.status().message().rfind(path, 0), 0u);
    // The message names the file, never what is in it.
    EXPECT_EQ(std::string(bad.status().message()).find("words"), std::string::npos);
    EXPECT_EQ(std::string(bad.status().message()).find("line2"), std::string::npos);
  }
  EXPECT_EQ(ReadTokenFile(P("missing")).status().code(), absl::StatusCode::kNotFound);
}

TEST(OpenErrorTest, CodeAndReasonFromErrno) {
  const absl::Status missing = OpenError("out/a.npy", "cannot open for writing", ENOENT);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(),
            "out/a.npy: cannot open for writing: No such file or directory");
  EXPECT_EQ(OpenError("a", "cannot open", EACCES).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(OpenError("a", "cannot open", EISDIR).code(),
            absl::StatusCode::kFailedPrecondition);
  // A stream that failed without an errno: no made-up reason.
  const absl::Status unknown = OpenError("a", "cannot open", 0);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(unknown.message(), "a: cannot open");
}

TEST(HasImageExtensionTest, KnownExtensionsAnyCase) {
  for (const char* yes :
       {"a.jpg", "a.JPEG", "x/y.jpe", "p.png", "w.webp", "g.GIF", "b.bmp"}) {
    EXPECT_TRUE(HasImageExtension(yes)) << yes;
  }
  for (const char* no : {"a.txt", "jpg", "a.jpg.bak", "a", "dir.d/file"}) {
    EXPECT_FALSE(HasImageExtension(no)) << no;
  }
}

}  // namespace
}  // namespace clipserve
