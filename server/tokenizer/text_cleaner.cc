#include "server/tokenizer/text_cleaner.h"

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "server/tokenizer/html_unescape.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

std::u32string_view StripPythonSpace(std::u32string_view text) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && IsPythonSpace(text[begin])) ++begin;
  while (end > begin && IsPythonSpace(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

// re.sub(r"\s+", " ", text) with the regex module's \s (White_Space).
std::u32string CollapseWhiteSpace(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (!IsWhiteSpace(text[i])) {
      out.push_back(text[i++]);
      continue;
    }
    out.push_back(' ');
    while (i < text.size() && IsWhiteSpace(text[i])) ++i;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> CleanText(absl::string_view text) {
  if (!IsValidUtf8(text)) {
    return absl::InvalidArgumentError("text is not valid UTF-8");
  }
  const std::u32string normalized = NormalizeNfc(DecodeUtf8(text));
  const std::u32string unescaped = HtmlUnescape(HtmlUnescape(normalized));
  const std::u32string collapsed = CollapseWhiteSpace(StripPythonSpace(unescaped));
  return EncodeUtf8(PythonLower(StripPythonSpace(collapsed)));
}

}  // namespace clipserve
