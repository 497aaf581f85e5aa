#include "server/service/request_parsing.h"

#include <algorithm>
#include <climits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/slice.h"
#include "server/common/status_macros.h"
#include "server/service/grpc_status.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

// Whether a message of type `descriptor` can hold a `string` field at any depth
// (`seen`: the types on the way here, for recursive ones).
bool MayHoldStrings(const google::protobuf::Descriptor& descriptor,
                    std::vector<const google::protobuf::Descriptor*>* seen) {
  if (std::find(seen->begin(), seen->end(), &descriptor) != seen->end()) return false;
  seen->push_back(&descriptor);
  for (int i = 0; i < descriptor.field_count(); ++i) {
    const google::protobuf::FieldDescriptor& field = *descriptor.field(i);
    if (field.type() == google::protobuf::FieldDescriptor::TYPE_STRING) return true;
    if (field.type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE &&
        MayHoldStrings(*field.message_type(), seen)) {
      return true;
    }
  }
  return false;
}

bool MayHoldStrings(const google::protobuf::Descriptor& descriptor) {
  std::vector<const google::protobuf::Descriptor*> seen;
  return MayHoldStrings(descriptor, &seen);
}

// Unknown fields allowed per item of max_items: a client built against a newer
// contract may send a few fields per image that this server does not know.
constexpr int64_t kUnknownFieldsPerItem = 16;

// What CheckEntryCounts() found: for each field under each top-level field, its
// entries over the whole request (the most, and the top-level field they are under),
// and the unknown fields in all. A field is counted apart under each top-level field:
// SimilarityRequest's images and texts both hold an EmbeddingList, and each may carry
// the limit.
struct EntryCounts {
  using Key = std::pair<const google::protobuf::FieldDescriptor*,
                        const google::protobuf::FieldDescriptor*>;  // top, field
  absl::flat_hash_map<Key, int64_t> per_field;
  int64_t most = 0;
  const google::protobuf::FieldDescriptor* most_under = nullptr;
  int64_t unknown = 0;
};

// Whether a parser may make an object of its own for each entry of `field`: repeated
// strings, bytes and messages, and messages (a singular message seen again is merged
// into the first, so a repeated parent's lists grow with each copy). Numbers and
// singular strings cost no more than their wire bytes.
bool Counted(const google::protobuf::FieldDescriptor& field) {
  using google::protobuf::FieldDescriptor;
  if (field.type() == FieldDescriptor::TYPE_MESSAGE ||
      field.type() == FieldDescriptor::TYPE_GROUP) {
    return true;
  }
  return field.is_repeated() && (field.type() == FieldDescriptor::TYPE_STRING ||
                                 field.type() == FieldDescriptor::TYPE_BYTES);
}

