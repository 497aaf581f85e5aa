#include "server/service/request_parsing.h"

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <optional>
#include <string>

#include "absl/base/config.h"
#include "absl/status/status.h"
#include "clipserve/v1/clip_service.pb.h"
#include "google/rpc/error_details.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

// The sanitizers' runtimes define operator new themselves; elsewhere this file
// replaces it (at the end) to count what BytesAllocatedBy() asks for.
#if !defined(ABSL_HAVE_ADDRESS_SANITIZER) && !defined(ABSL_HAVE_THREAD_SANITIZER)
#define CLIPSERVE_COUNTS_ALLOCATIONS 1
#endif

// Bytes this thread allocates through operator new while counting.
thread_local bool counting_allocations = false;
thread_local int64_t allocated_bytes = 0;

// Skips the test where allocations are not counted.
#ifdef CLIPSERVE_COUNTS_ALLOCATIONS
#define SKIP_UNLESS_ALLOCATIONS_ARE_COUNTED()
#else
#define SKIP_UNLESS_ALLOCATIONS_ARE_COUNTED() \
  GTEST_SKIP() << "the sanitizer's runtime owns operator new"
#endif

int64_t BytesAllocatedBy(const std::function<void()>& run) {
  allocated_bytes = 0;
  counting_allocations = true;
  run();
  counting_allocations = false;
  return allocated_bytes;
}

// Proto3 C++ serializes invalid UTF-8 in a string field (it only logs), so tests can
// produce the bytes a careless client would send.
std::string Bytes(const google::protobuf::Message& message) {
  return message.SerializeAsString();
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Identity(absl::string_view path) { return std::string(path); }

constexpr int kMaxItems = 256;

std::string BadField(const absl::Status& status) {
  const auto payload = status.GetPayload(kBadRequestTypeUrl);
  if (!payload.has_value()) return "<no BadRequest>";
  google::rpc::BadRequest bad_request;
  if (!bad_request.ParseFromString(std::string(*payload))) return "<malformed>";
  return bad_request.field_violations(0).field();
}

TEST(ParseRequestTest, ParsesValidRequests) {
  v1::EmbedTextRequest request;
  request.add_texts("a cat");
  request.add_texts("caf\xC3\xA9");
  request.set_truncate(false);
  v1::EmbedTextRequest parsed;
  ASSERT_TRUE(ParseRequest(Buffer(Bytes(request)), &parsed, kMaxItems, Identity).ok());
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());
}

TEST(ParseRequestTest, NamesTheFieldWithInvalidUtf8) {
  v1::EmbedTextRequest request;
  request.add_texts("ok");
  request.add_texts("ok");
  request.add_texts("bad \xFF");
  v1::EmbedTextRequest parsed;
  const absl::Status status =
      ParseRequest(Buffer(Bytes(request)), &parsed, kMaxItems, Identity);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BadField(status), "texts[2]");
  EXPECT_EQ(status.message(), "texts[2]: not valid UTF-8");
}

TEST(ParseRequestTest, NamesNestedFieldsThroughTheRename) {
  v1::SimilarityRequest request;
  request.mutable_images()->mutable_images()->add_images()->set_encoded("\xFF\xD8 jpeg");
  request.mutable_texts()->mutable_texts()->add_texts("fine");
  request.mutable_texts()->mutable_texts()->add_texts("\xED\xA0\x80");
  EXPECT_EQ(FindInvalidUtf8Field(*v1::SimilarityRequest::descriptor(), Bytes(request)),
            "texts.texts.texts[1]");
  v1::SimilarityRequest parsed;
  const absl::Status status =
      ParseRequest(Buffer(Bytes(request)), &parsed, kMaxItems,
                   [](absl::string_view path) { return "renamed " + std::string(path); });
  EXPECT_EQ(BadField(status), "renamed texts.texts.texts[1]");
}

TEST(ParseRequestTest, BytesThatAreNoMessageAreInvalidArgument) {
  v1::EmbedTextRequest parsed;
  const absl::Status status =
      ParseRequest(Buffer("\xFF\xFF\xFF"), &parsed, kMaxItems, Identity);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "the request is not a valid clipserve.v1.EmbedTextRequest");
  EXPECT_EQ(BadField(status), "<no BadRequest>");
}

// A field's tag and a zero length: an empty string or message, 2 bytes on the wire.
std::string EmptyEntries(int field_number, int count) {
  std::string bytes;
  for (int i = 0; i < count; ++i) {
    bytes.push_back(static_cast<char>(field_number << 3 | 2));
    bytes.push_back('\0');
  }
  return bytes;
}

