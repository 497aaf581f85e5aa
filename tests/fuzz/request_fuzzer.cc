// libFuzzer target: arbitrary bytes as each ClipService request whose bytes the server
// reads itself (server/service/request_parsing.h), checked against libprotobuf's own
// parser. A network client controls these bytes, and request_parsing walks the wire
// format by hand before anything is parsed: to bound what the parse may allocate, to
// name the field whose string is not UTF-8, and to read a stream item's id. Each input
// is read as every such request type, under a small item limit and a large one.
//
// Invariants, beyond "no crash and no sanitizer report":
//  - ParseRequest() accepts exactly what libprotobuf parses and CheckEntryCounts()
//    lets through, and then builds the very message libprotobuf builds; anything else
//    is INVALID_ARGUMENT.
//  - What CheckEntryCounts() lets through parses into at most `max_items` entries of
//    each counted field under each top-level field, and at most 16 x `max_items`
//    unknown fields: its count is a bound on what the parse builds.
//  - When the bytes parse as the request's "bytes twin" (the same messages with every
//    `string` field declared `bytes`: the same wire format, no UTF-8 check) but not as
//    the request, FindInvalidUtf8Field() names a path through messages to a string
//    field; for a request that sends no singular message twice and one member of
//    each oneof, as client libraries do, a path to an item the parse built, and when
//    it names an item of a list, one that is not UTF-8.
//  - IsValidUtf8() judges every string as libprotobuf's parser does.
//  - ReadUtf8Field() gives a top-level string field's value as a parser keeps it.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "clipserve/v1/clip_service.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "google/protobuf/stubs/common.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "server/service/request_parsing.h"
#include "server/tokenizer/unicode_text.h"

namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

void Check(bool condition, const char* what) {
  if (!condition) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

// The request types and, in a second pool, their bytes twins.
class Requests {
 public:
  Requests() {
    for (const Message* request :
         {static_cast<const Message*>(
              &clipserve::v1::EmbedImageRequest::default_instance()),
          static_cast<const Message*>(
              &clipserve::v1::EmbedTextRequest::default_instance()),
          static_cast<const Message*>(
              &clipserve::v1::SimilarityRequest::default_instance()),
          static_cast<const Message*>(
              &clipserve::v1::ClassifyRequest::default_instance()),
          static_cast<const Message*>(
              &clipserve::v1::EmbedStreamRequest::default_instance()),
          static_cast<const Message*>(
              &clipserve::v1::TokenizeRequest::default_instance())}) {
      AddTwinFile(*request->GetDescriptor()->file());
      const Descriptor* twin =
          pool_.FindMessageTypeByName(request->GetDescriptor()->full_name());
      Check(twin != nullptr, "every request type has a twin");
      types_.push_back({request, factory_.GetPrototype(twin)});
    }
  }

  struct Type {
    const Message* request;
    const Message* twin;
  };
  const std::vector<Type>& types() const { return types_; }

 private:
  static void StringsToBytes(google::protobuf::DescriptorProto* message) {
    for (google::protobuf::FieldDescriptorProto& field : *message->mutable_field()) {
      if (field.type() == google::protobuf::FieldDescriptorProto::TYPE_STRING) {
        field.set_type(google::protobuf::FieldDescriptorProto::TYPE_BYTES);
      }
    }
    for (google::protobuf::DescriptorProto& nested : *message->mutable_nested_type()) {
      StringsToBytes(&nested);
    }
  }

  void AddTwinFile(const google::protobuf::FileDescriptor& file) {
    if (pool_.FindFileByName(file.name()) != nullptr) return;
    for (int i = 0; i < file.dependency_count(); ++i) AddTwinFile(*file.dependency(i));
    google::protobuf::FileDescriptorProto proto;
    file.CopyTo(&proto);
    for (google::protobuf::DescriptorProto& message : *proto.mutable_message_type()) {
      StringsToBytes(&message);
    }
    Check(pool_.BuildFile(proto) != nullptr, "the twin file builds");
  }

  google::protobuf::DescriptorPool pool_;
  google::protobuf::DynamicMessageFactory factory_{&pool_};
  std::vector<Type> types_;
};

std::string Identity(absl::string_view path) { return std::string(path); }

// The unknown fields of `fields`, a group's own fields included.
int64_t CountUnknown(const UnknownFieldSet& fields) {
  int64_t count = fields.field_count();
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).type() == UnknownField::TYPE_GROUP) {
      count += CountUnknown(fields.field(i).group());
    }
  }
  return count;
}

// What a parsed request holds, counted as CheckEntryCounts() counts the wire: entries
// of repeated strings and bytes, and messages, per (top-level field, field).
struct Built {
  absl::flat_hash_map<std::pair<const FieldDescriptor*, const FieldDescriptor*>, int64_t>
      entries;
  int64_t unknown = 0;
};

