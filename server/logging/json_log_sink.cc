#include "server/logging/json_log_sink.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"

namespace clipserve {
namespace {

const char* SeverityName(google::LogSeverity severity) {
  if (severity < 0 || severity >= google::NUM_SEVERITIES) return "UNKNOWN";
  return google::GetLogSeverityName(severity);
}

}  // namespace

std::string FormatJsonLogLine(google::LogSeverity severity, absl::string_view file,
                              int line, std::time_t timestamp, int microseconds,
                              long thread_id, absl::string_view message,
                              const LogFields* fields) {
  // nlohmann::ordered_json keeps the members in the order written, so every line
  // reads time, severity, source, ... like a text line does.
  nlohmann::ordered_json object;
  const absl::Time time =
      absl::FromUnixSeconds(timestamp) + absl::Microseconds(microseconds);
  object["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", time, absl::UTCTimeZone());
  object["severity"] = SeverityName(severity);
  object["source"] = absl::StrCat(file, ":", line);
  object["thread"] = thread_id;
  object["message"] = std::string(message);
  if (fields != nullptr) {
    for (const LogFields::Field& field : fields->fields()) {
      if (field.is_number) {
        object[field.key] = nlohmann::ordered_json::parse(field.value, nullptr,
                                                          /*allow_exceptions=*/false);
        if (object[field.key].is_discarded()) object[field.key] = field.value;
      } else {
        object[field.key] = field.value;
      }
    }
  }
  return object.dump(-1, ' ', /*ensure_ascii=*/false,
                     nlohmann::ordered_json::error_handler_t::replace);
}

void JsonLogSink::send(google::LogSeverity severity, const char* /*full_filename*/,
                       const char* base_filename, int line,
                       const google::LogMessageTime& time, const char* message,
                       size_t message_len) {
  // A line from LogStructured() on this thread: its bare message and its fields. (Its
  // text, "message key=value ...", is what `message` holds.)
  const StructuredLogRecord* record = CurrentStructuredLog();
  absl::string_view text(message, message_len);
  const LogFields* fields = nullptr;
  if (record != nullptr && absl::StartsWith(text, record->message)) {
    text = record->message;
    fields = record->fields;
  }
  std::string out =
      FormatJsonLogLine(severity, base_filename, line, time.timestamp(), time.usec(),
                        static_cast<long>(syscall(SYS_gettid)), text, fields);
  out += '\n';
  absl::MutexLock lock(&mu_);
  std::fwrite(out.data(), 1, out.size(), out_);
  std::fflush(out_);
}

absl::Status SetLogFormat(absl::string_view format) {
  if (format == "text") return absl::OkStatus();
  if (format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("--log_format must be text or json, got \"", format, "\""));
  }
  // Leaked on purpose: threads may log until the very end of the process.
  static JsonLogSink* const sink = new JsonLogSink(stderr);
  google::AddLogSink(sink);
  // glog itself writes nothing any more: not to stderr (below every severity's
  // threshold), not to log files (an empty destination means "don't log").
  FLAGS_logtostderr = false;
  FLAGS_alsologtostderr = false;
  FLAGS_stderrthreshold = google::NUM_SEVERITIES;
  for (int severity = 0; severity < google::NUM_SEVERITIES; ++severity) {
    google::SetLogDestination(severity, "");
  }
  return absl::OkStatus();
}

}  // namespace clipserve
