#include "server/tokenizer/builtin_vocabulary.h"

// Defined by builtin_vocabulary_data.S, which .incbin's the file.
extern "C" const char clipserve_clip_vocab_gz_begin[];
extern "C" const char clipserve_clip_vocab_gz_end[];

namespace clipserve {

absl::string_view BuiltinClipVocabularyGz() {
  return absl::string_view(clipserve_clip_vocab_gz_begin,
                           clipserve_clip_vocab_gz_end - clipserve_clip_vocab_gz_begin);
}

absl::StatusOr<BpeVocabulary> BuiltinClipVocabulary() {
  return ParseOpenAiVocabularyGz(BuiltinClipVocabularyGz(), "built-in CLIP vocabulary");
}

}  // namespace clipserve
