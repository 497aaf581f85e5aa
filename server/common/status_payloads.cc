#include "server/common/status_payloads.h"

#include <cstdint>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

// google.protobuf.Duration limits (duration.proto): +/-315,576,000,000 s, and nanos in
// (-1e9, 1e9) with the sign of seconds.
constexpr int64_t kMaxDurationSeconds = 315576000000;
constexpr int32_t kNanosPerSecond = 1000000000;

// Wire types and tags (field_number << 3 | wire_type).
constexpr int kWireVarint = 0;
constexpr int kWireFixed64 = 1;
constexpr int kWireLengthDelimited = 2;
constexpr int kWireFixed32 = 5;
constexpr uint8_t kRetryDelayTag = (1 << 3) | kWireLengthDelimited;
constexpr uint8_t kSecondsTag = (1 << 3) | kWireVarint;
constexpr uint8_t kNanosTag = (2 << 3) | kWireVarint;

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Reads one varint from the front of `*in`, consuming it.
bool ReadVarint(absl::string_view* in, uint64_t* value) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return true;
    }
  }
  return false;
}

// Skips the value of a field with `wire_type` at the front of `*in`.
bool SkipField(int wire_type, absl::string_view* in) {
  uint64_t length = 0;
  switch (wire_type) {
    case kWireVarint:
      return ReadVarint(in, &length);
    case kWireFixed64:
      length = 8;
      break;
    case kWireFixed32:
      length = 4;
      break;
    case kWireLengthDelimited:
      if (!ReadVarint(in, &length)) return false;
      break;
    default:
      return false;  // groups (3, 4) are not used by these messages
  }
  if (length > in->size()) return false;
  in->remove_prefix(length);
  return true;
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed google.rpc.RetryInfo: ", what));
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view in) {
  int64_t seconds = 0;
  int64_t nanos = 0;
  while (!in.empty()) {
    uint64_t tag = 0;
    if (!ReadVarint(&in, &tag)) return Malformed("truncated tag");
    const int wire_type = static_cast<int>(tag & 7);
    const uint64_t field = tag >> 3;
    if ((field == 1 || field == 2) && wire_type == kWireVarint) {
      uint64_t value = 0;
      if (!ReadVarint(&in, &value)) return Malformed("truncated varint");
      // int64 and int32 are both encoded as the two's complement 64-bit value.
      if (field == 1) {
        seconds = static_cast<int64_t>(value);
      } else {
        nanos = static_cast<int32_t>(static_cast<uint32_t>(value));
      }
    } else if (!SkipField(wire_type, &in)) {
      return Malformed("bad field in retry_delay");
    }
  }
  if (seconds > kMaxDurationSeconds || seconds < -kMaxDurationSeconds ||
      nanos >= kNanosPerSecond || nanos <= -kNanosPerSecond ||
      (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0)) {
    return Malformed("retry_delay out of range");
  }
  return absl::Seconds(seconds) + absl::Nanoseconds(nanos);
}

}  // namespace

std::string SerializeRetryInfo(absl::Duration retry_delay) {
  int64_t seconds = 0;
  int64_t nanos = 0;
  if (retry_delay >= absl::Seconds(kMaxDurationSeconds + 1)) {
    seconds = kMaxDurationSeconds;
    nanos = kNanosPerSecond - 1;
  } else if (retry_delay > absl::ZeroDuration()) {
    absl::Duration remainder;
    seconds = absl::IDivDuration(retry_delay, absl::Seconds(1), &remainder);
    nanos = absl::ToInt64Nanoseconds(remainder);
  }
  std::string duration;
  if (seconds != 0) {
    duration.push_back(static_cast<char>(kSecondsTag));
    AppendVarint(static_cast<uint64_t>(seconds), &duration);
  }
  if (nanos != 0) {
    duration.push_back(static_cast<char>(kNanosTag));
    AppendVarint(static_cast<uint64_t>(nanos), &duration);
  }
  std::string out;
  out.push_back(static_cast<char>(kRetryDelayTag));
  AppendVarint(duration.size(), &out);
  out += duration;
  return out;
}

absl::StatusOr<absl::Duration> ParseRetryInfo(absl::string_view serialized) {
  absl::Duration retry_delay = absl::ZeroDuration();
  absl::string_view in = serialized;
  while (!in.empty()) {
    uint64_t tag = 0;
    if (!ReadVarint(&in, &tag)) return Malformed("truncated tag");
    const int wire_type = static_cast<int>(tag & 7);
    if ((tag >> 3) == 1 && wire_type == kWireLengthDelimited) {
      uint64_t length = 0;
      if (!ReadVarint(&in, &length) || length > in.size()) {
        return Malformed("truncated retry_delay");
      }
      absl::StatusOr<absl::Duration> parsed = ParseDuration(in.substr(0, length));
      if (!parsed.ok()) return parsed.status();
      // Writers emit the field once; should it repeat, the last one wins.
      retry_delay = *parsed;
      in.remove_prefix(length);
    } else if (!SkipField(wire_type, &in)) {
      return Malformed("bad field");
    }
  }
  return retry_delay;
}

void SetRetryInfoPayload(absl::Duration retry_delay, absl::Status* status) {
  if (status->ok()) return;
  status->SetPayload(kRetryInfoPayloadUrl, absl::Cord(SerializeRetryInfo(retry_delay)));
}

std::optional<absl::Duration> GetRetryInfoPayload(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryInfoPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  absl::StatusOr<absl::Duration> retry_delay = ParseRetryInfo(std::string(*payload));
  if (!retry_delay.ok()) return std::nullopt;
  return *retry_delay;
}

std::string SerializeBadRequest(absl::string_view field, absl::string_view description) {
  // BadRequest { repeated FieldViolation field_violations = 1; }
  // FieldViolation { string field = 1; string description = 2; }
  constexpr uint8_t kViolationTag = (1 << 3) | kWireLengthDelimited;
  constexpr uint8_t kFieldTag = (1 << 3) | kWireLengthDelimited;
  constexpr uint8_t kDescriptionTag = (2 << 3) | kWireLengthDelimited;
  std::string violation;
  violation.push_back(static_cast<char>(kFieldTag));
  AppendVarint(field.size(), &violation);
  violation.append(field.data(), field.size());
  violation.push_back(static_cast<char>(kDescriptionTag));
  AppendVarint(description.size(), &violation);
  violation.append(description.data(), description.size());
  std::string out;
  out.push_back(static_cast<char>(kViolationTag));
  AppendVarint(violation.size(), &out);
  out += violation;
  return out;
}

absl::Status BadRequestError(absl::string_view field, absl::string_view description) {
  absl::Status status =
      absl::InvalidArgumentError(absl::StrCat(field, ": ", description));
  status.SetPayload(kBadRequestPayloadUrl,
                    absl::Cord(SerializeBadRequest(field, description)));
  return status;
}

}  // namespace clipserve
