#include "server/tokenizer/bpe_vocabulary.h"

#include <zlib.h>

#include <array>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "server/common/small_file.h"
#include "server/common/status_macros.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve {
namespace {

// bytes_to_unicode(): printable Latin-1 bytes keep their code point; the others, in
// increasing order, take U+0100 onwards. The vocabulary lists the printable ones first.
constexpr bool IsPrintableByte(int b) {
  return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

constexpr int kSymbolLimit = 256 + 68;  // one past the highest byte symbol

struct ByteTables {
  std::array<char32_t, 256> to_symbol{};
  std::array<int16_t, kSymbolLimit> to_byte{};
  std::array<uint8_t, 256> vocab_order{};  // bytes in bytes_to_unicode() order
};

constexpr ByteTables MakeByteTables() {
  ByteTables t;
  for (int s = 0; s < kSymbolLimit; ++s) t.to_byte[s] = -1;
  int n = 0;
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    if (IsPrintableByte(b)) t.vocab_order[next++] = static_cast<uint8_t>(b);
  }
  for (int b = 0; b < 256; ++b) {
    char32_t symbol = static_cast<char32_t>(b);
    if (!IsPrintableByte(b)) {
      symbol = static_cast<char32_t>(256 + n++);
      t.vocab_order[next++] = static_cast<uint8_t>(b);
    }
    t.to_symbol[b] = symbol;
    t.to_byte[symbol] = static_cast<int16_t>(b);
  }
  return t;
}

constexpr ByteTables kByteTables = MakeByteTables();

// The 256 byte symbols in vocabulary order, then the same with "</w>".
std::vector<std::string> ByteTokens() {
  std::vector<std::string> tokens;
  tokens.reserve(512);
  for (uint8_t b : kByteTables.vocab_order)
    AppendUtf8(ByteToSymbol(b), &tokens.emplace_back());
  for (size_t i = 0; i < 256; ++i)
    tokens.push_back(absl::StrCat(tokens[i], kEndOfWordSuffix));
  return tokens;
}

absl::StatusOr<std::pair<std::string, std::string>> ParseMergeLine(absl::string_view line,
                                                                   size_t line_number) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(line, absl::ByAnyChar(" \t\r\v\f"), absl::SkipEmpty());
  if (parts.size() != 2) {
    return absl::DataLossError(absl::StrCat("merges line ", line_number, " has ",
                                            parts.size(),
                                            " fields, not the 2 of a merge"));
  }
  return std::make_pair(std::string(parts[0]), std::string(parts[1]));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  absl::StatusOr<std::string> data =
      ReadSmallFile(path, "vocabulary file", kMaxVocabularyFileBytes);
  // Missing and unreadable files keep their codes (an operator fixes a path or a
  // permission); anything else is a file that cannot serve as a vocabulary.
  if (data.ok() || absl::IsNotFound(data.status()) ||
      absl::IsPermissionDenied(data.status())) {
    return data;
  }
  return absl::DataLossError(data.status().message());
}

absl::StatusOr<std::string> Gunzip(absl::string_view compressed,
                                   const std::string& path) {
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) {
    return absl::InternalError("zlib inflateInit2 failed");
  }
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  std::array<char, 1 << 16> buffer;
  // Z_OK: progress, go on; Z_STREAM_END: done; Z_BUF_ERROR: the input ended before the
  // stream did; anything else: corrupt data.
  int result = Z_OK;
  while (result == Z_OK) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer.data());
    stream.avail_out = static_cast<uInt>(buffer.size());
    result = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer.data(), buffer.size() - stream.avail_out);
    if (out.size() > kMaxVocabularyFileBytes) {
      inflateEnd(&stream);
      return absl::DataLossError(absl::StrCat(path, " unpacks to more than ",
                                              kMaxVocabularyFileBytes, " bytes"));
    }
  }
  const char* message = stream.msg;
  inflateEnd(&stream);
  if (result != Z_STREAM_END) {
    return absl::DataLossError(absl::StrCat(
        path, " is not a complete gzip file: ",
        message != nullptr ? message
                           : (result == Z_BUF_ERROR ? "truncated" : "corrupt")));
  }
  return out;
}

// The tokens of a JSON object from token to id, the ids exactly 0..n-1; `source` names
// it in errors.
absl::StatusOr<std::vector<std::string>> TokensFromJson(const nlohmann::json& json,
                                                        absl::string_view source) {
  std::vector<std::string> tokens(json.size());
  std::vector<bool> seen(json.size(), false);
  for (const auto& [token, id_json] : json.items()) {
    if (!id_json.is_number_integer()) {
      return absl::DataLossError(
          absl::StrCat(source, ": the id of '", token, "' is not an integer"));
    }
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(json.size()) || seen[id]) {
      return absl::DataLossError(absl::StrCat(source, ": id ", id, " of '", token,
                                              "' is out of range or repeated; ids must "
                                              "be 0..",
                                              json.size() - 1, " once each"));
    }
    seen[id] = true;
    tokens[id] = token;
  }
  return tokens;
}

}  // namespace

char32_t ByteToSymbol(uint8_t byte) { return kByteTables.to_symbol[byte]; }

int SymbolToByte(char32_t symbol) {
  return symbol < static_cast<char32_t>(kSymbolLimit) ? kByteTables.to_byte[symbol] : -1;
}

