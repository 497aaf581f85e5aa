#ifndef CLIPSERVE_TESTS_TESTING_SHARED_DATA_H_
#define CLIPSERVE_TESTS_TESTING_SHARED_DATA_H_

#include <string>

namespace clipserve::testing {

// The team's shared test material (real CLIP vocabulary, tokenizer cases, images):
// $CLIPSERVE_SHARED_DIR when set, else ../shared beside the source tree. Tests may read
// it; the product never does. When the folder is missing this fails the calling test
// with a message naming the path looked at, and returns "".
std::string SharedDir();

// SharedDir() + "/" + relative, or "" (after failing the test) when SharedDir() fails
// or the file does not exist.
std::string SharedPath(const std::string& relative);

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_SHARED_DATA_H_
