#ifndef CLIPSERVE_TESTS_TESTING_UNPRIVILEGED_H_
#define CLIPSERVE_TESTS_TESTING_UNPRIVILEGED_H_

#include <grp.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <system_error>

#include "gtest/gtest.h"

namespace clipserve::testing {

// Gives `dir` and everything in it to `uid`:`gid`.
inline void ChownTree(const std::filesystem::path& dir, uid_t uid, gid_t gid) {
  std::error_code ec;
  ASSERT_EQ(::lchown(dir.c_str(), uid, gid), 0) << dir;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir, ec)) {
    ASSERT_EQ(::lchown(entry.path().c_str(), uid, gid), 0) << entry.path();
  }
  ASSERT_FALSE(ec) << ec.message();
}

// Runs `body`, a test of what file modes forbid, as a user they bind. Run by root
// (as CI runs), whom modes do not bind, `body` runs in a child process that has given
// itself up to nobody (65534), with `dir`, the test's folder, given to it meanwhile.
// The child's failures are printed as they happen and fail the test; a skip in it
// skips the test.
inline void RunUnprivileged(const std::filesystem::path& dir,
                            const std::function<void()>& body) {
  if (::geteuid() != 0) {
    body();
    return;
  }
  constexpr uid_t kNobody = 65534;
  ChownTree(dir, kNobody, kNobody);
  if (::testing::Test::HasFatalFailure()) return;
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0) << "fork failed";
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 ||
        ::setuid(kNobody) != 0) {
      std::fprintf(stderr, "cannot become nobody\n");
      std::_Exit(2);
    }
    // The child ends here whatever happens: it must not go on to the next tests.
    try {
      body();
    } catch (...) {
      std::fprintf(stderr, "the unprivileged body threw\n");
      std::_Exit(1);
    }
    std::fflush(nullptr);
    std::_Exit(::testing::Test::HasFailure() ? 1 : ::testing::Test::IsSkipped() ? 3 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ChownTree(dir, 0, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "the unprivileged child ended by a signal";
  if (WEXITSTATUS(status) == 3) GTEST_SKIP() << "skipped as nobody";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the unprivileged run failed (see above)";
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_UNPRIVILEGED_H_
