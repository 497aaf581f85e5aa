#include "server/model/torch_pickle.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pickle_bytes.h"

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
      {"\x80\x02N.", "save its state_dict() instead"},
      {"\x80\x02}.", "no tensors"},
  };
  for (const auto& [pickle, message] : cases) {
    auto tensors = TensorsFromTorchPickle(pickle, NoStorage);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(tensors.status().message(), HasSubstr(message));
  }
}

// Each operation may make a value of about 100 bytes: a pickle may run 2^21 of them.
TEST(TorchPickleTest, APickleOfTooManyOperationsIsRefused) {
  std::string pickle;
  for (int i = 0; i < (1 << 21); ++i) pickle += "\x80\x02";  // PROTO 2, makes nothing
  auto tensors = TensorsFromTorchPickle(pickle + "}.", NoStorage);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(), HasSubstr("more than 2097152 operations"));
  // Two fewer PROTOs: the dict and STOP make 2^21 operations in all, which run.
  tensors = TensorsFromTorchPickle(pickle.substr(4) + "}.", NoStorage);
  EXPECT_THAT(tensors.status().message(), HasSubstr("no tensors"));
}

// Pickle pieces for TorchScript's data.pkl, as torch.jit.save writes them.
std::string Unicode(const std::string& s) { return testing::PickleUnicode(s); }

// An object of the TorchScript class `cls`, NEWOBJ'd and BUILD with `state_items` (a
// MARK'd run of key/value pickles) as its dict state.
std::string Module(const std::string& cls, const std::string& state_items) {
  return "c__torch__.m\n" + cls + "\n)\x81}(" + state_items + "ub";
}

// _rebuild_tensor_v2(storage `key` of 4 floats, 0, (4,), (1,)).
std::string Tensor(const std::string& key) { return testing::PickleFloatTensor(key); }

absl::StatusOr<torch::Tensor> CountingStorage(const std::string& key, torch::ScalarType,
                                              int64_t numel) {
  return torch::arange(numel, torch::kFloat) + 10 * std::stoi(key);
}

// What a training checkpoint may hold beside its weights: integers wider than 64 bits
// (LONG1, LONG4), sets and frozensets (protocol 4). None is read; none fails the file.
TEST(TorchPickleTest, ValuesBesideTheWeightsAreSkipped) {
  const std::string pickle =
      std::string("\x80\x04}(") + Unicode("seed") + "\x8a\x09" + std::string(9, '\xff') +
      Unicode("hash") + std::string("\x8b\x10\0\0\0", 5) + std::string(16, '\x01') +
      Unicode("tags") + "\x8f(" + Unicode("a") + Unicode("b") + "\x90" +
      Unicode("frozen") + "(K\x01\x91" + Unicode("w") + Tensor("0") + "u.";
  auto tensors = TensorsFromTorchPickle(pickle, CountingStorage);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE(tensors->at("w").equal(torch::arange(4, torch::kFloat)));
}

// _rebuild_tensor_v2 views a storage; torch.load refuses one given a tensor (a view
// of a view), whose offset would count from the storage's start.
TEST(TorchPickleTest, AViewOfATensorIsRefused) {
  const std::string view_of_view =
      "ctorch._utils\n_rebuild_tensor_v2\n(" + Tensor("0") + "K\x01(K\x02t(K\x01ttR";
  const std::string pickle =
      std::string("\x80\x04}(") + Unicode("w") + view_of_view + "u.";
  auto tensors = TensorsFromTorchPickle(pickle, CountingStorage);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(), HasSubstr("not of a storage"));
}

// A bad view names the storage record it views: the tensor's own name is not known
// yet, and the record is what a user can look for in the zip.
TEST(TorchPickleTest, ABadViewNamesItsStorageRecord) {
  const auto view = [](const std::string& size, const std::string& stride) {
    return "ctorch._utils\n_rebuild_tensor_v2\n((" + Unicode("storage") +
           "ctorch\nFloatStorage\n" + Unicode("7") + Unicode("cpu") +
           std::string("K\x04tQK\x00", 6) + size + stride + "tR";
  };
  for (const auto& [bad, why] : std::vector<std::pair<std::string, std::string>>{
           {view("(K\x05t", "(K\x01t"), "reaches element 4 of a storage of 4"},
           {view("(K\x02K\x02t", "(K\x01t"), "ranks differ"},
           {view(Unicode("x"), "(K\x01t"), "size is not a tuple"}}) {
    const std::string pickle = std::string("\x80\x04}(") + Unicode("w") + bad + "u.";
    auto tensors = TensorsFromTorchPickle(pickle, CountingStorage);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << why;
    const std::string message(tensors.status().message());
    EXPECT_THAT(message, HasSubstr(why));
    EXPECT_THAT(message, HasSubstr("storage record data/7"));
    // Said once: the storage is not named again by a caller that wraps the error.
    EXPECT_EQ(message.find("(a view of storage record"),
              message.rfind("(a view of storage record"));
  }
}

