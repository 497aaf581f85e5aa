// Tokenizer throughput over the reference cases' texts (../shared/clip), one thread.
//
//   build-tok/bin/tokenizer_benchmark --benchmark_counters_tabular=true
//
// tokens/s counts the ids Encode returns, start and end tokens included.

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "nlohmann/json.hpp"
#include "server/tokenizer/bpe_tokenizer.h"
#include "server/tokenizer/text_cleaner.h"

namespace clipserve {
namespace {

std::string SharedClipDir() {
  const char* env = std::getenv("CLIPSERVE_SHARED_DIR");
  return std::string(env != nullptr ? env : CLIPSERVE_DEFAULT_SHARED_DIR) + "/clip";
}

const std::vector<std::string>& Texts() {
  static const std::vector<std::string>* const texts = [] {
    auto* out = new std::vector<std::string>;
    std::ifstream in(SharedClipDir() + "/tokenizer_cases.jsonl");
    for (std::string line; std::getline(in, line);) {
      out->push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    }
    return out;
  }();
  return *texts;
}

std::unique_ptr<BpeTokenizer> Load(size_t cache_capacity) {
  BpeTokenizer::Options options;
  options.cache.capacity = cache_capacity;
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer =
      LoadTokenizerNextTo(SharedClipDir(), options);
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

void EncodeAll(benchmark::State& state, size_t cache_capacity) {
  const std::unique_ptr<BpeTokenizer> tokenizer = Load(cache_capacity);
  if (tokenizer == nullptr || Texts().empty()) {
    state.SkipWithError("no tokenizer files or cases under CLIPSERVE_SHARED_DIR/clip");
    return;
  }
  int64_t tokens = 0;
  int64_t bytes = 0;
  for (auto _ : state) {
    for (const std::string& text : Texts()) {
      absl::StatusOr<EncodedText> encoded = tokenizer->Encode(text);
      benchmark::DoNotOptimize(encoded);
      tokens += static_cast<int64_t>(encoded->ids.size());
      bytes += static_cast<int64_t>(text.size());
    }
  }
  state.SetBytesProcessed(bytes);
  state.counters["texts/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * Texts().size()),
                         benchmark::Counter::kIsRate);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

// The server's case: the word cache warm after the first pass.
void BM_EncodeCases(benchmark::State& state) { EncodeAll(state, 32768); }
BENCHMARK(BM_EncodeCases)->Unit(benchmark::kMillisecond);

// Every word through the merge loop.
void BM_EncodeCasesNoCache(benchmark::State& state) { EncodeAll(state, 0); }
BENCHMARK(BM_EncodeCasesNoCache)->Unit(benchmark::kMillisecond);

// Cleaning alone (NFC, HTML unescape, white space, lower case).
void BM_CleanCases(benchmark::State& state) {
  int64_t bytes = 0;
  for (auto _ : state) {
    for (const std::string& text : Texts()) {
      benchmark::DoNotOptimize(CleanText(text));
      bytes += static_cast<int64_t>(text.size());
    }
  }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_CleanCases)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace clipserve

BENCHMARK_MAIN();