// Whether a parser reads an entry of `wire_type` into `field`, rather than keeping
// it among the unknown fields.
bool WireTypeFits(const google::protobuf::FieldDescriptor& field,
                  google::protobuf::internal::WireFormatLite::WireType wire_type) {
  using google::protobuf::internal::WireFormatLite;
  const WireFormatLite::WireType own = WireFormatLite::WireTypeForFieldType(
      static_cast<WireFormatLite::FieldType>(field.type()));
  // Repeated numbers may come packed, one length-delimited run, or one by one.
  return wire_type == own ||
         (field.is_packable() && wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
}

// Counts the fields of a group, which a parser keeps whole among the unknown fields,
// up to its end tag for `field_number`. False when the bytes are not well-formed.
bool CountGroup(google::protobuf::io::CodedInputStream* in, int field_number,
                EntryCounts* counts) {
  using google::protobuf::internal::WireFormatLite;
  if (!in->IncrementRecursionDepth()) return false;
  while (true) {
    const uint32_t tag = in->ReadTag();
    if (tag == 0) return false;  // the end came before the group's end
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    switch (WireFormatLite::GetTagWireType(tag)) {
      case WireFormatLite::WIRETYPE_END_GROUP:
        in->DecrementRecursionDepth();
        return number == field_number;
      case WireFormatLite::WIRETYPE_START_GROUP:
        ++counts->unknown;
        if (!CountGroup(in, number, counts)) return false;
        break;
      default:
        ++counts->unknown;
        if (!WireFormatLite::SkipField(in, tag)) return false;
    }
  }
}

// Walks the top-level fields of `bytes`, a serialized message, and calls `visit` with
// the number and value of each length-delimited one, in order, without building
// anything: a request refused by the parse may be up to the message size limit of
// 2-byte fields, which as an UnknownFieldSet would take some 25 times its size. False
// when the bytes are not well-formed wire format, however far `visit` was called.
bool ForEachLengthDelimitedField(
    absl::string_view bytes,
    absl::FunctionRef<void(int number, absl::string_view value)> visit) {
  using google::protobuf::internal::WireFormatLite;
  if (bytes.size() > static_cast<size_t>(INT_MAX)) return false;
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<int>(bytes.size()));
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return in.ConsumedEntireMessage();
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    if (number == 0) return false;
    switch (WireFormatLite::GetTagWireType(tag)) {
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
        uint32_t length = 0;
        if (!in.ReadVarint32(&length) || length > static_cast<uint32_t>(INT_MAX)) {
          return false;
        }
        const size_t at = static_cast<size_t>(in.CurrentPosition());
        if (!in.Skip(static_cast<int>(length))) return false;
        visit(number, bytes.substr(at, length));
        break;
      }
      case WireFormatLite::WIRETYPE_START_GROUP: {
        EntryCounts unused;
        if (!CountGroup(&in, number, &unused)) return false;
        break;
      }
      case WireFormatLite::WIRETYPE_END_GROUP:
        return false;
      default:
        if (!WireFormatLite::SkipField(&in, tag)) return false;
    }
  }
}

// Counts the entries of one message of type `descriptor` read from `in` up to its
// limit, nested messages included (`top`: the top-level field they are under, null at
// the top level). False when the bytes are not well-formed wire format.
bool CountEntries(google::protobuf::io::CodedInputStream* in,
                  const google::protobuf::Descriptor& descriptor,
                  const google::protobuf::FieldDescriptor* top, EntryCounts* counts) {
  using google::protobuf::internal::WireFormatLite;
  while (true) {
    const uint32_t tag = in->ReadTag();
    if (tag == 0) return in->ConsumedEntireMessage();
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    const WireFormatLite::WireType wire_type = WireFormatLite::GetTagWireType(tag);
    if (wire_type == WireFormatLite::WIRETYPE_END_GROUP) return false;
    const google::protobuf::FieldDescriptor* field = descriptor.FindFieldByNumber(number);
    // A known field on the wire in another form than its type's (a message sent as a
    // group, a bool as bytes) is kept among the unknown fields too.
    if (field == nullptr || !WireTypeFits(*field, wire_type)) {
      ++counts->unknown;
      if (wire_type == WireFormatLite::WIRETYPE_START_GROUP) {
        if (!CountGroup(in, number, counts)) return false;
      } else if (!WireFormatLite::SkipField(in, tag)) {
        return false;
      }
      continue;
    }
    if (Counted(*field)) {
      const google::protobuf::FieldDescriptor* under = top != nullptr ? top : field;
      const int64_t count = ++counts->per_field[{under, field}];
      if (count > counts->most) {
        counts->most = count;
        counts->most_under = under;
      }
    }
    if (field->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE &&
        wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length = 0;
      if (!in->ReadVarint32(&length)) return false;
      const auto limit = in->PushLimit(static_cast<int>(length));
      // The recursion budget bounds the depth (our messages do not nest themselves).
      if (!in->IncrementRecursionDepth()) return false;
      if (!CountEntries(in, *field->message_type(), top != nullptr ? top : field,
                        counts)) {
        return false;
      }
      in->DecrementRecursionDepth();
      if (in->BytesUntilLimit() != 0) return false;
      in->PopLimit(limit);
    } else if (!WireFormatLite::SkipField(in, tag)) {
      return false;
    }
  }
}

}  // namespace

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

