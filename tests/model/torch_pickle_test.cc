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
