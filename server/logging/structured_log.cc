#include "server/logging/structured_log.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace clipserve {
namespace {

thread_local const StructuredLogRecord* current_record = nullptr;

bool NeedsQuotes(absl::string_view value) {
  if (value.empty()) return true;
  for (const char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' ||
        static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return true;
    }
  }
  return false;
}

// Appends `c`, escaped when it is a control character; false when it is not one.
bool AppendEscapedControl(char c, std::string* out) {
  switch (c) {
    case '\n':
      *out += "\\n";
      return true;
    case '\r':
      *out += "\\r";
      return true;
    case '\t':
      *out += "\\t";
      return true;
    default:
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        absl::StrAppend(out, "\\x",
                        absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
        return true;
      }
      return false;
  }
}

// Appends `text` with its backslashes doubled and its control characters escaped;
// with `escape_quotes`, its double quotes written as \" too.
void AppendEscaped(absl::string_view text, bool escape_quotes, std::string* out) {
  for (const char c : text) {
    if (c == '\\' || (escape_quotes && c == '"')) {
      *out += '\\';
      *out += c;
    } else if (!AppendEscapedControl(c, out)) {
      *out += c;
    }
  }
}

std::string Quote(absl::string_view value) {
  std::string out = "\"";
  AppendEscaped(value, /*escape_quotes=*/true, &out);
  out += '"';
  return out;
}

}  // namespace

std::string EscapeControlCharacters(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendEscaped(text, /*escape_quotes=*/false, &out);
  return out;
}

LogFields& LogFields::Add(absl::string_view key, absl::string_view value) {
  fields_.push_back({std::string(key), std::string(value), false});
  return *this;
}

LogFields& LogFields::Add(absl::string_view key, int64_t value) {
  fields_.push_back({std::string(key), absl::StrCat(value), true});
  return *this;
}

LogFields& LogFields::Add(absl::string_view key, double value) {
  fields_.push_back({std::string(key), absl::StrCat(value), std::isfinite(value)});
  return *this;
}

std::string LogFields::ToLogfmt() const {
  std::string out;
  for (const Field& field : fields_) {
    absl::StrAppend(
        &out, " ", field.key, "=",
        !field.is_number && NeedsQuotes(field.value) ? Quote(field.value) : field.value);
  }
  return out;
}

void LogStructured(const char* file, int line, google::LogSeverity severity,
                   absl::string_view message, const LogFields& fields) {
  const StructuredLogRecord record{message, &fields};
  const StructuredLogRecord* const outer = current_record;
  current_record = &record;
  {
    // The LogMessage's destructor sends the line to every sink, on this thread.
    google::LogMessage(file, line, severity).stream() << message << fields.ToLogfmt();
  }
  current_record = outer;
}

const StructuredLogRecord* CurrentStructuredLog() { return current_record; }

}  // namespace clipserve
