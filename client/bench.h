#ifndef CLIPSERVE_CLIENT_BENCH_H_
#define CLIPSERVE_CLIENT_BENCH_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/clip_client.h"
#include "client/latency_stats.h"
#include "nlohmann/json.hpp"

namespace clipserve {

// `clip_client bench`: a closed-loop load generator. `concurrency` threads each send
// a request, wait for its answer, and send the next one, so the offered load adapts
// to the server (the number of requests in flight is exactly `concurrency`) and the
// latencies measured are those a fixed pool of callers sees. Requests are not
// retried: every refusal counts as an error under its status code.

enum class BenchModality { kImage, kText };

inline constexpr int kMaxBenchConcurrency = 10000;
// Distinct requests a bench prepares and sends round-robin: enough that consecutive
// requests differ. So at most this many times items_per_request inputs are used.
inline constexpr int kBenchRequestsPrepared = 32;
inline constexpr absl::Duration kMaxBenchDuration = absl::Hours(24 * 365);

struct BenchOptions {
  BenchModality modality = BenchModality::kImage;

  // Parallel callers (one thread each), 1 to kMaxBenchConcurrency. Default 4.
  int concurrency = 4;

  // Stop after this many requests (> 0), or, when 0, after `duration`.
  int64_t requests = 0;
  // Time to keep sending when requests == 0, > 0 and at most kMaxBenchDuration.
  // Requests in flight when it ends still complete (within `timeout`) and count.
  // Default 30 s here; clip_client bench's --duration defaults to 10 s.
  absl::Duration duration = absl::Seconds(30);

  // Items (images or texts) per request, >= 1. Default 1.
  int items_per_request = 1;

  // The inputs, used round-robin: encoded images, or texts. At least one.
  std::vector<std::string> inputs;

  // Texts only: each text sent gets UniqueTextSuffix(start + n) appended, n counting
  // the run's texts from a random start, so that no two texts of a run (up to
  // kUniqueTextSuffixes of them) nor, but by rare chance, of two runs repeat, and a
  // server's text cache answers none of them. Each text is 3 tokens longer. False: the
  // inputs as they are.
  bool unique_texts = false;

  // Deadline of each request, > 0. Default 30 s.
  absl::Duration timeout = absl::Seconds(30);

  // The run stops early once every answer for this long has been UNAVAILABLE: the
  // server went away mid-run, and the callers, whose requests are not retried, would
  // otherwise spin through failures that take microseconds each until the end. > 0.
  absl::Duration give_up_after = absl::Seconds(3);

  // Called after each request with the requests completed and the fraction of the
  // run done (by count or by time). From worker threads, concurrently.
  std::function<void(int64_t completed, double fraction)> on_progress;
};

struct BenchResult {
  // Requests sent (succeeded + failed), and requests * items_per_request.
  int64_t requests = 0;
  int64_t items = 0;
  int64_t succeeded = 0;
  // Failed requests by status code name ("RESOURCE_EXHAUSTED"), and one message each.
  std::map<std::string, int64_t> errors;
  std::map<std::string, std::string> error_examples;
  // From the first request sent to the last answer. The channel is connected before
  // (by an untimed health check), so no request's latency holds the connection setup.
  absl::Duration elapsed;
  // Milliseconds, over successful requests (all requests when none succeeded).
  LatencySummary latency_ms;
  // Why the run stopped before its end (give_up_after), "" when it did not.
  std::string stopped_early;
};

// Runs the benchmark; blocks until it is over. INVALID_ARGUMENT for bad options.
// Requests that fail count as errors, never as throughput.
absl::StatusOr<BenchResult> RunBench(ClipClient& client, const BenchOptions& options);

// {"requests": n, "items": n, "errors": {"CODE": n}, "qps": x, "items_per_s": x,
//  "latency_ms": {"p50": a, "p90": b, "p99": c, "max": d}, ...} plus the settings.
// qps counts every request sent; items_per_s only the items of successful ones.
nlohmann::ordered_json BenchJson(const BenchResult& result, const BenchOptions& options);

// The same for people, several lines.
std::string BenchText(const BenchResult& result, const BenchOptions& options);

// A --duration value: "30s", "500ms", "2m", "1h30m" (absl::ParseDuration) or a bare
// number of seconds ("45", "2.5"). INVALID_ARGUMENT unless it is > 0 and at most
// kMaxBenchDuration.
absl::StatusOr<absl::Duration> ParseBenchDuration(absl::string_view text);

// Short, varied captions of everyday scenes (the default text inputs).
const std::vector<std::string>& DefaultCaptions();

// Distinct suffixes UniqueTextSuffix() makes before they repeat: 256^3.
inline constexpr uint64_t kUniqueTextSuffixes = uint64_t{1} << 24;

// " w1 w2 w3": three of 256 common English words, each one token of CLIP's vocabulary
// (not digits: CLIP's tokenizer makes each digit a token), chosen by the digits of `n`
// in base 256; distinct for n below kUniqueTextSuffixes, then repeating.
std::string UniqueTextSuffix(uint64_t n);

// The 256 words UniqueTextSuffix() draws from.
const std::vector<std::string>& UniqueTextWords();

// `count` synthetic 640x480 JPEG photos with seeds 1..count (the default image
// inputs; see synthetic_image.h).
absl::StatusOr<std::vector<std::string>> DefaultBenchImages(int count);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_BENCH_H_
