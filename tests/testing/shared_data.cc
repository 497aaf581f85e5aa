#include "tests/testing/shared_data.h"

#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"

namespace clipserve::testing {

std::string SharedDir() {
  const char* env = std::getenv("CLIPSERVE_SHARED_DIR");
  const std::string dir = env != nullptr ? env : CLIPSERVE_DEFAULT_SHARED_DIR;
  if (!std::filesystem::is_directory(dir)) {
    ADD_FAILURE() << "shared test data not found at '" << dir
                  << "': these tests need the team's shared/ folder beside the checkout "
                     "(or CLIPSERVE_SHARED_DIR pointing at it)";
    return "";
  }
  return dir;
}

std::string SharedPath(const std::string& relative) {
  const std::string dir = SharedDir();
  if (dir.empty()) return "";
  const std::string path = dir + "/" + relative;
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "shared test file missing: " << path;
    return "";
  }
  return path;
}

}  // namespace clipserve::testing
