#ifndef CLIPSERVE_SERVER_TOKENIZER_TEXT_CLEANER_H_
#define CLIPSERVE_SERVER_TOKENIZER_TEXT_CLEANER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// CLIP's text cleaning, step for step as openai/CLIP simple_tokenizer.py does it before
// BPE (with ftfy.fix_text replaced by NFC, as in the project's reference cases):
//   1. Unicode NFC (unicodedata.normalize);
//   2. html.unescape applied twice ("&amp;lt;" -> "<");
//   3. str.strip(), then every run of White_Space (regex `\s+`) -> one ' ', strip again;
//   4. str.lower(), with Python's full mappings and Final_Sigma.
// Returns the cleaned text as UTF-8. INVALID_ARGUMENT when `text` is not well-formed
// UTF-8 (see IsValidUtf8). The output is never more than a few times the input's size;
// callers bound the input. Pure: thread-safe, never blocks.
absl::StatusOr<std::string> CleanText(absl::string_view text);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_TEXT_CLEANER_H_