void CountBuilt(const Message& message, const FieldDescriptor* top, Built* built) {
  const Reflection& reflection = *message.GetReflection();
  built->unknown += CountUnknown(reflection.GetUnknownFields(message));
  std::vector<const FieldDescriptor*> fields;
  reflection.ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const FieldDescriptor* under = top != nullptr ? top : field;
    const bool is_message = field->type() == FieldDescriptor::TYPE_MESSAGE;
    if (field->is_repeated()) {
      const int size = reflection.FieldSize(message, field);
      if (is_message || field->type() == FieldDescriptor::TYPE_STRING ||
          field->type() == FieldDescriptor::TYPE_BYTES) {
        built->entries[{under, field}] += size;
      }
      if (is_message) {
        for (int i = 0; i < size; ++i) {
          CountBuilt(reflection.GetRepeatedMessage(message, field, i), under, built);
        }
      }
    } else if (is_message) {
      built->entries[{under, field}] += 1;
      CountBuilt(reflection.GetMessage(message, field), under, built);
    }
  }
}

// Every `bytes` value of the twin `message`, the request's strings among them, is
// judged alike by IsValidUtf8() and by libprotobuf's UTF-8 check.
void CheckUtf8Agreement(const Message& message) {
  const Reflection& reflection = *message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection.ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const int size = field->is_repeated() ? reflection.FieldSize(message, field) : 1;
    for (int i = 0; i < size; ++i) {
      if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
        CheckUtf8Agreement(field->is_repeated()
                               ? reflection.GetRepeatedMessage(message, field, i)
                               : reflection.GetMessage(message, field));
      } else if (field->type() == FieldDescriptor::TYPE_BYTES) {
        const std::string value = field->is_repeated()
                                      ? reflection.GetRepeatedString(message, field, i)
                                      : reflection.GetString(message, field);
        Check(clipserve::IsValidUtf8(value) ==
                  google::protobuf::internal::IsStructurallyValidUTF8(value),
              "IsValidUtf8 agrees with libprotobuf");
      }
    }
  }
}

// Whether the message of type `descriptor` in `bytes` (well-formed) sends every
// singular message field at most once and at most one member of each oneof, nested
// messages included. Only then is each item on the wire one item of the parsed message:
// a parser merges a message sent twice, and a oneof member clears the one before.
bool SentPlainly(const Descriptor& descriptor, absl::string_view bytes) {
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return false;
  absl::flat_hash_map<int, int> seen;  // field number: times sent
  absl::flat_hash_map<const google::protobuf::OneofDescriptor*, int> oneof_member;
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& entry = fields.field(i);
    const FieldDescriptor* field = descriptor.FindFieldByNumber(entry.number());
    if (field == nullptr || entry.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    if (const google::protobuf::OneofDescriptor* oneof = field->real_containing_oneof()) {
      const auto [it, first] = oneof_member.emplace(oneof, field->number());
      if (!first && it->second != field->number()) return false;
    }
    if (field->type() != FieldDescriptor::TYPE_MESSAGE) continue;
    if (!field->is_repeated() && ++seen[field->number()] > 1) return false;
    if (!SentPlainly(*field->message_type(), entry.length_delimited())) return false;
  }
  return true;
}

// Follows FindInvalidUtf8Field()'s `path` ("texts.texts[2]") through the twin
// `message` of `request_type`: each step names a field, with an index exactly when it
// is repeated, every step but the last a message and the last a string. When the
// request was `plain` (SentPlainly()), each index names an item the parsed twin has,
// and the item the path ends at is not valid UTF-8 (a singular string sent twice keeps
// its last value, while the parser refuses an earlier one too, so only an item of a
// list is sure to be the value refused).
void CheckInvalidPath(const Message& twin, const Descriptor& request_type,
                      absl::string_view path, bool plain) {
  const Message* message = &twin;
  const Descriptor* type = &request_type;
  const std::vector<absl::string_view> steps = absl::StrSplit(path, '.');
  for (size_t s = 0; s < steps.size(); ++s) {
    absl::string_view step = steps[s];
    std::optional<int> index;
    if (const size_t bracket = step.find('['); bracket != absl::string_view::npos) {
      Check(step.back() == ']', "an index closes its bracket");
      int value = 0;
      Check(absl::SimpleAtoi(step.substr(bracket + 1, step.size() - bracket - 2), &value),
            "an index is a number");
      index = value;
      step = step.substr(0, bracket);
    }
    const FieldDescriptor* field = type->FindFieldByName(std::string(step));
    Check(field != nullptr, "each step of the path names a field");
    Check(index.has_value() == field->is_repeated(),
          "repeated fields, and only they, have an index");
    Check(!index.has_value() || *index >= 0, "an index is not negative");
    const bool last = s + 1 == steps.size();
    Check(last ? field->type() == FieldDescriptor::TYPE_STRING
               : field->type() == FieldDescriptor::TYPE_MESSAGE,
          "the path goes through messages to a string");
    if (!plain) {
      type = field->message_type();
      continue;
    }
    const Reflection& reflection = *message->GetReflection();
    const FieldDescriptor* twin_field =
        message->GetDescriptor()->FindFieldByNumber(field->number());
    if (index.has_value()) {
      Check(*index < reflection.FieldSize(*message, twin_field),
            "an index names an item the request has");
    }
    if (!last) {
      message = index.has_value()
                    ? &reflection.GetRepeatedMessage(*message, twin_field, *index)
                    : &reflection.GetMessage(*message, twin_field);
      type = field->message_type();
    } else if (index.has_value()) {
      Check(!google::protobuf::internal::IsStructurallyValidUTF8(
                reflection.GetRepeatedString(*message, twin_field, *index)),
            "the item the path names is not valid UTF-8");
    }
  }
}

