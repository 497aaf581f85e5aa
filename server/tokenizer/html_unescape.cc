#include "server/tokenizer/html_unescape.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"
#include "server/tokenizer/unicode_tables.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

namespace ut = unicode_tables;

// html.unescape's pattern: "&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)".
constexpr size_t kMaxNameLength = 32;
// Any value above this is past U+10FFFF; parsing saturates here instead of overflowing.
constexpr uint32_t kSaturated = 0x110000;

bool IsNameChar(char32_t c) {
  return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' &&
         c != '#' && c != ';';
}

int HexValue(char32_t c) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return static_cast<int>(c - 'A' + 10);
  return -1;
}

// The UTF-8 replacement of the named reference `name`, or nullptr.
const char* FindEntity(absl::string_view name) {
  const ut::HtmlEntity* end = ut::kHtmlEntities + ut::kHtmlEntitiesSize;
  const ut::HtmlEntity* it = std::lower_bound(
      ut::kHtmlEntities, end, name, [](const ut::HtmlEntity& e, absl::string_view key) {
        return absl::string_view(e.name) < key;
      });
  return it != end && absl::string_view(it->name) == name ? it->value : nullptr;
}

void AppendUtf8Value(const char* utf8, std::u32string* out) {
  const std::u32string decoded = DecodeUtf8(utf8);
  out->append(decoded);
}

// What a numeric reference to `number` stands for, appended to `out`.
void AppendNumeric(uint32_t number, std::u32string* out) {
  const ut::HtmlCharrefFixup* fixups_end =
      ut::kHtmlCharrefFixups + ut::kHtmlCharrefFixupsSize;
  const ut::HtmlCharrefFixup* fixup = std::find_if(
      ut::kHtmlCharrefFixups, fixups_end,
      [number](const ut::HtmlCharrefFixup& f) { return f.number == number; });
  if (fixup != fixups_end) {
    out->push_back(fixup->replacement);
    return;
  }
  if ((number >= 0xD800 && number <= 0xDFFF) || number > 0x10FFFF) {
    out->push_back(0xFFFD);
    return;
  }
  for (size_t i = 0; i < ut::kHtmlInvalidCodePointsSize; ++i) {
    if (number >= ut::kHtmlInvalidCodePoints[i].first &&
        number <= ut::kHtmlInvalidCodePoints[i].last) {
      return;
    }
  }
  out->push_back(number);
}

// Tries a numeric reference at text[i] == '#'. On a match appends its replacement and
// returns the index just past it; otherwise returns i.
size_t UnescapeNumeric(std::u32string_view text, size_t i, std::u32string* out) {
  size_t j = i + 1;
  const bool hex = j < text.size() && (text[j] == 'x' || text[j] == 'X');
  if (hex) ++j;
  const size_t digits_start = j;
  uint32_t number = 0;
  for (; j < text.size(); ++j) {
    const int digit =
        hex ? HexValue(text[j])
            : (text[j] >= '0' && text[j] <= '9' ? static_cast<int>(text[j] - '0') : -1);
    if (digit < 0) break;
    number = std::min<uint64_t>(uint64_t{number} * (hex ? 16 : 10) + digit, kSaturated);
  }
  if (j == digits_start) return i;
  if (j < text.size() && text[j] == ';') ++j;
  AppendNumeric(number, out);
  return j;
}

// Tries a named reference starting at text[i]. On a match appends its replacement and
// returns the index just past the match; otherwise returns i.
size_t UnescapeNamed(std::u32string_view text, size_t i, std::u32string* out) {
  size_t end = i;
  while (end < text.size() && end - i < kMaxNameLength && IsNameChar(text[end])) ++end;
  if (end == i) return i;
  if (end < text.size() && text[end] == ';') ++end;
  const std::u32string_view match = text.substr(i, end - i);

  // Names are ASCII, so only the ASCII head of the match can hold one.
  std::string ascii;
  for (char32_t c : match) {
    if (c >= 0x80) break;
    ascii.push_back(static_cast<char>(c));
  }
  if (ascii.size() == match.size()) {
    if (const char* value = FindEntity(ascii); value != nullptr) {
      AppendUtf8Value(value, out);
      return end;
    }
  }
  // The longest known proper prefix of at least two characters, then the rest as is.
  for (size_t length = std::min(ascii.size(), match.size() - 1); length >= 2; --length) {
    if (const char* value = FindEntity(absl::string_view(ascii).substr(0, length));
        value != nullptr) {
      AppendUtf8Value(value, out);
      out->append(match.substr(length));
      return end;
    }
  }
  out->push_back('&');
  out->append(match);
  return end;
}

}  // namespace

std::u32string HtmlUnescape(std::u32string_view text) {
  if (text.find(U'&') == std::u32string_view::npos) return std::u32string(text);
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const char32_t c = text[i];
    if (c != '&' || i + 1 == text.size()) {
      out.push_back(c);
      ++i;
      continue;
    }
    const size_t next = text[i + 1] == '#' ? UnescapeNumeric(text, i + 1, &out)
                                           : UnescapeNamed(text, i + 1, &out);
    if (next == i + 1) {
      out.push_back('&');
      ++i;
    } else {
      i = next;
    }
  }
  return out;
}

}  // namespace clipserve
