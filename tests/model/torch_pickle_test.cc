#include "server/model/torch_pickle.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<torch::Tensor> NoStorage(const std::string&, torch::ScalarType, int64_t) {
  return absl::InvalidArgumentError("no storages in this test");
}

TEST(TorchPickleTest, HostileNestingIsRefusedNotRecursedInto) {
  // PROTO 2, NONE, then 100000 x TUPLE1: a 100 KB chain of nested tuples.
  std::string pickle = "\x80\x02N";
  pickle += std::string(100000, '\x85');
  pickle += ".";
  auto tensors = TensorsFromTorchPickle(pickle, NoStorage);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(), HasSubstr("nested too deeply"));
}

TEST(TorchPickleTest, AMemoizedListGrownAfterItWasPlacedIsRefused) {
  // PROTO 2, NONE, an empty list (memo 0); then 1000 x: a new list (memo 1), APPEND it
  // to the list below, BUILD (drops that one), GET memo 1: each list is placed while
  // empty and only then given its child, so no depth ever counted the chain.
  std::string pickle("\x80\x02N]q\x00", 6);
  for (int i = 0; i < 1000; ++i)
    pickle +=
        "]q\x01"
        "abh\x01";  // (split: \x takes every hex digit)
  pickle += ".";
  auto tensors = TensorsFromTorchPickle(pickle, NoStorage);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(), HasSubstr("changed after it was placed"));
}

TEST(TorchPickleTest, AContainerInsideItselfIsRefused) {
  // An empty list (memo 0) appended to itself; a dict given itself as a value.
  for (const std::string& pickle : {std::string("\x80\x02]q\x00h\x00"
                                                "a.",
                                                8),
                                    std::string("\x80\x02}q\x00K\x01h\x00s.", 10)}) {
    auto tensors = TensorsFromTorchPickle(pickle, NoStorage);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(tensors.status().message(), HasSubstr("placed inside itself"));
  }
}

TEST(TorchPickleTest, MalformedPicklesAreInvalidArgument) {
  const std::pair<std::string, const char*> cases[] = {
      {"", "ends before STOP"},
      {"\x80\x02}", "ends before STOP"},
      {"\x80\x02\xff.", "unsupported opcode 0xff"},
      {"\x80\x02X\x10\x00\x00\x00ab.", "truncated"},
      {"\x80\x02s.", "stack underflow"},
      {"\x80\x02N.", "holds no dict"},
      {"\x80\x02}.", "no tensors"},
  };
  for (const auto& [pickle, message] : cases) {
    auto tensors = TensorsFromTorchPickle(pickle, NoStorage);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(tensors.status().message(), HasSubstr(message));
  }
}

}  // namespace
}  // namespace clipserve