absl::StatusOr<BpeVocabulary> ParseOpenAiVocabulary(absl::string_view merges_text) {
  const std::vector<absl::string_view> lines = absl::StrSplit(merges_text, '\n');
  if (lines.size() < kClipMergeCount + 1) {
    return absl::DataLossError(absl::StrCat("the BPE merges file has ", lines.size(),
                                            " lines; CLIP needs a header and ",
                                            kClipMergeCount, " merges"));
  }
  BpeVocabulary vocab;
  vocab.tokens = ByteTokens();
  vocab.tokens.reserve(512 + kClipMergeCount + 2);
  vocab.merges.reserve(kClipMergeCount);
  for (size_t i = 1; i <= kClipMergeCount; ++i) {
    CLIPSERVE_ASSIGN_OR_RETURN(auto merge, ParseMergeLine(lines[i], i + 1));
    vocab.tokens.push_back(absl::StrCat(merge.first, merge.second));
    vocab.merges.push_back(std::move(merge));
  }
  vocab.tokens.emplace_back(kStartOfTextToken);
  vocab.tokens.emplace_back(kEndOfTextToken);
  return vocab;
}

absl::StatusOr<BpeVocabulary> LoadOpenAiVocabulary(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string compressed, ReadFile(path));
  return ParseOpenAiVocabularyGz(compressed, path);
}

absl::StatusOr<BpeVocabulary> ParseOpenAiVocabularyGz(absl::string_view compressed,
                                                      const std::string& source) {
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string text, Gunzip(compressed, source));
  absl::StatusOr<BpeVocabulary> vocab = ParseOpenAiVocabulary(text);
  if (!vocab.ok()) {
    return absl::Status(vocab.status().code(),
                        absl::StrCat(source, ": ", vocab.status().message()));
  }
  return vocab;
}

absl::StatusOr<BpeVocabulary> ParseHuggingFaceVocabulary(absl::string_view vocab_json,
                                                         absl::string_view merges_txt) {
  const nlohmann::json json =
      nlohmann::json::parse(vocab_json.begin(), vocab_json.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::DataLossError("vocab.json is not a JSON object");
  }
  BpeVocabulary vocab;
  CLIPSERVE_ASSIGN_OR_RETURN(vocab.tokens, TokensFromJson(json, "vocab.json"));

  const std::vector<absl::string_view> lines =
      absl::StrSplit(absl::StripAsciiWhitespace(merges_txt), '\n');
  for (size_t i = 1; i < lines.size() && i <= kClipMergeCount; ++i) {
    CLIPSERVE_ASSIGN_OR_RETURN(auto merge, ParseMergeLine(lines[i], i + 1));
    vocab.merges.push_back(std::move(merge));
  }
  return vocab;
}

absl::StatusOr<BpeVocabulary> ParseHuggingFaceTokenizerJson(
    absl::string_view tokenizer_json) {
  const nlohmann::json json =
      nlohmann::json::parse(tokenizer_json.begin(), tokenizer_json.end(), /*cb=*/nullptr,
                            /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::DataLossError("tokenizer.json is not a JSON object");
  }
  const auto model = json.find("model");
  if (model == json.end() || !model->is_object()) {
    return absl::DataLossError("tokenizer.json has no \"model\" object");
  }
  const auto type = model->find("type");
  if (type == model->end() || !type->is_string() || type->get<std::string>() != "BPE") {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.json holds a ",
        type != model->end() && type->is_string() ? type->get<std::string>() : "untyped",
        " model, not the byte-level BPE of CLIP"));
  }
  const auto tokens = model->find("vocab");
  const auto merges = model->find("merges");
  if (tokens == model->end() || !tokens->is_object() || merges == model->end() ||
      !merges->is_array()) {
    return absl::DataLossError(
        "tokenizer.json: the model needs a \"vocab\" object and a \"merges\" list");
  }
  BpeVocabulary vocab;
  CLIPSERVE_ASSIGN_OR_RETURN(vocab.tokens, TokensFromJson(*tokens, "tokenizer.json"));
  // A merge is "left right" (tokenizers before 0.20) or ["left", "right"].
  for (size_t i = 0; i < merges->size() && i < kClipMergeCount; ++i) {
    const nlohmann::json& merge = (*merges)[i];
    if (merge.is_string()) {
      CLIPSERVE_ASSIGN_OR_RETURN(
          auto pair, ParseMergeLine(merge.get_ref<const std::string&>(), i + 1));
      vocab.merges.push_back(std::move(pair));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      vocab.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      return absl::DataLossError(
          absl::StrCat("tokenizer.json: merge ", i + 1, " is not two symbols"));
    }
  }
  return vocab;
}

absl::StatusOr<BpeVocabulary> LoadHuggingFaceTokenizerJson(const std::string& path) {
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  absl::StatusOr<BpeVocabulary> vocab = ParseHuggingFaceTokenizerJson(text);
  if (!vocab.ok()) {
    return absl::Status(vocab.status().code(),
                        absl::StrCat(path, ": ", vocab.status().message()));
  }
  return vocab;
}

absl::StatusOr<BpeVocabulary> LoadHuggingFaceVocabulary(
    const std::string& vocab_json_path, const std::string& merges_path) {
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string vocab_json, ReadFile(vocab_json_path));
  CLIPSERVE_ASSIGN_OR_RETURN(const std::string merges_txt, ReadFile(merges_path));
  absl::StatusOr<BpeVocabulary> vocab =
      ParseHuggingFaceVocabulary(vocab_json, merges_txt);
  if (!vocab.ok()) {
    return absl::Status(
        vocab.status().code(),
        absl::StrCat(vocab_json_path, ", ", merges_path, ": ", vocab.status().message()));
  }
  return vocab;
}

BpeVocabulary ByteLevelDemoVocabulary() {
  BpeVocabulary vocab;
  vocab.tokens = ByteTokens();
  vocab.tokens.emplace_back(kStartOfTextToken);
  vocab.tokens.emplace_back(kEndOfTextToken);
  return vocab;
}

}  // namespace clipserve
