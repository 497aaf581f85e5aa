#include "server/tokenizer/unicode_text.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/tokenizer/unicode_tables.h"

namespace clipserve {
namespace {

namespace ut = unicode_tables;

constexpr char32_t kReplacement = 0xFFFD;

// Hangul syllables decompose and compose by formula (Unicode ch. 3.12).
constexpr char32_t kHangulSBase = 0xAC00;
constexpr char32_t kHangulLBase = 0x1100;
constexpr char32_t kHangulVBase = 0x1161;
constexpr char32_t kHangulTBase = 0x11A7;
constexpr char32_t kHangulLCount = 19;
constexpr char32_t kHangulVCount = 21;
constexpr char32_t kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount;
constexpr char32_t kHangulSCount = kHangulLCount * kHangulNCount;

constexpr char32_t kCapitalSigma = 0x3A3;
constexpr char32_t kSmallSigma = 0x3C3;
constexpr char32_t kFinalSigma = 0x3C2;

bool InRanges(const ut::CodePointRange* ranges, size_t size, char32_t c) {
  const ut::CodePointRange* end = ranges + size;
  // The first range whose last code point is >= c.
  const ut::CodePointRange* it = std::lower_bound(
      ranges, end, c,
      [](const ut::CodePointRange& r, char32_t value) { return r.last < value; });
  return it != end && it->first <= c;
}

int CombiningClass(char32_t c) {
  if (c < 0x300) return 0;
  const ut::CombiningClassRange* end = ut::kCombiningClasses + ut::kCombiningClassesSize;
  const ut::CombiningClassRange* it = std::lower_bound(
      ut::kCombiningClasses, end, c,
      [](const ut::CombiningClassRange& r, char32_t value) { return r.last < value; });
  return it != end && it->first <= c ? it->combining_class : 0;
}

const ut::Decomposition* FindDecomposition(char32_t c) {
  if (c < 0xC0) return nullptr;
  const ut::Decomposition* end = ut::kDecompositions + ut::kDecompositionsSize;
  const ut::Decomposition* it = std::lower_bound(
      ut::kDecompositions, end, c,
      [](const ut::Decomposition& d, char32_t value) { return d.code_point < value; });
  return it != end && it->code_point == c ? it : nullptr;
}

// Appends the full canonical decomposition of `c` (recursively applied).
void DecomposeInto(char32_t c, std::u32string* out) {
  if (c >= kHangulSBase && c < kHangulSBase + kHangulSCount) {
    const char32_t index = c - kHangulSBase;
    out->push_back(kHangulLBase + index / kHangulNCount);
    out->push_back(kHangulVBase + (index % kHangulNCount) / kHangulTCount);
    if (index % kHangulTCount != 0) out->push_back(kHangulTBase + index % kHangulTCount);
    return;
  }
  const ut::Decomposition* d = FindDecomposition(c);
  if (d == nullptr) {
    out->push_back(c);
    return;
  }
  DecomposeInto(d->first, out);
  if (d->second != 0) DecomposeInto(d->second, out);
}

// The primary composite of `first` + `second`, or 0 when they do not compose.
char32_t Compose(char32_t first, char32_t second) {
  if (first >= kHangulLBase && first < kHangulLBase + kHangulLCount &&
      second >= kHangulVBase && second < kHangulVBase + kHangulVCount) {
    return kHangulSBase +
           ((first - kHangulLBase) * kHangulVCount + (second - kHangulVBase)) *
               kHangulTCount;
  }
  if (first >= kHangulSBase && first < kHangulSBase + kHangulSCount &&
      (first - kHangulSBase) % kHangulTCount == 0 && second > kHangulTBase &&
      second < kHangulTBase + kHangulTCount) {
    return first + (second - kHangulTBase);
  }
  const ut::Composition* end = ut::kCompositions + ut::kCompositionsSize;
  const ut::Composition* it = std::lower_bound(
      ut::kCompositions, end, std::make_pair(first, second),
      [](const ut::Composition& c, const std::pair<char32_t, char32_t>& key) {
        return c.first != key.first ? c.first < key.first : c.second < key.second;
      });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

const ut::LowerMapping* FindLower(char32_t c) {
  const ut::LowerMapping* end = ut::kLowerMappings + ut::kLowerMappingsSize;
  const ut::LowerMapping* it = std::lower_bound(
      ut::kLowerMappings, end, c,
      [](const ut::LowerMapping& m, char32_t value) { return m.code_point < value; });
  return it != end && it->code_point == c ? it : nullptr;
}

bool IsCaseIgnorable(char32_t c) {
  return InRanges(ut::kCaseIgnorable, ut::kCaseIgnorableSize, c);
}
bool IsCased(char32_t c) { return InRanges(ut::kCased, ut::kCasedSize, c); }

// CPython's handle_capital_sigma: the sigma at `i` is final when a cased letter precedes
// it and none follows it, case-ignorable code points being skipped both ways.
bool IsFinalSigma(std::u32string_view text, size_t i) {
  size_t j = i;
  while (j > 0 && IsCaseIgnorable(text[j - 1])) --j;
  if (j == 0 || !IsCased(text[j - 1])) return false;
  size_t k = i + 1;
  while (k < text.size() && IsCaseIgnorable(text[k])) ++k;
  return k == text.size() || !IsCased(text[k]);
}

// Length of the well-formed UTF-8 sequence at the start of `s`, or 0 when it is
// ill-formed; on 0, `*bad` is the length of its maximal ill-formed subpart (>= 1).
size_t SequenceLength(absl::string_view s, char32_t* code_point, size_t* bad) {
  const auto byte = [&s](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(0);
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  }
  size_t length;
  uint8_t second_low = 0x80;
  uint8_t second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;
    if (lead == 0xED) second_high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  char32_t value = lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    const uint8_t low = i == 1 ? second_low : 0x80;
    const uint8_t high = i == 1 ? second_high : 0xBF;
    if (i >= s.size() || byte(i) < low || byte(i) > high) {
      *bad = i;
      return 0;
    }
    value = (value << 6) | (byte(i) & 0x3F);
  }
  *code_point = value;
  return length;
}

}  // namespace

bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    char32_t c;
    size_t bad;
    const size_t length = SequenceLength(text.substr(i), &c, &bad);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::u32string DecodeUtf8(absl::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    char32_t c;
    size_t bad = 0;
    const size_t length = SequenceLength(text.substr(i), &c, &bad);
    if (length == 0) {
      out.push_back(kReplacement);
      i += bad;
    } else {
      out.push_back(c);
      i += length;
    }
  }
  return out;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c >= 0xD800 && (c <= 0xDFFF || c > 0x10FFFF)) c = kReplacement;
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string EncodeUtf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) AppendUtf8(c, &out);
  return out;
}