absl::Status CheckEntryCounts(
    const grpc::ByteBuffer& bytes, const google::protobuf::Descriptor& descriptor,
    int max_items, absl::FunctionRef<std::string(absl::string_view)> field_name) {
  grpc::ByteBuffer copy(bytes);  // the reader takes a mutable one; the copy shares slices
  grpc::ProtoBufferReader reader(&copy);
  google::protobuf::io::CodedInputStream in(&reader);
  EntryCounts counts;
  // Bytes that are not well-formed are left to the parse, which refuses them; what
  // was counted before them is checked all the same, since the parse builds it first.
  CountEntries(&in, descriptor, nullptr, &counts);
  if (counts.most > max_items) {
    return InvalidArgumentForField(
        field_name(counts.most_under->name()),
        absl::StrCat(counts.most, " items is over the limit of ", max_items,
                     " per request"));
  }
  const int64_t max_unknown = kUnknownFieldsPerItem * max_items;
  if (counts.unknown > max_unknown) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the request holds ", counts.unknown, " fields that a ", descriptor.full_name(),
        " does not have, over the limit of ", max_unknown));
  }
  return absl::OkStatus();
}

absl::Status ParseRequest(const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* message, int max_items,
                          absl::FunctionRef<std::string(absl::string_view)> field_name) {
  CLIPSERVE_RETURN_IF_ERROR(
      CheckEntryCounts(bytes, *message->GetDescriptor(), max_items, field_name));
  // GenericDeserialize consumes its buffer; the copy shares the slices.
  grpc::ByteBuffer copy(bytes);
  if (grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(
          &copy, message)
          .ok()) {
    return absl::OkStatus();
  }
  const google::protobuf::Descriptor& descriptor = *message->GetDescriptor();
  message->Clear();
  if (!MayHoldStrings(descriptor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", descriptor.full_name()));
  }
  if (std::optional<std::string> field =
          FindInvalidUtf8Field(descriptor, Flatten(bytes))) {
    return InvalidArgumentForField(field_name(*field), "not valid UTF-8");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request is not a valid ", descriptor.full_name()));
}

absl::Status CheckResponseSize(const google::protobuf::Message& message,
                               int64_t max_bytes) {
  const size_t size = message.ByteSizeLong();
  if (max_bytes <= 0 || size <= static_cast<uint64_t>(max_bytes)) {
    return absl::OkStatus();
  }
  return ResponseTooLargeError(size, max_bytes);
}

absl::Status ResponseTooLargeError(size_t size, int64_t max_bytes) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "the response is ", size, " bytes, over the largest message this server sends (",
      max_bytes, " bytes): ask for fewer items per call"));
}

absl::Status SerializeResponse(const google::protobuf::Message& message,
                               grpc::ByteBuffer* out) {
  bool own_buffer = false;
  const grpc::Status status =
      grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(
          message, out, &own_buffer);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot serialize the response: ", status.error_message()));
  }
  return absl::OkStatus();
}

std::optional<std::string> FindInvalidUtf8Field(
    const google::protobuf::Descriptor& descriptor, absl::string_view bytes) {
  // Messages without strings (images, embeddings: most of a large request's bytes)
  // are not walked again.
  if (!MayHoldStrings(descriptor)) return std::nullopt;
  std::optional<std::string> found;
  absl::flat_hash_map<int, int> index_of;  // per field number, the next item index
  const bool well_formed =
      ForEachLengthDelimitedField(bytes, [&](int number, absl::string_view value) {
        if (found.has_value()) return;  // the rest is only checked to be well-formed
        const google::protobuf::FieldDescriptor* described =
            descriptor.FindFieldByNumber(number);
        if (described == nullptr) return;
        const int index = index_of[number]++;
        const auto name = [&] {
          return described->is_repeated()
                     ? absl::StrCat(described->name(), "[", index, "]")
                     : described->name();
        };
        if (described->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
          if (!IsValidUtf8(value)) found = name();
        } else if (described->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
          if (std::optional<std::string> inner =
                  FindInvalidUtf8Field(*described->message_type(), value)) {
            found = absl::StrCat(name(), ".", *inner);
          }
        }
      });
  return well_formed ? found : std::nullopt;
}

std::optional<std::string> ReadUtf8Field(absl::string_view bytes, int field_number) {
  std::optional<absl::string_view> value;
  // Walked up to the first malformed byte, if any: what comes before it still reads.
  ForEachLengthDelimitedField(bytes, [&](int number, absl::string_view field) {
    if (number == field_number) value = field;
  });
  if (!value.has_value() || !IsValidUtf8(*value)) return std::nullopt;
  return std::string(*value);
}

}  // namespace clipserve