// 32 MiB of empty texts (16.7 million) would take a parser about a gigabyte: they are
// refused before any is built.
TEST(ParseRequestTest, TooManyEntriesAreRefusedBeforeTheyAreBuilt) {
  const std::string bytes = EmptyEntries(1, 16 << 20);
  v1::EmbedTextRequest parsed;
  const absl::Status status = ParseRequest(Buffer(bytes), &parsed, kMaxItems, Identity);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "texts: 16777216 items is over the limit of 256 per request");
  EXPECT_EQ(BadField(status), "texts");
  EXPECT_EQ(parsed.texts_size(), 0);
}

TEST(CheckEntryCountsTest, CountsEachRepeatedFieldUpToTheLimit) {
  const google::protobuf::Descriptor& text = *v1::EmbedTextRequest::descriptor();
  EXPECT_TRUE(CheckEntryCounts(Buffer(EmptyEntries(1, 256)), text, 256, Identity).ok());
  const absl::Status over =
      CheckEntryCounts(Buffer(EmptyEntries(1, 257)), text, 256, Identity);
  EXPECT_EQ(over.message(), "texts: 257 items is over the limit of 256 per request");
  // Classify's lists are counted apart: 256 of each is fine.
  const google::protobuf::Descriptor& classify = *v1::ClassifyRequest::descriptor();
  EXPECT_TRUE(CheckEntryCounts(Buffer(EmptyEntries(1, 256) + EmptyEntries(2, 256) +
                                      EmptyEntries(3, 256)),
                               classify, 256, Identity)
                  .ok());
  EXPECT_EQ(BadField(CheckEntryCounts(Buffer(EmptyEntries(2, 10) + EmptyEntries(3, 300)),
                                      classify, 256, Identity)),
            "templates");
}

// Nested lists are named by the top-level field they are under, through `field_name`.
TEST(CheckEntryCountsTest, NamesNestedListsByTheirTopLevelField) {
  v1::SimilarityRequest request;
  request.mutable_images()->mutable_images()->add_images()->set_encoded("jpeg");
  for (int i = 0; i < 300; ++i) {
    request.mutable_texts()->mutable_embeddings()->add_embeddings()->add_values(1);
  }
  const auto renamed = [](absl::string_view path) {
    return "renamed " + std::string(path);
  };
  const absl::Status status = CheckEntryCounts(
      Buffer(Bytes(request)), *v1::SimilarityRequest::descriptor(), 256, renamed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BadField(status), "renamed texts");
  EXPECT_EQ(status.message(),
            "renamed texts: 300 items is over the limit of 256 per request");
}

// SimilarityRequest's images and texts may both be precomputed embeddings: the same
// field of the same message type under two top-level fields, each with its own limit.
TEST(CheckEntryCountsTest, OneFieldUnderTwoTopLevelFieldsIsCountedApart) {
  const auto request = [](int images, int texts) {
    v1::SimilarityRequest request;
    for (int i = 0; i < images; ++i) {
      request.mutable_images()->mutable_embeddings()->add_embeddings()->add_values(1);
    }
    for (int i = 0; i < texts; ++i) {
      request.mutable_texts()->mutable_embeddings()->add_embeddings()->add_values(1);
    }
    return Buffer(Bytes(request));
  };
  const google::protobuf::Descriptor& similarity = *v1::SimilarityRequest::descriptor();
  EXPECT_TRUE(CheckEntryCounts(request(256, 256), similarity, 256, Identity).ok());
  EXPECT_TRUE(CheckEntryCounts(request(200, 100), similarity, 256, Identity).ok());
  const absl::Status images =
      CheckEntryCounts(request(257, 1), similarity, 256, Identity);
  EXPECT_EQ(images.message(), "images: 257 items is over the limit of 256 per request");
  const absl::Status texts = CheckEntryCounts(request(3, 257), similarity, 256, Identity);
  EXPECT_EQ(texts.message(), "texts: 257 items is over the limit of 256 per request");
}

// A field's tag with `wire_type`, `number` < 16.
std::string Tag(int number, int wire_type) {
  return std::string(1, static_cast<char>(number << 3 | wire_type));
}

