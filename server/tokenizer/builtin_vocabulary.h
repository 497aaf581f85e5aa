#ifndef CLIPSERVE_SERVER_TOKENIZER_BUILTIN_VOCABULARY_H_
#define CLIPSERVE_SERVER_TOKENIZER_BUILTIN_VOCABULARY_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/tokenizer/bpe_vocabulary.h"

namespace clipserve {

// OpenAI's bpe_simple_vocab_16e6.txt.gz, compiled into the binary
// (third_party/clip/), as gzip bytes.
absl::string_view BuiltinClipVocabularyGz();

// The built-in CLIP vocabulary, unpacked and parsed (49408 tokens). Used for
// checkpoints that ship no tokenizer files, as OpenAI's do. Thread-safe.
absl::StatusOr<BpeVocabulary> BuiltinClipVocabulary();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_BUILTIN_VOCABULARY_H_
