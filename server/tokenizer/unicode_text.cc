#include "server/tokenizer/unicode_text.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/tokenizer/unicode_tables.h"

namespace clipserve {
namespace {

namespace ut = unicode_tables;

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

}  // namespace

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