TEST(CheckEntryCountsTest, NumbersAreNotCountedButUnknownFieldsAre) {
  // 1000 floats of one embedding, unpacked (one tag each): a parser stores 4 bytes each.
  std::string values;
  for (int i = 0; i < 1000; ++i) values += Tag(1, 5) + std::string("\0\0\x80\x3F", 4);
  EXPECT_TRUE(
      CheckEntryCounts(Buffer(values), *v1::Embedding::descriptor(), 4, Identity).ok());
  // Fields the type does not have are kept as they came: 16 per item of the limit are
  // allowed (a newer client's few fields on each image), counted all together.
  const google::protobuf::Descriptor& text = *v1::EmbedTextRequest::descriptor();
  EXPECT_TRUE(CheckEntryCounts(Buffer(EmptyEntries(9, 40) + EmptyEntries(10, 24)), text,
                               4, Identity)
                  .ok());
  const absl::Status unknown = CheckEntryCounts(
      Buffer(EmptyEntries(9, 40) + EmptyEntries(10, 25)), text, 4, Identity);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.message(),
            "the request holds 65 fields that a clipserve.v1.EmbedTextRequest does not "
            "have, over the limit of 64");
  // A group is kept whole among the unknown fields: what it holds counts too.
  const std::string group = Tag(9, 3) + EmptyEntries(1, 100) + Tag(9, 4);
  EXPECT_EQ(CheckEntryCounts(Buffer(group), text, 4, Identity).message(),
            "the request holds 101 fields that a clipserve.v1.EmbedTextRequest does not "
            "have, over the limit of 64");
  // So is a known field in another form than its type's: `normalize` (2, a bool) as
  // bytes, which a parser keeps as it came, each copy apart.
  EXPECT_EQ(CheckEntryCounts(Buffer(EmptyEntries(2, 65)), text, 4, Identity).code(),
            absl::StatusCode::kInvalidArgument);
  v1::EmbedTextRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(EmptyEntries(2, 65)));
  EXPECT_EQ(parsed.GetReflection()->GetUnknownFields(parsed).field_count(), 65);
  // 256 images each with two fields this server does not know (yet) are fine.
  v1::EmbedImageRequest images;
  for (int i = 0; i < 256; ++i) {
    v1::Image* image = images.add_images();
    image->set_encoded("jpeg");
    image->GetReflection()->MutableUnknownFields(image)->AddLengthDelimited(14, "");
    image->GetReflection()->MutableUnknownFields(image)->AddLengthDelimited(15, "");
  }
  EXPECT_TRUE(CheckEntryCounts(Buffer(Bytes(images)),
                               *v1::EmbedImageRequest::descriptor(), 256, Identity)
                  .ok());
}

// A singular message sent again is merged into the first: the lists of its copies add
// up, and are counted together.
TEST(CheckEntryCountsTest, CopiesOfASingularMessageAreCountedTogether) {
  v1::SimilarityRequest one;
  one.mutable_images()->mutable_images()->add_images()->set_encoded("jpeg");
  std::string copies;
  for (int i = 0; i < 300; ++i) copies += one.SerializeAsString();
  v1::SimilarityRequest merged;
  ASSERT_TRUE(merged.ParseFromString(copies));
  ASSERT_EQ(merged.images().images().images_size(), 300);
  const absl::Status status = CheckEntryCounts(
      Buffer(copies), *v1::SimilarityRequest::descriptor(), 256, Identity);
  EXPECT_EQ(status.message(), "images: 300 items is over the limit of 256 per request");
}

TEST(CheckEntryCountsTest, MalformedBytesAreCheckedUpToWhereTheyBreak) {
  const google::protobuf::Descriptor& text = *v1::EmbedTextRequest::descriptor();
  EXPECT_TRUE(CheckEntryCounts(Buffer("\xFF\xFF\xFF"), text, 1, Identity).ok());
  // A nested length past the end of the message.
  EXPECT_TRUE(CheckEntryCounts(Buffer(std::string("\x0A\x05\x0A", 3)),
                               *v1::SimilarityRequest::descriptor(), 1, Identity)
                  .ok());
  // A parser builds every text before the stray byte at the end: counted all the same.
  for (const std::string& end : {std::string(1, '\0'), std::string("\xFF")}) {
    const absl::Status status =
        CheckEntryCounts(Buffer(EmptyEntries(1, 300) + end), text, 256, Identity);
    EXPECT_EQ(status.message(), "texts: 300 items is over the limit of 256 per request");
  }
}

