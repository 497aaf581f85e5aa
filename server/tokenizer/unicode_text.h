#ifndef CLIPSERVE_SERVER_TOKENIZER_UNICODE_TEXT_H_
#define CLIPSERVE_SERVER_TOKENIZER_UNICODE_TEXT_H_

#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "server/common/utf8.h"  // the UTF-8 conversions at the edges

// The Unicode operations CLIP's reference tokenizer borrows from CPython, reimplemented
// from tables generated out of CPython 3.11 (Unicode 14.0; see gen_unicode_tables.py) so
// that clipserve needs no ICU. Text is handled as UTF-8 at the edges and as code points
// (std::u32string) inside. Every function here is pure: thread-safe, never blocks.
namespace clipserve {

// Normalization Form C, equal to Python's unicodedata.normalize("NFC", text):
// canonical decomposition (Hangul by formula), canonical ordering of combining marks,
// then canonical composition without the composition exclusions.
std::u32string NormalizeNfc(std::u32string_view text);

// Python's str.lower(): the full lower-case mappings (U+0130 becomes "i" + U+0307) and
// the Final_Sigma rule (U+03A3 becomes U+03C2 at the end of a word, U+03C3 elsewhere).
std::u32string PythonLower(std::u32string_view text);

// Python's str.isspace(): what str.strip() removes (White_Space plus U+001C..U+001F).
bool IsPythonSpace(char32_t c);

// The Unicode White_Space property: what \s matches in the `regex` module that the
// reference tokenizer uses.
bool IsWhiteSpace(char32_t c);

// The White_Space code points as the body of an RE2 character class ("[...]" without the
// brackets); matches exactly the code points IsWhiteSpace accepts.
inline constexpr absl::string_view kWhiteSpaceRe2Class =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_UNICODE_TEXT_H_
