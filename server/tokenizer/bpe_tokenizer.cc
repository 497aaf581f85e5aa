#include "server/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <queue>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/common/small_file.h"
#include "server/common/status_macros.h"
#include "server/tokenizer/text_cleaner.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

// CLIP's pre-tokenizer pattern. The reference compiles it with re.IGNORECASE and the
// `regex` module, whose \s is White_Space; RE2 spells that class out. RE2 folds case
// into a class by adding each member's case variants, the `regex` module does not:
// U+0345 (a combining mark whose uppercase is Greek iota) would be a letter here and
// is matched by no alternative there, so the reference drops it. The classes are
// matched without folding, U+0345 left out of both; over every code point, each then
// falls in the class the reference puts it in (as far as both know it: the Unicode
// versions of RE2 and `regex` differ).
std::string PreTokenizerPattern() {
  return absl::StrCat(
      R"((?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|(?-i:[\p{L}]+)|[\p{N}]|)",
      R"((?-i:[^)", kWhiteSpaceRe2Class, R"(\p{L}\p{N}\x{345}]+))");
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

// A pair of neighbouring symbols that a merge applies to, as seen when it was queued.
struct Candidate {
  int32_t rank;
  int32_t left;      // index of the left symbol
  int32_t left_id;   // its token id then
  int32_t right_id;  // the token id of its right neighbour then
  int32_t merged_id;

  // std::priority_queue keeps the largest on top: order by rank, then position.
  bool operator<(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : left > other.left;
  }
};

// A symbol of the word being merged: a doubly linked list over the initial bytes.
struct Symbol {
  int32_t id;  // -1 once merged into its left neighbour
  int32_t prev;
  int32_t next;  // -1 at the end
};

}  // namespace

BpeTokenizer::BpeTokenizer(std::vector<std::string> tokens, const Options& options)
    : options_(options),
      tokens_(std::move(tokens)),
      pattern_(PreTokenizerPattern()),
      cache_(options.cache) {}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(
    BpeVocabulary vocab, const Options& options) {
  if (options.context_length < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context_length is ", options.context_length, "; it must be at least 2"));
  }
  if (options.max_input_bytes == 0) {
    return absl::InvalidArgumentError("max_input_bytes must be positive");
  }
  if (vocab.tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("the vocabulary has more than 2^31 tokens");
  }
  absl::flat_hash_map<std::string, int32_t> ids;
  ids.reserve(vocab.tokens.size());
  for (size_t i = 0; i < vocab.tokens.size(); ++i) {
    ids.insert_or_assign(vocab.tokens[i], static_cast<int32_t>(i));
  }
  const auto find = [&ids](absl::string_view token) {
    const auto it = ids.find(token);
    return it == ids.end() ? -1 : it->second;
  };

  auto tokenizer = absl::WrapUnique(new BpeTokenizer(std::move(vocab.tokens), options));
  if (!tokenizer->pattern_.ok()) {
    return absl::InternalError(
        absl::StrCat("pre-tokenizer pattern: ", tokenizer->pattern_.error()));
  }
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    AppendUtf8(ByteToSymbol(static_cast<uint8_t>(b)), &symbol);
    tokenizer->byte_ids_[b] = find(symbol);
    tokenizer->end_of_word_byte_ids_[b] = find(absl::StrCat(symbol, kEndOfWordSuffix));
    if (tokenizer->byte_ids_[b] < 0 || tokenizer->end_of_word_byte_ids_[b] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("the vocabulary lacks the symbol of byte ", b, " ('", symbol,
                       "', alone or with '", kEndOfWordSuffix, "')"));
    }
  }
  tokenizer->start_of_text_id_ = find(kStartOfTextToken);
  tokenizer->end_of_text_id_ = find(kEndOfTextToken);
  if (tokenizer->start_of_text_id_ < 0 || tokenizer->end_of_text_id_ < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the vocabulary lacks ", kStartOfTextToken, " or ", kEndOfTextToken));
  }
  tokenizer->merges_.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const auto& [left, right] = vocab.merges[rank];
    const int32_t left_id = find(left);
    const int32_t right_id = find(right);
    if (left_id < 0 || right_id < 0) continue;  // no word can ever hold this pair
    const int32_t merged_id = find(absl::StrCat(left, right));
    if (merged_id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " ('", left, "' '", right, "') makes '", left,
                       right, "', which is not in the vocabulary"));
    }
    tokenizer->merges_.insert_or_assign(PairKey(left_id, right_id),
                                        Merge{static_cast<int32_t>(rank), merged_id});
  }
  return tokenizer;
}

