#ifndef CLIPSERVE_TESTS_TESTING_FRESH_TEST_DIR_H_
#define CLIPSERVE_TESTS_TESTING_FRESH_TEST_DIR_H_

#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace clipserve::testing {

// An empty folder for the running test, TempDir()/<prefix>_<test name>: whatever an
// earlier run left there is removed first. The test removes it when done.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      (prefix + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_FRESH_TEST_DIR_H_
