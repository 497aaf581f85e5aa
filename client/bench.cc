#include "client/bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "client/output_format.h"
#include "client/synthetic_image.h"

namespace clipserve {
namespace {

using Steady = std::chrono::steady_clock;

// Image requests of distinct compositions, prepared once so the loop only sends.
// Texts are small: each text request is made as it is sent (TextRequest()), so that a
// run goes through every line of --texts_file.
std::vector<v1::EmbedImageRequest> PrepareImageRequests(const BenchOptions& options) {
  const size_t inputs = options.inputs.size();
  const size_t per_request = static_cast<size_t>(options.items_per_request);
  size_t bytes_per_request = 0;
  for (const std::string& input : options.inputs) bytes_per_request += input.size();
  bytes_per_request = bytes_per_request / inputs * per_request + 1;
  // Enough variety that consecutive requests differ, within ~64 MiB of copies.
  size_t count = std::min<size_t>(
      {inputs, size_t{kBenchRequestsPrepared}, (64u << 20) / bytes_per_request});
  count = std::max<size_t>(count, 1);
  std::vector<v1::EmbedImageRequest> prepared(count);
  for (size_t r = 0; r < count; ++r) {
    for (size_t k = 0; k < per_request; ++k) {
      prepared[r].add_images()->set_encoded(
          options.inputs[(r * per_request + k) % inputs]);
    }
  }
  return prepared;
}

// The text request of `ticket`: the next items_per_request inputs, round-robin over all
// of them, each with its unique suffix when asked for.
v1::EmbedTextRequest TextRequest(const BenchOptions& options, int64_t ticket,
                                 uint64_t unique_start) {
  const uint64_t per_request = static_cast<uint64_t>(options.items_per_request);
  const uint64_t first = static_cast<uint64_t>(ticket) * per_request;
  v1::EmbedTextRequest request;
  for (uint64_t k = 0; k < per_request; ++k) {
    std::string* text = request.add_texts();
    *text = options.inputs[(first + k) % options.inputs.size()];
    if (options.unique_texts) {
      absl::StrAppend(text, UniqueTextSuffix(unique_start + first + k));
    }
  }
  return request;
}

// Where a run's unique texts start: random, so that a second run against the same
// server (its cache holding the first run's texts) does not repeat them.
uint64_t RandomUniqueStart() {
  absl::BitGen random;
  return absl::Uniform<uint64_t>(random, 0, kUniqueTextSuffixes);
}

struct WorkerStats {
  LatencyHistogram ok_ms, failed_ms;
  std::map<std::string, int64_t> errors;
  std::map<std::string, std::string> examples;
};

}  // namespace

absl::StatusOr<BenchResult> RunBench(ClipClient& client, const BenchOptions& options) {
  if (options.concurrency < 1 || options.concurrency > kMaxBenchConcurrency) {
    return absl::InvalidArgumentError(absl::StrCat("concurrency must be 1 to ",
                                                   kMaxBenchConcurrency, ", got ",
                                                   options.concurrency));
  }
  if (options.requests < 0) return absl::InvalidArgumentError("requests must be >= 0");
  if (options.requests == 0 && (options.duration <= absl::ZeroDuration() ||
                                options.duration > kMaxBenchDuration)) {
    return absl::InvalidArgumentError("duration must be positive and at most a year");
  }
  if (options.items_per_request < 1) {
    return absl::InvalidArgumentError("items_per_request must be >= 1");
  }
  if (options.inputs.empty()) return absl::InvalidArgumentError("no bench inputs");
  if (options.unique_texts && options.modality != BenchModality::kText) {
    return absl::InvalidArgumentError("unique texts are for a text bench");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  if (options.give_up_after <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("give_up_after must be positive");
  }
  const std::vector<v1::EmbedImageRequest> images =
      options.modality == BenchModality::kImage ? PrepareImageRequests(options)
                                                : std::vector<v1::EmbedImageRequest>();
  const uint64_t unique_start = options.unique_texts ? RandomUniqueStart() : 0;
  CallOptions call;
  call.timeout = options.timeout;
  call.retry = false;
  // Connect first, untimed: otherwise the first request of each caller would also
  // time the TCP (and TLS) handshake. Its answer does not matter, unless the server
  // cannot be reached: the callers' unretried requests would then fail in
  // microseconds, spinning through the whole duration.
  const absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> health =
      client.CheckHealth("", call);
  if (!health.ok() && health.status().code() == absl::StatusCode::kUnavailable) {
    return health.status();
  }

  std::atomic<int64_t> tickets{0};
  std::atomic<int64_t> completed{0};
  std::vector<WorkerStats> stats(static_cast<size_t>(options.concurrency));
  const Steady::time_point start = Steady::now();
  const Steady::time_point end =
      start + std::chrono::nanoseconds(absl::ToInt64Nanoseconds(options.duration));
  const double run_seconds = absl::ToDoubleSeconds(options.duration);
  absl::Mutex progress_mu;
  // Since when (nanoseconds into the run) every answer has been UNAVAILABLE, -1 while
  // the last one was not; `lost` once that has lasted give_up_after.
  std::atomic<int64_t> unavailable_since{-1};
  std::atomic<bool> lost{false};
  const int64_t give_up_ns = absl::ToInt64Nanoseconds(options.give_up_after);

  auto worker = [&](WorkerStats& mine) {
    for (;;) {
      if (lost.load(std::memory_order_relaxed)) break;
      const int64_t ticket = tickets.fetch_add(1);
      if (options.requests > 0 ? ticket >= options.requests : Steady::now() >= end) break;
      // Made before the clock starts: building it is not the server's time.
      const v1::EmbedTextRequest text = options.modality == BenchModality::kText
                                            ? TextRequest(options, ticket, unique_start)
                                            : v1::EmbedTextRequest();
      const Steady::time_point sent = Steady::now();
      absl::Status status =
          options.modality == BenchModality::kImage
              ? client
                    .EmbedImages(images[static_cast<size_t>(ticket) % images.size()],
                                 call)
                    .status()
              : client.EmbedTexts(text, call).status();
      const Steady::time_point answered = Steady::now();
      const double ms =
          std::chrono::duration<double, std::milli>(answered - sent).count();
      const int64_t at_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(answered - start).count();
      if (status.code() == absl::StatusCode::kUnavailable) {
        int64_t since = -1;
        if (!unavailable_since.compare_exchange_strong(since, at_ns)) {
          if (at_ns - since >= give_up_ns) lost.store(true, std::memory_order_relaxed);
        }
      } else {
        unavailable_since.store(-1);
      }
      if (status.ok()) {
        mine.ok_ms.Add(ms);
      } else {
        mine.failed_ms.Add(ms);
        const std::string code = absl::StatusCodeToString(status.code());
        if (mine.errors[code]++ == 0) mine.examples[code] = std::string(status.message());
      }
      const int64_t done = completed.fetch_add(1) + 1;
      if (options.on_progress) {
        const double fraction =
            options.requests > 0
                ? static_cast<double>(done) / options.requests
                : std::chrono::duration<double>(Steady::now() - start).count() /
                      run_seconds;
        absl::MutexLock lock(&progress_mu);
        options.on_progress(done, fraction);
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(stats.size());
  for (WorkerStats& mine : stats) threads.emplace_back(worker, std::ref(mine));
  for (std::thread& thread : threads) thread.join();

  BenchResult result;
  result.elapsed = absl::FromChrono(Steady::now() - start);
  LatencyHistogram ok_ms, failed_ms;
  for (WorkerStats& mine : stats) {
    ok_ms.Merge(mine.ok_ms);
    failed_ms.Merge(mine.failed_ms);
    for (const auto& [code, count] : mine.errors) result.errors[code] += count;
    for (const auto& [code, message] : mine.examples)
      result.error_examples.emplace(code, message);
  }
  result.succeeded = ok_ms.count();
  result.requests = result.succeeded + failed_ms.count();
  result.items = result.requests * options.items_per_request;
  result.latency_ms = (ok_ms.count() > 0 ? ok_ms : failed_ms).Summarize();
  if (lost.load()) {
    result.stopped_early =
        absl::StrCat("every answer for ", absl::FormatDuration(options.give_up_after),
                     " was UNAVAILABLE (", result.error_examples["UNAVAILABLE"], ")");
  }
  return result;
}

namespace {

// Items of the requests that succeeded: the work the server did.
double AnsweredItems(const BenchResult& result, const BenchOptions& options) {
  return static_cast<double>(result.succeeded) * options.items_per_request;
}

}  // namespace

nlohmann::ordered_json BenchJson(const BenchResult& result, const BenchOptions& options) {
  const double seconds = std::max(absl::ToDoubleSeconds(result.elapsed), 1e-9);
  nlohmann::ordered_json errors = nlohmann::ordered_json::object();
  for (const auto& [code, count] : result.errors) errors[code] = count;
  nlohmann::ordered_json out;
  out["requests"] = result.requests;
  out["items"] = result.items;
  out["errors"] = std::move(errors);
  out["qps"] = result.requests / seconds;
  out["items_per_s"] = AnsweredItems(result, options) / seconds;
  out["latency_ms"] = {{"p50", result.latency_ms.p50},
                       {"p90", result.latency_ms.p90},
                       {"p99", result.latency_ms.p99},
                       {"max", result.latency_ms.max}};
  out["succeeded"] = result.succeeded;
  out["elapsed_s"] = seconds;
  out["modality"] = options.modality == BenchModality::kImage ? "image" : "text";
  out["concurrency"] = options.concurrency;
  out["items_per_request"] = options.items_per_request;
  if (options.modality == BenchModality::kText)
    out["unique_texts"] = options.unique_texts;
  if (!result.stopped_early.empty()) out["stopped_early"] = result.stopped_early;
  return out;
}

std::string BenchText(const BenchResult& result, const BenchOptions& options) {
  const double seconds = std::max(absl::ToDoubleSeconds(result.elapsed), 1e-9);
  std::string out = absl::StrFormat(
      "%s bench: %d callers, %d %s per request, %.2f s\n"
      "requests:   %d (%d ok, %d failed)   %.2f requests/s\n"
      "items:      %d   %.2f items/s answered\n"
      "latency ms: p50 %.1f   p90 %.1f   p99 %.1f   max %.1f%s\n",
      options.modality == BenchModality::kImage ? "image" : "text", options.concurrency,
      options.items_per_request,
      absl::StrCat(options.modality == BenchModality::kImage ? "image" : "text",
                   options.items_per_request == 1 ? "" : "s"),
      seconds, result.requests, result.succeeded, result.requests - result.succeeded,
      result.requests / seconds, result.items, AnsweredItems(result, options) / seconds,
      result.latency_ms.p50, result.latency_ms.p90, result.latency_ms.p99,
      result.latency_ms.max, result.succeeded == 0 ? " (all failed)" : "");
  for (const auto& [code, count] : result.errors) {
    auto example = result.error_examples.find(code);
    absl::StrAppend(&out, absl::StrFormat("errors:     %s %d", code, count),
                    example == result.error_examples.end() || example->second.empty()
                        ? ""
                        : absl::StrCat(" (e.g. ", example->second, ")"),
                    "\n");
  }
  if (!result.stopped_early.empty()) {
    absl::StrAppend(&out, "stopped:    early: ", result.stopped_early, "\n");
  }
  return out;
}

absl::StatusOr<absl::Duration> ParseBenchDuration(absl::string_view text) {
  absl::Duration duration;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds)) {
    if (!std::isfinite(seconds)) {
      return absl::InvalidArgumentError(
          absl::StrCat("duration '", text, "' is not finite"));
    }
    duration = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &duration)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad duration '", text, "' (e.g. 30s, 500ms, 2m, or seconds)"));
  }
  if (duration <= absl::ZeroDuration() || duration > kMaxBenchDuration) {
    return absl::InvalidArgumentError(
        absl::StrCat("duration '", text, "' must be positive and at most a year"));
  }
  return duration;
}

const std::vector<std::string>& UniqueTextWords() {
  static const std::vector<std::string>* const words = new std::vector<std::string>{
      "red",      "blue",   "green",    "black",   "white",   "brown",   "gray",
      "pink",     "orange", "yellow",   "purple",  "gold",    "silver",  "dark",
      "light",    "big",    "small",    "old",     "new",     "young",   "tall",
      "long",     "short",  "round",    "square",  "wide",    "flat",    "tiny",
      "huge",     "little", "warm",     "cold",    "hot",     "dog",     "cat",
      "bird",     "fish",   "horse",    "cow",     "sheep",   "goat",    "duck",
      "bear",     "lion",   "tiger",    "wolf",    "fox",     "deer",    "rabbit",
      "mouse",    "frog",   "owl",      "tree",    "flower",  "grass",   "leaf",
      "rock",     "stone",  "river",    "lake",    "sea",     "beach",   "hill",
      "mountain", "forest", "field",    "garden",  "park",    "road",    "street",
      "bridge",   "city",   "town",     "house",   "room",    "door",    "window",
      "wall",     "floor",  "roof",     "table",   "chair",   "bed",     "desk",
      "lamp",     "clock",  "book",     "pen",     "paper",   "bag",     "box",
      "cup",      "bowl",   "plate",    "bottle",  "glass",   "knife",   "spoon",
      "fork",     "bread",  "cake",     "apple",   "banana",  "car",     "bus",
      "train",    "boat",   "plane",    "bike",    "truck",   "ship",    "wheel",
      "engine",   "ball",   "game",     "toy",     "kite",    "hat",     "shirt",
      "shoe",     "coat",   "dress",    "man",     "woman",   "boy",     "girl",
      "child",    "baby",   "family",   "friend",  "team",    "group",   "people",
      "crowd",    "player", "doctor",   "teacher", "farmer",  "sun",     "moon",
      "star",     "sky",    "cloud",    "rain",    "snow",    "wind",    "storm",
      "fire",     "night",  "day",      "morning", "evening", "summer",  "winter",
      "spring",   "music",  "song",     "dance",   "art",     "photo",   "picture",
      "painting", "map",    "sign",     "flag",    "letter",  "word",    "number",
      "line",     "circle", "heart",    "food",    "water",   "milk",    "coffee",
      "tea",      "juice",  "soup",     "rice",    "meat",    "egg",     "cheese",
      "salad",    "pizza",  "sandwich", "fruit",   "run",     "walk",    "jump",
      "swim",     "fly",    "sit",      "stand",   "sleep",   "eat",     "drink",
      "read",     "write",  "play",     "sing",    "smile",   "look",    "happy",
      "sad",      "busy",   "quiet",    "loud",    "clean",   "empty",   "full",
      "open",     "closed", "fast",     "slow",    "soft",    "hard",    "sharp",
      "bright",   "north",  "south",    "east",    "west",    "left",    "right",
      "top",      "bottom", "front",    "back",    "middle",  "inside",  "outside",
      "near",     "far",    "one",      "two",     "three",   "four",    "five",
      "six",      "seven",  "eight",    "nine",    "ten",     "hundred", "first",
      "second",   "third",  "last",     "next",    "time",    "year",    "week",
      "month",    "hour",   "minute",   "job",
  };
  return *words;
}

std::string UniqueTextSuffix(uint64_t n) {
  const std::vector<std::string>& words = UniqueTextWords();
  return absl::StrCat(" ", words[n % 256], " ", words[(n >> 8) % 256], " ",
                      words[(n >> 16) % 256]);
}

const std::vector<std::string>& DefaultCaptions() {
  static const std::vector<std::string>* const captions = new std::vector<std::string>{
      "a photo of a cat",
      "a dog catching a frisbee in a park",
      "two people riding bicycles along the beach at sunset",
      "a bowl of ramen with a soft-boiled egg and green onions",
      "an aerial view of a city at night",
      "a red double-decker bus on a busy London street",
      "a close-up of a bee on a yellow flower",
      "snow-covered mountains reflected in a calm lake",
      "a child blowing out candles on a birthday cake",
      "a vintage car parked in front of a diner",
      "a laptop and a cup of coffee on a wooden desk",
      "a herd of elephants crossing a dusty road",
      "a lighthouse on a rocky coast during a storm",
      "a plate of sushi",
      "a man in a suit talking on the phone",
      "fireworks over a river",
      "a cozy living room with a fireplace and a bookshelf",
      "a soccer player kicking a ball in a stadium",
      "a bunch of ripe bananas on a kitchen counter",
      "an astronaut floating inside a space station",
      "a black and white photo of an old farmhouse",
      "a woman reading a book on a train",
      "a diagram of the human heart",
      "a screenshot of a spreadsheet",
      "a rocket launching into a clear blue sky",
      "a toddler playing with wooden blocks",
      "rain on a window with blurred city lights behind it",
      "a street market selling fresh fruit and vegetables",
      "a sailboat on the open sea",
      "a pair of running shoes on a gravel path",
      "an oil painting of a vase with sunflowers",
      "a traffic jam on a highway in the evening",
      "a golden retriever puppy sleeping on a blanket",
      "a chef slicing vegetables in a restaurant kitchen",
      "the northern lights over a snowy forest",
      "a handwritten note that says thank you",
      "a group of friends taking a selfie",
      "a parrot with bright green and red feathers",
      "a bridge in fog",
      "a slice of pepperoni pizza",
  };
  return *captions;
}

absl::StatusOr<std::vector<std::string>> DefaultBenchImages(int count) {
  std::vector<std::string> images;
  for (int seed = 1; seed <= count; ++seed) {
    absl::StatusOr<std::string> jpeg =
        SyntheticJpeg(640, 480, static_cast<uint64_t>(seed));
    if (!jpeg.ok()) return jpeg.status();
    images.push_back(*std::move(jpeg));
  }
  return images;
}

}  // namespace clipserve
