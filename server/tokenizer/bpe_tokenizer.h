#ifndef CLIPSERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_
#define CLIPSERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "re2/re2.h"
#include "server/tokenizer/bpe_vocabulary.h"
#include "server/tokenizer/word_cache.h"

namespace clipserve {

// One text turned into token ids.
struct EncodedText {
  // <|startoftext|>, the text's tokens, <|endoftext|>; never padded, so the end token
  // sits at length() - 1 (where CLIP's text tower reads its features).
  // 2 <= ids.size() <= context_length.
  std::vector<int32_t> ids;
  // True when the text needed more than context_length ids and was cut.
  bool truncated = false;

  // The real (unpadded) length.
  size_t length() const { return ids.size(); }
};

// CLIP's byte-level BPE tokenizer, giving the ids openai/CLIP's simple_tokenizer gives
// (with ftfy replaced by NFC, see CleanText): the text is cleaned, split with the
// pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (case-insensitive, as the reference's `regex` module matches it: see
// PreTokenizerPattern() for U+0345), each piece's UTF-8 bytes become byte symbols, the
// last one marked end-of-word, and the merges are applied lowest rank first, every
// occurrence of a pair left to right, as the reference does. The special-token
// spellings match in the text too, as in the reference: "<|endoftext|>" typed by a
// user is token 49407.
//
// Immutable after Create() apart from its internal word cache (bounded, see WordCache),
// so one instance serves any number of threads; Encode and Decode never block except
// briefly on a cache shard's lock.
class BpeTokenizer {
 public:
  struct Options {
    // Ids per text, start and end tokens included: 77 for every released CLIP model.
    // At least 2.
    int context_length = 77;
    // Longest text accepted, in UTF-8 bytes. 16 KiB is far beyond what 77 tokens can
    // hold (a full context rarely needs 1 KiB) and bounds the work one request can cause.
    size_t max_input_bytes = 16384;
    // The cache of words already split into tokens (see WordCache::Options).
    WordCache::Options cache;
    // The file(s) the vocabulary was read from, for the log ("" when it is built in).
    std::string source;
  };

  // Checks and compiles `vocab`. INVALID_ARGUMENT when the options are out of range, or
  // the vocabulary lacks a byte symbol (with or without "</w>"), <|startoftext|> or
  // <|endoftext|>, or a merge whose two sides are tokens joins them into a string that is
  // not. Merges naming a string that is no token can never apply and are dropped.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(BpeVocabulary vocab,
                                                              const Options& options);

  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Cleans and encodes `text` (UTF-8). The ids include the start and end tokens and no
  // padding. A text that needs more than context_length ids is, with `truncate`, cut to
  // exactly context_length: the start token, the first context_length - 2 text tokens,
  // the end token (CLIP's tokenize(truncate=True)); without `truncate` it is
  // INVALID_ARGUMENT. Either way the words past the cut are not encoded, so a long text
  // costs little more than its cleaning. INVALID_ARGUMENT as well when `text` is longer
  // than max_input_bytes or not valid UTF-8. Thread-safe.
  absl::StatusOr<EncodedText> Encode(absl::string_view text, bool truncate = true) const;

  // The text that `ids` stand for, as the reference's decode(): token strings joined,
  // byte symbols turned back into bytes, "</w>" into a space, invalid UTF-8 into U+FFFD.
  // Special tokens come out as their spelling. INVALID_ARGUMENT for an id outside
  // [0, vocab_size()). Thread-safe.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const;

  int32_t start_of_text_id() const { return start_of_text_id_; }
  int32_t end_of_text_id() const { return end_of_text_id_; }
  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  int context_length() const { return options_.context_length; }
  const std::string& source() const { return options_.source; }

  // Words in the word cache now; for tests and metrics. Thread-safe.
  size_t cache_size() const { return cache_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  BpeTokenizer(std::vector<std::string> tokens, const Options& options);

  // Appends the ids of one pre-tokenized word (its UTF-8 bytes) to `ids`.
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  // The merge loop, without the cache.
  void ApplyMerges(absl::string_view word, std::vector<int32_t>* ids) const;

  const Options options_;
  const std::vector<std::string> tokens_;
  int32_t byte_ids_[256] = {};
  int32_t end_of_word_byte_ids_[256] = {};
  int32_t start_of_text_id_ = -1;
  int32_t end_of_text_id_ = -1;
  // (left id << 32 | right id) -> the merge of that pair.
  absl::flat_hash_map<uint64_t, Merge> merges_;
  const RE2 pattern_;
  mutable WordCache cache_;
};

// BpeTokenizer::Create(), with an error prefixed by `source`, the file(s) `vocab` was
// read from: a vocabulary that is not CLIP's is refused naming where it came from. The
// tokenizer's source() is `source`.
absl::StatusOr<std::unique_ptr<BpeTokenizer>> CreateTokenizerFrom(
    BpeVocabulary vocab, const BpeTokenizer::Options& options, absl::string_view source);

// Loads Hugging Face's vocab.json + merges.txt in the folder `dir` (the loaders'
// errors when one is missing or malformed). Blocks on file I/O; thread-safe.
absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadHuggingFacePair(
    const std::string& dir, const BpeTokenizer::Options& options);

// Finds and loads the tokenizer files that come with a checkpoint. `path` is the
// checkpoint's directory, or a file in it. Looks for, in this order, Hugging Face's
// vocab.json + merges.txt, its tokenizer.json, then OpenAI's
// bpe_simple_vocab_16e6.txt.gz. NOT_FOUND (naming the files looked for) when none is
// there; otherwise what the loaders (bpe_vocabulary.h) and CreateTokenizerFrom()
// return. Blocks on file I/O; thread-safe.
absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadTokenizerNextTo(
    const std::string& path, const BpeTokenizer::Options& options = {});

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_