absl::StatusOr<EncodedText> BpeTokenizer::Encode(absl::string_view text,
                                                 bool truncate) const {
  if (text.size() > options_.max_input_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text has ", text.size(), " bytes; the limit is ", options_.max_input_bytes));
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string cleaned, CleanText(text));

  // Words are encoded until the ids (start token included) reach context_length: with
  // the end token that is one more than fits, so the text is cut, and the rest of it
  // cannot change the outcome.
  const size_t context_length = static_cast<size_t>(options_.context_length);
  EncodedText out;
  out.ids.push_back(start_of_text_id_);
  const re2::StringPiece input(cleaned);
  re2::StringPiece match;
  size_t pos = 0;
  while (out.ids.size() < context_length) {
    // Cleaning leaves single spaces as the only white space, and every other character
    // starts a match, so the leftmost match is the anchored one at the next non-space
    // (a third faster than searching); the search stays as the general fallback.
    while (pos < input.size() && input[pos] == ' ') ++pos;
    if (pos == input.size() ||
        (!pattern_.Match(input, pos, input.size(), RE2::ANCHOR_START, &match, 1) &&
         !pattern_.Match(input, pos, input.size(), RE2::UNANCHORED, &match, 1))) {
      break;
    }
    const absl::string_view word(match.data(), match.size());
    pos = static_cast<size_t>(match.data() - input.data()) + match.size();
    // The reference's cache is seeded with the two special tokens, so their exact
    // spellings bypass BPE.
    if (word == kStartOfTextToken) {
      out.ids.push_back(start_of_text_id_);
    } else if (word == kEndOfTextToken) {
      out.ids.push_back(end_of_text_id_);
    } else {
      EncodeWord(word, &out.ids);
    }
  }
  if (out.ids.size() >= context_length) {
    if (!truncate) {
      return absl::InvalidArgumentError(absl::StrCat(
          "text needs more than ", context_length, " tokens (the context length)"));
    }
    out.ids.resize(context_length - 1);
    out.truncated = true;
  }
  out.ids.push_back(end_of_text_id_);
  return out;
}

void BpeTokenizer::EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  if (cache_.Lookup(word, ids)) return;
  const size_t first = ids->size();
  ApplyMerges(word, ids);
  cache_.Insert(word, absl::MakeConstSpan(*ids).subspan(first));
}