// Python's dict keeps the last value of a key set twice, and so does torch.load: a
// crafted file gave the first to clipserve and the last to PyTorch (a review).
TEST(TorchPickleTest, AKeyGivenTwiceKeepsItsLastValue) {
  const std::string pickle = std::string("\x80\x04}(") + Unicode("w") + Tensor("0") +
                             Unicode("w") + Tensor("1") + "u.";
  auto tensors = TensorsFromTorchPickle(pickle, CountingStorage);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE(tensors->at("w").equal(torch::arange(4, torch::kFloat) + 10));
}

TEST(TorchScriptPickleTest, ModulesGiveTheirTensorsByDottedPath) {
  const std::string pickle =
      "\x80\x02" +
      Module("Root", Unicode("scale") + Tensor("0") + Unicode("visual") +
                         Module("Sub", Unicode("weight") + Tensor("1") +
                                           Unicode("training") + "\x89") +
                         Unicode("training") + "\x88") +
      ".";
  auto tensors = TensorsFromTorchScriptPickle(pickle, CountingStorage);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 2u);
  EXPECT_TRUE(tensors->at("scale").equal(torch::arange(4, torch::kFloat)));
  EXPECT_TRUE(tensors->at("visual.weight").equal(torch::arange(4, torch::kFloat) + 10));
}

// A module's state is a Python dict: an attribute set twice has its last value, as
// torch.jit.load gives it. A dotted name two paths give is refused.
TEST(TorchScriptPickleTest, AnAttributeSetTwiceKeepsItsLastValue) {
  auto tensors = TensorsFromTorchScriptPickle(
      "\x80\x02" +
          Module("Root", Unicode("w") + Tensor("0") + Unicode("w") + Tensor("1")) + ".",
      CountingStorage);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE(tensors->at("w").equal(torch::arange(4, torch::kFloat) + 10));
  auto clash = TensorsFromTorchScriptPickle(
      "\x80\x02" +
          Module("Root", Unicode("a.w") + Tensor("0") + Unicode("a") +
                             Module("Sub", Unicode("w") + Tensor("1"))) +
          ".",
      CountingStorage);
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(clash.status().message(), HasSubstr("'a.w' is given by two paths"));
}

// A module memoized and placed in two parents, each level holding the one below twice,
// would be walked once per path: 2^depth times for a few bytes per level.
TEST(TorchScriptPickleTest, AModuleHeldByTwoParentsIsRefused) {
  const std::string pickle =
      "\x80\x02" +
      Module("Root", Unicode("a") + Module("Sub", Unicode("w") + Tensor("0")) + "q\x05" +
                         Unicode("b") + "h\x05") +
      ".";
  auto tensors = TensorsFromTorchScriptPickle(pickle, CountingStorage);
  EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tensors.status().message(),
              HasSubstr("module 'b.' is also a submodule elsewhere"));
}

// A module with its own __setstate__ is pickled with that method's state, not a dict:
// LibTorch would run the method while loading; here the module is inert, its state
// unread.
TEST(TorchScriptPickleTest, StateThatIsNotADictIsNeverInterpreted) {
  const std::string setstate_module =
      "c__torch__.m\nHook\n)\x81(" + Tensor("1") + "\x88tb";
  auto tensors = TensorsFromTorchScriptPickle(
      "\x80\x02" +
          Module("Root", Unicode("w") + Tensor("0") + Unicode("hook") + setstate_module) +
          ".",
      CountingStorage);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  EXPECT_EQ(tensors->size(), 1u);
  EXPECT_EQ(tensors->count("w"), 1u);
  auto alone =
      TensorsFromTorchScriptPickle("\x80\x02" + setstate_module + ".", CountingStorage);
  EXPECT_EQ(alone.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(alone.status().message(), HasSubstr("holds no tensors"));
}

TEST(TorchScriptPickleTest, MalformedArchivesAreInvalidArgument) {
  const std::pair<std::string, const char*> cases[] = {
      // The bytes that crashed LibTorch's unpickler (torch::jit::load).
      {"\x80\x02R.", "stack underflow"},
      {"\x80\x02"
       "b.",
       "stack underflow"},
      {"\x80\x02Q.", "stack underflow"},
      {"\x80\x02}.", "holds no module"},
      // A class outside __torch__ is no module: its state is dropped.
      {std::string("\x80\x02") + "cos\nsystem\n)\x81}(" + Unicode("w") + Tensor("0") +
           "ub.",
       "holds no module"},
  };
  for (const auto& [pickle, message] : cases) {
    auto tensors = TensorsFromTorchScriptPickle(pickle, CountingStorage);
    EXPECT_EQ(tensors.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(tensors.status().message(), HasSubstr(message));
  }
}

}  // namespace
}  // namespace clipserve