std::u32string NormalizeNfc(std::u32string_view text) {
  // Below U+0300 nothing combines, and every code point is its own NFC form.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) {
    return std::u32string(text);
  }
  std::u32string decomposed;
  decomposed.reserve(text.size());
  for (char32_t c : text) DecomposeInto(c, &decomposed);

  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (CombiningClass(decomposed[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < decomposed.size() && CombiningClass(decomposed[j]) != 0) ++j;
    std::stable_sort(
        decomposed.begin() + i, decomposed.begin() + j,
        [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }

  // Canonical composition. After ordering, a mark is unblocked from the last starter
  // when it follows the starter directly or the mark before it has a lower class.
  std::u32string out;
  out.reserve(decomposed.size());
  size_t starter = std::u32string::npos;
  int last_class = 0;
  for (char32_t c : decomposed) {
    const int combining_class = CombiningClass(c);
    if (starter != std::u32string::npos) {
      const bool adjacent = out.size() == starter + 1;
      if (adjacent || (last_class != 0 && last_class < combining_class)) {
        const char32_t composite = Compose(out[starter], c);
        if (composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (combining_class == 0) starter = out.size();
    last_class = combining_class;
    out.push_back(c);
  }
  return out;
}

std::u32string PythonLower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    } else if (c == kCapitalSigma) {
      out.push_back(IsFinalSigma(text, i) ? kFinalSigma : kSmallSigma);
    } else if (const ut::LowerMapping* m = FindLower(c); m != nullptr) {
      out.push_back(m->lower);
      if (m->second != 0) out.push_back(m->second);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool IsPythonSpace(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return InRanges(ut::kPythonSpace, ut::kPythonSpaceSize, c);
}

bool IsWhiteSpace(char32_t c) {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

}  // namespace clipserve