void CheckType(const Requests::Type& type, const std::string& bytes, int max_items) {
  grpc::Slice slice(bytes);
  const grpc::ByteBuffer buffer(&slice, 1);
  const Descriptor& descriptor = *type.request->GetDescriptor();

  std::unique_ptr<Message> expected(type.request->New());
  const bool parses = expected->ParseFromString(bytes);
  std::unique_ptr<Message> twin(type.twin->New());
  const bool twin_parses = twin->ParseFromString(bytes);
  Check(twin_parses || !parses, "what parses as the request parses as its twin");

  const absl::Status counted =
      clipserve::CheckEntryCounts(buffer, descriptor, max_items, Identity);
  Check(counted.ok() || counted.code() == absl::StatusCode::kInvalidArgument,
        "CheckEntryCounts refuses with INVALID_ARGUMENT");

  std::unique_ptr<Message> parsed(type.request->New());
  const absl::Status status =
      clipserve::ParseRequest(buffer, parsed.get(), max_items, Identity);
  if (parses && counted.ok()) {
    Check(status.ok(), "ParseRequest accepts what parses and is within the limits");
    // Compared as bytes: a float field may hold a NaN, which equals nothing.
    Check(parsed->SerializeAsString() == expected->SerializeAsString(),
          "ParseRequest builds what libprotobuf builds");
  } else {
    Check(status.code() == absl::StatusCode::kInvalidArgument,
          "ParseRequest refuses the rest with INVALID_ARGUMENT");
  }

  if (parses && counted.ok()) {
    Built built;
    CountBuilt(*expected, nullptr, &built);
    for (const auto& [key, entries] : built.entries) {
      Check(entries <= max_items,
            "a field within the counted limit builds no more entries");
    }
    Check(built.unknown <= 16 * static_cast<int64_t>(max_items),
          "a request within the counted limit builds no more unknown fields");
  }

  const std::optional<std::string> invalid =
      clipserve::FindInvalidUtf8Field(descriptor, bytes);
  if (parses) Check(!invalid.has_value(), "a request that parses has no invalid string");
  if (twin_parses) {
    CheckUtf8Agreement(*twin);
    if (!parses) {
      Check(invalid.has_value(), "a request refused only for its strings names one");
      CheckInvalidPath(*twin, descriptor, *invalid, SentPlainly(descriptor, bytes));
    }
    // A top-level string outside a oneof as the parser keeps it: its last value on
    // the wire.
    const Reflection& reflection = *twin->GetReflection();
    for (int i = 0; i < descriptor.field_count(); ++i) {
      const FieldDescriptor& field = *descriptor.field(i);
      if (field.type() != FieldDescriptor::TYPE_STRING || field.is_repeated() ||
          field.real_containing_oneof() != nullptr) {
        continue;
      }
      const std::string value = reflection.GetString(
          *twin, twin->GetDescriptor()->FindFieldByNumber(field.number()));
      const std::optional<std::string> read =
          clipserve::ReadUtf8Field(bytes, field.number());
      if (clipserve::IsValidUtf8(value)) {
        Check(read.value_or("") == value, "ReadUtf8Field reads the value a parser keeps");
      } else {
        Check(!read.has_value(), "ReadUtf8Field gives no value that is not UTF-8");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Requests* const requests = [] {
    // libprotobuf logs every string it refuses; the fuzzer makes thousands a second.
    google::protobuf::SetLogHandler(nullptr);
    return new Requests();
  }();
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  for (const Requests::Type& type : requests->types()) {
    for (const int max_items : {1, 2, 1 << 20}) CheckType(type, bytes, max_items);
  }
  return 0;
}
