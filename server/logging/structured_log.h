#ifndef CLIPSERVE_SERVER_LOGGING_STRUCTURED_LOG_H_
#define CLIPSERVE_SERVER_LOGGING_STRUCTURED_LOG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "glog/logging.h"

namespace clipserve {

// Key-value pairs that go with one log line: appended to a text line as logfmt
// (`key=value`, values quoted when they hold spaces, quotes or '='), and written as
// members of the line's object by JsonLogSink (json_log_sink.h), numbers as JSON
// numbers. Keys should be snake_case and must not be one of the sink's own keys
// (time, severity, source, message, thread).
class LogFields {
 public:
  struct Field {
    std::string key;
    // The value as text: for numbers their decimal form, for strings the string.
    std::string value;
    bool is_number = false;
  };

  LogFields& Add(absl::string_view key, absl::string_view value);
  LogFields& Add(absl::string_view key, const char* value) {
    return Add(key, absl::string_view(value));
  }
  LogFields& Add(absl::string_view key, int64_t value);
  LogFields& Add(absl::string_view key, int value) {
    return Add(key, static_cast<int64_t>(value));
  }
  // Non-finite values are written as strings ("inf", "nan"), which JSON lacks.
  LogFields& Add(absl::string_view key, double value);

  const std::vector<Field>& fields() const { return fields_; }

  // " key=value key2=\"a b\"" (with a leading space), or "" with no fields.
  std::string ToLogfmt() const;

 private:
  std::vector<Field> fields_;
};

// `text` with its control characters (below 0x20, and DEL) written as escapes: \n,
// \r, \t, else \xHH; a backslash is doubled, so that a peer's own "\n" (backslash,
// n) cannot pass for an escaped line break. For text from outside (a peer's header value
// in a gRPC log line) that goes into a text log as it is, where a line break would start
// a forged line and an ANSI escape sequence rewrite the terminal that shows it.
std::string EscapeControlCharacters(absl::string_view text);

// Logs `message` with `fields` through glog at `severity`, as if LOG(severity) had been
// written at file:line; prefer CLIPSERVE_LOG_FIELDS. Text output (and every sink but
// JsonLogSink) sees "message key=value ..."; a JsonLogSink on this thread sees the
// bare message and the fields (through CurrentStructuredLog()). FATAL aborts, like
// LOG(FATAL). Thread-safe.
void LogStructured(const char* file, int line, google::LogSeverity severity,
                   absl::string_view message, const LogFields& fields);

#define CLIPSERVE_LOG_FIELDS(severity, message, fields)                                \
  ::clipserve::LogStructured(__FILE__, __LINE__, ::google::GLOG_##severity, (message), \
                             (fields))

// The structured record being logged by LogStructured() on this thread right now, or
// nullptr: glog calls its sinks synchronously on the logging thread, so a sink reads
// the fields of the line it is sending here.
struct StructuredLogRecord {
  absl::string_view message;
  const LogFields* fields = nullptr;
};
const StructuredLogRecord* CurrentStructuredLog();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_LOGGING_STRUCTURED_LOG_H_
