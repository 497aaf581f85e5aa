#ifndef CLIPSERVE_SERVER_COMMON_UTF8_H_
#define CLIPSERVE_SERVER_COMMON_UTF8_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

// UTF-8 as RFC 3629 defines it, for the server (texts, file names, PNG text) and the
// client (texts it reads from files). Pure functions: thread-safe, never block.
namespace clipserve {

// True when `text` is well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence. NUL is allowed.
bool IsValidUtf8(absl::string_view text);

// Decodes UTF-8 into code points. Ill-formed input does not fail: each maximal ill-formed
// subpart becomes one U+FFFD, as Python's bytes.decode("utf-8", errors="replace") does.
std::u32string DecodeUtf8(absl::string_view text);

// Appends `code_point` to `out` as UTF-8; a surrogate or a value above U+10FFFF is
// written as U+FFFD.
void AppendUtf8(char32_t code_point, std::string* out);

// The UTF-8 form of `text` (see AppendUtf8).
std::string EncodeUtf8(std::u32string_view text);

// The length of the longest well-formed UTF-8 prefix of `text`: text.size() when it
// is all well-formed, else the offset of the first ill-formed sequence.
size_t ValidUtf8PrefixLength(absl::string_view text);

// The start of `text` cut to at most `max_bytes` without splitting a UTF-8 sequence
// (continuation bytes at the cut are dropped with the sequence they belong to).
absl::string_view Utf8Prefix(absl::string_view text, size_t max_bytes);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_UTF8_H_
