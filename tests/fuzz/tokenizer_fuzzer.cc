// libFuzzer target: arbitrary bytes through CleanText and BpeTokenizer::Encode, with the
// real CLIP vocabulary (when ../shared is there) and the byte-level demo vocabulary.
// Crashes, sanitizer reports and broken invariants (checked below) all abort.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/tokenizer/bpe_tokenizer.h"
#include "server/tokenizer/text_cleaner.h"
#include "server/tokenizer/unicode_text.h"

namespace {

using clipserve::BpeTokenizer;
using clipserve::EncodedText;

void Check(bool condition, const char* what) {
  if (!condition) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

const BpeTokenizer* ClipTokenizer() {
  static const BpeTokenizer* const tokenizer = [] {
    BpeTokenizer::Options options;
    options.cache.capacity = 4096;  // small, so eviction is exercised too
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded =
        clipserve::LoadTokenizerNextTo(CLIPSERVE_FUZZ_VOCAB_DIR, options);
    if (!loaded.ok()) {
      fprintf(stderr, "tokenizer_fuzzer: no real vocabulary (%s); demo vocabulary only\n",
              std::string(loaded.status().message()).c_str());
      return static_cast<BpeTokenizer*>(nullptr);
    }
    return loaded->release();
  }();
  return tokenizer;
}

const BpeTokenizer* DemoTokenizer() {
  static const BpeTokenizer* const tokenizer =
      BpeTokenizer::Create(clipserve::ByteLevelDemoVocabulary(), {})->release();
  return tokenizer;
}

// Encodes `text` with and without truncation and checks the results against each other.
void CheckEncoding(const BpeTokenizer& tokenizer, absl::string_view text) {
  const absl::StatusOr<EncodedText> encoded = tokenizer.Encode(text);
  const absl::StatusOr<EncodedText> strict = tokenizer.Encode(text, /*truncate=*/false);
  if (!encoded.ok()) {
    Check(encoded.status().code() == absl::StatusCode::kInvalidArgument,
          "Encode fails only with INVALID_ARGUMENT");
    Check(strict.status() == encoded.status(), "same failure without truncation");
    return;
  }
  const size_t context = static_cast<size_t>(tokenizer.context_length());
  Check(encoded->ids.size() >= 2 && encoded->ids.size() <= context, "length in [2, ctx]");
  Check(encoded->ids.front() == tokenizer.start_of_text_id(), "starts with start token");
  Check(encoded->ids.back() == tokenizer.end_of_text_id(), "ends with end token");
  Check(!encoded->truncated || encoded->ids.size() == context, "cut to the context");
  for (const int32_t id : encoded->ids) {
    Check(id >= 0 && id < tokenizer.vocab_size(), "ids inside the vocabulary");
  }
  if (encoded->truncated) {
    Check(strict.status().code() == absl::StatusCode::kInvalidArgument,
          "an over-long text is INVALID_ARGUMENT without truncation");
  } else {
    Check(strict.ok() && strict->ids == encoded->ids, "same ids without truncation");
  }
  const absl::StatusOr<std::string> decoded = tokenizer.Decode(encoded->ids);
  Check(decoded.ok() && clipserve::IsValidUtf8(*decoded), "decodes to valid UTF-8");
}

}  // namespace

// The seeds are the 167 KB cases file and the 1.3 MB vocabulary; left to guess, libFuzzer
// would mutate inputs of up to a megabyte at a few executions per second. Unless the
// command line says otherwise, inputs (seeds included) are cut to 1 KiB: several times
// what a 77-token context holds, so truncation is still reached, at about 500 executions
// per second under ASan. The 16 KiB byte limit is checked separately below.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i < *argc; ++i) {
    if (absl::string_view((*argv)[i]).substr(0, 9) == "-max_len=") return 0;
  }
  static std::vector<char*> args((*argv), (*argv) + *argc);
  static char max_len[] = "-max_len=1024";
  args.insert(args.begin() + 1, max_len);
  args.push_back(nullptr);
  *argc += 1;
  *argv = args.data();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);

  const absl::StatusOr<std::string> cleaned = clipserve::CleanText(text);
  Check(cleaned.ok() == clipserve::IsValidUtf8(text),
        "CleanText fails iff invalid UTF-8");
  if (cleaned.ok()) {
    Check(clipserve::IsValidUtf8(*cleaned), "CleanText output is valid UTF-8");
    const std::u32string nfc = clipserve::NormalizeNfc(clipserve::DecodeUtf8(text));
    Check(clipserve::NormalizeNfc(nfc) == nfc, "NFC is idempotent");
  }

  if (const BpeTokenizer* clip = ClipTokenizer(); clip != nullptr) {
    CheckEncoding(*clip, text);
    std::string over_limit(text);
    over_limit.resize(16385, 'a');
    Check(clip->Encode(over_limit).status().code() == absl::StatusCode::kInvalidArgument,
          "over the byte limit is INVALID_ARGUMENT");
  }
  CheckEncoding(*DemoTokenizer(), text);
  return 0;
}