TEST(ReadUtf8FieldTest, ReadsTheLastValidValue) {
  v1::EmbedStreamRequest item;
  item.set_id("first");
  std::string bytes = Bytes(item);
  item.set_id("second");
  item.set_text("\xC3");  // invalid, elsewhere in the message
  bytes += Bytes(item);
  EXPECT_EQ(ReadUtf8Field(bytes, v1::EmbedStreamRequest::kIdFieldNumber), "second");
  EXPECT_EQ(ReadUtf8Field(bytes, v1::EmbedStreamRequest::kTextFieldNumber), std::nullopt);
  EXPECT_EQ(ReadUtf8Field(bytes, 9), std::nullopt);
  EXPECT_EQ(ReadUtf8Field("\xFF\xFF", 1), std::nullopt);
  // Read up to the first malformed field, as a stream item's id is echoed.
  EXPECT_EQ(
      ReadUtf8Field(Bytes(item) + "\xFF\xFF", v1::EmbedStreamRequest::kIdFieldNumber),
      "second");
}

// What the parse refused is walked, not built: as protobuf's UnknownFieldSet, each of
// these 2-byte fields would take 16 bytes and more (a string or a set of its own), so
// a request of 2-byte fields up to the message size limit took some 25 times its
// size. One million `normalize` flags (numbers are not counted: a parser keeps one),
// empty groups and empty ids around the fields looked for.
std::string ManyTinyFields(int count) {
  std::string bytes;
  for (int i = 0; i < count; ++i) {
    bytes += i % 3 == 0 ? "\x10\x01" : i % 3 == 1 ? "\x1B\x1C" : std::string("\x0A\0", 2);
  }
  return bytes;
}

TEST(FindInvalidUtf8FieldTest, BuildsNothingFromTheFieldsItWalks) {
  SKIP_UNLESS_ALLOCATIONS_ARE_COUNTED();
  const google::protobuf::Descriptor& stream = *v1::EmbedStreamRequest::descriptor();
  FindInvalidUtf8Field(stream, "");  // the descriptors' lazy parts, built once
  const std::string bytes = ManyTinyFields(1 << 20) + std::string("\x0A\x01\xFF", 3);
  std::optional<std::string> field;
  const int64_t allocated =
      BytesAllocatedBy([&] { field = FindInvalidUtf8Field(stream, bytes); });
  EXPECT_EQ(field, "id");
  EXPECT_LT(allocated, 4096);
}

// The whole refusal of a million flags (which the entry counts let through, as a
// parser keeps one) and a text that is not UTF-8: one copy of the bytes (Flatten),
// little more.
TEST(ParseRequestTest, ARefusalBuildsNothingFromTheFieldsItWalks) {
  SKIP_UNLESS_ALLOCATIONS_ARE_COUNTED();
  std::string bytes;
  for (int i = 0; i < 1 << 20; ++i) bytes += "\x10\x01";
  bytes += std::string("\x0A\x01\xFF", 3);
  const grpc::ByteBuffer buffer = Buffer(bytes);
  v1::EmbedTextRequest parsed;
  absl::Status status = ParseRequest(buffer, &parsed, kMaxItems, Identity);  // lazy parts
  const int64_t allocated = BytesAllocatedBy(
      [&] { status = ParseRequest(buffer, &parsed, kMaxItems, Identity); });
  EXPECT_EQ(status.message(), "texts[0]: not valid UTF-8");
  EXPECT_LT(allocated, static_cast<int64_t>(bytes.size()) + (64 << 10));
}

TEST(ReadUtf8FieldTest, BuildsNothingFromTheFieldsItWalks) {
  SKIP_UNLESS_ALLOCATIONS_ARE_COUNTED();
  const std::string bytes = ManyTinyFields(1 << 20) + "\x0A\x01x" + "\x1A\x01\xFF";
  ReadUtf8Field("", 1);
  std::optional<std::string> id;
  const int64_t allocated = BytesAllocatedBy(
      [&] { id = ReadUtf8Field(bytes, v1::EmbedStreamRequest::kIdFieldNumber); });
  EXPECT_EQ(id, "x");
  EXPECT_LT(allocated, 4096);
}

TEST(SerializeResponseTest, RoundTrips) {
  v1::EmbedTextResponse response;
  response.add_embeddings()->add_values(0.5f);
  response.set_model("m");
  grpc::ByteBuffer buffer;
  ASSERT_TRUE(SerializeResponse(response, &buffer).ok());
  EXPECT_EQ(Flatten(buffer), response.SerializeAsString());
}

}  // namespace
}  // namespace clipserve

#ifdef CLIPSERVE_COUNTS_ALLOCATIONS
// Counts what BytesAllocatedBy() asks for; the array and nothrow forms come through
// these.
void* operator new(std::size_t size) {
  if (clipserve::counting_allocations) {
    clipserve::allocated_bytes += static_cast<int64_t>(size);
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*size*/) noexcept { std::free(p); }
#endif  // CLIPSERVE_COUNTS_ALLOCATIONS
