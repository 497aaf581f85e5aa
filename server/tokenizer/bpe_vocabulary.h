#ifndef CLIPSERVE_SERVER_TOKENIZER_BPE_VOCABULARY_H_
#define CLIPSERVE_SERVER_TOKENIZER_BPE_VOCABULARY_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// The special tokens every CLIP vocabulary ends with; their ids are read from the
// vocabulary (49406 and 49407 in OpenAI's), never assumed.
inline constexpr absl::string_view kStartOfTextToken = "<|startoftext|>";
inline constexpr absl::string_view kEndOfTextToken = "<|endoftext|>";
// Appended to the last symbol of every word.
inline constexpr absl::string_view kEndOfWordSuffix = "</w>";

// File names LoadTokenizerNextTo (bpe_tokenizer.h) looks for.
inline constexpr absl::string_view kOpenAiVocabFileName = "bpe_simple_vocab_16e6.txt.gz";
inline constexpr absl::string_view kHuggingFaceVocabFileName = "vocab.json";
inline constexpr absl::string_view kHuggingFaceMergesFileName = "merges.txt";
inline constexpr absl::string_view kHuggingFaceTokenizerFileName = "tokenizer.json";

// How many merges CLIP uses: OpenAI's simple_tokenizer and Hugging Face's CLIPTokenizer
// both keep lines 1 .. 49152-256-2 of the merges file, so 256 bytes + 256 end-of-word
// bytes + 48894 merges + 2 special tokens = 49408 tokens.
inline constexpr size_t kClipMergeCount = 49152 - 256 - 2;

// Vocabulary files above this size are rejected (OpenAI's unpacks to 3.2 MB).
inline constexpr size_t kMaxVocabularyFileBytes = size_t{64} << 20;

// The printable code point that CLIP's bytes_to_unicode() gives `byte`: printable
// Latin-1 bytes stand for themselves, the other 68 map to U+0100..U+0143.
char32_t ByteToSymbol(uint8_t byte);

// The byte that `symbol` stands for, or -1 when it is no byte symbol.
int SymbolToByte(char32_t symbol);

// A byte-level BPE vocabulary as it comes out of its files, before BpeTokenizer::Create
// checks and compiles it. Tokens are strings of byte symbols (see ByteToSymbol), the
// last symbol of a word carrying kEndOfWordSuffix. A plain value: copy or move freely.
struct BpeVocabulary {
  // Token strings by id. Where a string repeats, the highest id wins, as in Python's
  // dict(zip(vocab, range(len(vocab)))).
  std::vector<std::string> tokens;
  // Merge rules, the best first (a rule's index is its rank). Where a pair repeats, the
  // later rank wins, as in Python's dict.
  std::vector<std::pair<std::string, std::string>> merges;
};

// OpenAI's vocabulary from the text of bpe_simple_vocab_16e6.txt (already unpacked),
// exactly as simple_tokenizer.py builds it: the first line is skipped and the next
// kClipMergeCount lines are the merges; tokens are the 256 byte symbols in
// bytes_to_unicode() order, the same with "</w>", one token per merge (the pair joined),
// then <|startoftext|> and <|endoftext|>: 49408 in all.
// DATA_LOSS when there are fewer merge lines or a line is not two symbols.
absl::StatusOr<BpeVocabulary> ParseOpenAiVocabulary(absl::string_view merges_text);

// Reads, unpacks (gzip, via zlib) and parses OpenAI's bpe_simple_vocab_16e6.txt.gz.
// NOT_FOUND when the file does not exist; DATA_LOSS when it cannot be read, is not a
// complete gzip stream, unpacks to more than kMaxVocabularyFileBytes or does not parse.
// Blocks on file I/O; thread-safe.
absl::StatusOr<BpeVocabulary> LoadOpenAiVocabulary(const std::string& path);

// Unpacks and parses the bytes of a bpe_simple_vocab_16e6.txt.gz held in memory;
// `source` names them in errors. DATA_LOSS as LoadOpenAiVocabulary.
absl::StatusOr<BpeVocabulary> ParseOpenAiVocabularyGz(absl::string_view compressed,
                                                      const std::string& source);

// A Hugging Face tokenizer pair, read like transformers' CLIPTokenizer: `vocab_json` is
// one JSON object from token to id, the ids exactly 0..n-1; `merges_txt` is stripped of
// surrounding white space, its first line (the "#version" header) skipped, and at most
// kClipMergeCount lines of two symbols each kept. DATA_LOSS when either does not parse.
absl::StatusOr<BpeVocabulary> ParseHuggingFaceVocabulary(absl::string_view vocab_json,
                                                         absl::string_view merges_txt);

// Reads and parses vocab.json and merges.txt (see ParseHuggingFaceVocabulary).
// NOT_FOUND when a file does not exist; DATA_LOSS when one cannot be read, is larger
// than kMaxVocabularyFileBytes or does not parse. Blocks on file I/O; thread-safe.
absl::StatusOr<BpeVocabulary> LoadHuggingFaceVocabulary(
    const std::string& vocab_json_path, const std::string& merges_path);

// The vocabulary of a Hugging Face "fast" tokenizer file (tokenizer.json): its
// model.vocab (token to id, the ids exactly 0..n-1) and the first kClipMergeCount of its
// model.merges, each "left right" or ["left", "right"]. Only the vocabulary is taken:
// texts are cleaned and split as CLIP's tokenizer does, whatever normalizer and
// pre-tokenizer the file names. INVALID_ARGUMENT when its model is not BPE; DATA_LOSS
// when it does not parse.
absl::StatusOr<BpeVocabulary> ParseHuggingFaceTokenizerJson(
    absl::string_view tokenizer_json);

// Reads and parses a tokenizer.json (see ParseHuggingFaceTokenizerJson). NOT_FOUND when
// it does not exist; DATA_LOSS when it cannot be read or is larger than
// kMaxVocabularyFileBytes. Blocks on file I/O; thread-safe.
absl::StatusOr<BpeVocabulary> LoadHuggingFaceTokenizerJson(const std::string& path);

// A tiny byte-level vocabulary for tests and tools that need one without files: the
// 256 byte symbols, the same with "</w>", <|startoftext|> (512) and <|endoftext|>
// (513); no merges, so every byte of the cleaned text becomes one token. (Demo models
// use the built-in CLIP vocabulary.) Thread-safe; never fails.
BpeVocabulary ByteLevelDemoVocabulary();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_BPE_VOCABULARY_H_