// Equivalent to the reference's bpe(): it repeatedly takes the pair of lowest rank and
// merges all its occurrences left to right. Here every mergeable neighbour pair waits in
// a heap; all entries of the lowest rank are taken together and applied in position
// order, stale ones (a side already merged) skipped. A merge can only create pairs
// containing the new, longer symbol, never the pair just merged, so each rank is done in
// one round as in the reference, in O(n log n) rather than O(n^2) for long words.
void BpeTokenizer::ApplyMerges(absl::string_view word, std::vector<int32_t>* ids) const {
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(word.size());
  for (int32_t i = 0; i < n; ++i) {
    const uint8_t byte = static_cast<uint8_t>(word[i]);
    symbols[i] = {i + 1 < n ? byte_ids_[byte] : end_of_word_byte_ids_[byte], i - 1,
                  i + 1 < n ? i + 1 : -1};
  }

  std::priority_queue<Candidate> queue;
  const auto push_pair = [this, &symbols, &queue](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int32_t left_id = symbols[left].id;
    const int32_t right_id = symbols[symbols[left].next].id;
    const auto it = merges_.find(PairKey(left_id, right_id));
    if (it != merges_.end()) {
      queue.push({it->second.rank, left, left_id, right_id, it->second.merged_id});
    }
  };
  const auto still_there = [&symbols](const Candidate& c) {
    const Symbol& left = symbols[c.left];
    return left.id == c.left_id && left.next >= 0 && symbols[left.next].id == c.right_id;
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);

  std::vector<Candidate> round;
  while (!queue.empty()) {
    const int32_t rank = queue.top().rank;
    round.clear();
    while (!queue.empty() && queue.top().rank == rank) {
      round.push_back(queue.top());
      queue.pop();
    }
    // The queue hands out one rank in position order already.
    for (const Candidate& c : round) {
      if (!still_there(c)) continue;
      Symbol& left = symbols[c.left];
      const int32_t right = left.next;
      left.id = c.merged_id;
      left.next = symbols[right].next;
      if (left.next >= 0) symbols[left.next].prev = c.left;
      symbols[right].id = -1;
      push_pair(left.prev);
      push_pair(c.left);
    }
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside [0, ", vocab_size(), ")"));
    }
    for (const char32_t symbol : DecodeUtf8(tokens_[id])) {
      const int byte = SymbolToByte(symbol);
      if (byte >= 0) {
        bytes.push_back(static_cast<char>(byte));
      } else {
        AppendUtf8(symbol, &bytes);
      }
    }
  }
  return absl::StrReplaceAll(EncodeUtf8(DecodeUtf8(bytes)), {{kEndOfWordSuffix, " "}});
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> CreateTokenizerFrom(
    BpeVocabulary vocab, const BpeTokenizer::Options& options, absl::string_view source) {
  BpeTokenizer::Options with_source = options;
  with_source.source = std::string(source);
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer =
      BpeTokenizer::Create(std::move(vocab), with_source);
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(source, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadHuggingFacePair(
    const std::string& dir, const BpeTokenizer::Options& options) {
  const std::filesystem::path folder(dir);
  const std::string vocab = (folder / std::string(kHuggingFaceVocabFileName)).string();
  const std::string merges = (folder / std::string(kHuggingFaceMergesFileName)).string();
  CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary pair,
                             LoadHuggingFaceVocabulary(vocab, merges));
  return CreateTokenizerFrom(std::move(pair), options, absl::StrCat(vocab, ", ", merges));
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadTokenizerNextTo(
    const std::string& path, const BpeTokenizer::Options& options) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path dir =
      fs::is_directory(path, error) ? fs::path(path) : fs::path(path).parent_path();
  const fs::path vocab_json = dir / std::string(kHuggingFaceVocabFileName);
  const fs::path merges = dir / std::string(kHuggingFaceMergesFileName);
  const fs::path tokenizer_json = dir / std::string(kHuggingFaceTokenizerFileName);
  const fs::path openai = dir / std::string(kOpenAiVocabFileName);
  // A folder that may not be searched is named as such, not taken for an empty one.
  const auto present = [](const fs::path& file) {
    return IsRegularFile(file.string(), "tokenizer file");
  };
  // Each looked for only when those before are not there: a broken entry the loader
  // would not use must not stop it.
  CLIPSERVE_ASSIGN_OR_RETURN(const bool has_vocab_json, present(vocab_json));
  if (has_vocab_json) {
    CLIPSERVE_ASSIGN_OR_RETURN(const bool has_merges, present(merges));
    if (has_merges) return LoadHuggingFacePair(dir.string(), options);
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const bool has_tokenizer_json, present(tokenizer_json));
  if (has_tokenizer_json) {
    CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocab,
                               LoadHuggingFaceTokenizerJson(tokenizer_json.string()));
    return CreateTokenizerFrom(std::move(vocab), options, tokenizer_json.string());
  }
  CLIPSERVE_ASSIGN_OR_RETURN(const bool has_openai, present(openai));
  if (has_openai) {
    CLIPSERVE_ASSIGN_OR_RETURN(BpeVocabulary vocab,
                               LoadOpenAiVocabulary(openai.string()));
    return CreateTokenizerFrom(std::move(vocab), options, openai.string());
  }
  return absl::NotFoundError(absl::StrCat(
      "no tokenizer next to ", path, ": looked for ", vocab_json.string(), " with ",
      merges.string(), ", for ", tokenizer_json.string(), " and for ", openai.string()));
}

}  // namespace clipserve
