#include "server/common/status_payloads.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

std::string Hex(const std::string& bytes) { return absl::BytesToHexString(bytes); }
std::string Bytes(const std::string& hex) { return absl::HexStringToBytes(hex); }

// Expected bytes come from Python's protobuf: RetryInfo(retry_delay=Duration(...)).
TEST(SerializeRetryInfoTest, MatchesProtobufBytes) {
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::Milliseconds(1500))), "0a0808011080cab5ee01");
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::Milliseconds(100))), "0a051080c2d72f");
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::Seconds(1))), "0a020801");
  // The message field is always present, as with mutable_retry_delay().
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::ZeroDuration())), "0a00");
}

TEST(SerializeRetryInfoTest, ClampsToTheDurationRange) {
  EXPECT_EQ(Hex(SerializeRetryInfo(-absl::Seconds(3))), "0a00");
  // Duration(seconds=315576000000, nanos=999999999), the protobuf maximum.
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::InfiniteDuration())),
            "0a0d0880bcaece970910ff93ebdc03");
  EXPECT_EQ(Hex(SerializeRetryInfo(absl::Hours(24 * 365 * 20000))),
            "0a0d0880bcaece970910ff93ebdc03");
}

TEST(ParseRetryInfoTest, RoundTrips) {
  for (const absl::Duration delay :
       {absl::ZeroDuration(), absl::Nanoseconds(1), absl::Milliseconds(10),
        absl::Milliseconds(1500), absl::Seconds(7) + absl::Nanoseconds(999999999),
        absl::Hours(30)}) {
    const absl::StatusOr<absl::Duration> parsed =
        ParseRetryInfo(SerializeRetryInfo(delay));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, delay);
  }
}

TEST(ParseRetryInfoTest, ReadsNegativeDurationsAndSkipsUnknownFields) {
  // Duration(seconds=-1, nanos=-5) from Python's protobuf.
  absl::StatusOr<absl::Duration> parsed =
      ParseRetryInfo(Bytes("0a1608ffffffffffffffffff0110fbffffffffffffffff01"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, -absl::Seconds(1) - absl::Nanoseconds(5));

  // Unknown field 3 (varint) in Duration, fields 2 (bytes) and 4 (fixed32) outside.
  parsed =
      ParseRetryInfo(Bytes("1203616263"
                           "0a04080218"
                           "07"
                           "2501020304"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, absl::Seconds(2));

  parsed = ParseRetryInfo("");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, absl::ZeroDuration());
}

TEST(ParseRetryInfoTest, AcceptsAFiveByteNegativeInt32) {
  // nanos = -1 written as a 32-bit varint, which protobuf parsers accept too.
  const absl::StatusOr<absl::Duration> parsed = ParseRetryInfo(Bytes("0a0610ffffffff0f"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, -absl::Nanoseconds(1));
}

TEST(ParseRetryInfoTest, RejectsMalformedInput) {
  for (const char* hex : {
           "0a",                              // missing length
           "0a050801",                        // length beyond the end
           "0a0208",                          // truncated seconds varint
           "0a0608011080ca",                  // truncated nanos varint
           "0a0c08ffffffffffffffffffffff",    // varint longer than 10 bytes
           "0b",                              // group start
           "0a010b",                          // group start inside Duration
           "0a070881bcaece9709",              // seconds beyond the protobuf range
           "0a06108094ebdc03",                // nanos = 1e9
           "0a0d080110ffffffffffffffffff01",  // seconds 1, nanos -1
           "0a0d08ffffffffffffffffff011001",  // seconds -1, nanos 1
       }) {
    EXPECT_EQ(ParseRetryInfo(Bytes(hex)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << hex;
  }
}

TEST(RetryInfoPayloadTest, SetAndGet) {
  absl::Status status = absl::ResourceExhaustedError("queue full");
  EXPECT_EQ(GetRetryInfoPayload(status), std::nullopt);
  SetRetryInfoPayload(absl::Milliseconds(250), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "queue full");
  ASSERT_TRUE(status.GetPayload(kRetryInfoPayloadUrl).has_value());
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Milliseconds(250));

  // Replaces an earlier payload.
  SetRetryInfoPayload(absl::Seconds(2), &status);
  EXPECT_EQ(GetRetryInfoPayload(status), absl::Seconds(2));

  // A payload that does not parse reads as none.
  status.SetPayload(kRetryInfoPayloadUrl, absl::Cord("\x0a"));
  EXPECT_EQ(GetRetryInfoPayload(status), std::nullopt);
}

TEST(RetryInfoPayloadTest, OkStatusGetsNoPayload) {
  absl::Status ok = absl::OkStatus();
  SetRetryInfoPayload(absl::Seconds(1), &ok);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(GetRetryInfoPayload(ok), std::nullopt);
}

}  // namespace
}  // namespace clipserve
