#include "tests/service/fake_engine.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

constexpr int32_t kStartToken = 49406;
constexpr int32_t kEndToken = 49407;

uint64_t Fnv1a(uint64_t hash, absl::string_view bytes) {
  for (const unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

// `dim` values in [-1, 1) from a splitmix64 sequence seeded with `seed`.
std::vector<float> VectorFromSeed(uint64_t seed, int dim) {
  std::vector<float> out(dim);
  uint64_t state = seed;
  for (float& v : out) {
    state += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    v = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  return out;
}

std::string Item(absl::string_view field, int i) {
  return absl::StrCat(field, "[", i, "]");
}

// Item i of an embed request, under the caller's numbering when one is given.
std::string Item(absl::string_view field, const EmbedOptions& options, int i) {
  return Item(field, i < static_cast<int>(options.item_numbers.size())
                         ? options.item_numbers[i]
                         : i);
}

}  // namespace

FakeEngine::FakeEngine(ModelDescription description, int max_texts_per_call)
    : description_(std::move(description)),
      max_texts_per_call_(max_texts_per_call),
      worker_([this] { Work(); }) {}

FakeEngine::~FakeEngine() {
  {
    absl::MutexLock lock(&mu_);
    hold_ = false;
    ReleaseLocked(held_.size());
    stopping_ = true;
    changed_.SignalAll();
  }
  worker_.join();
}

ModelDescription FakeEngine::DefaultDescription() {
  ModelDescription d;
  d.name = "fake-ViT-B-32";
  d.vision_architecture = "vit";
  d.vision_width = 768;
  d.vision_layers = 12;
  d.vision_patch_size = 32;
  d.vision_heads = 12;
  d.text_architecture = "transformer";
  d.text_width = 512;
  d.text_layers = 12;
  d.text_heads = 8;
  d.embed_dim = 8;
  d.image_size = 224;
  d.image_mean = {0.48145466f, 0.4578275f, 0.40821073f};
  d.image_std = {0.26862954f, 0.26130258f, 0.27577711f};
  d.context_length = 77;
  d.vocab_size = 49408;
  d.logit_scale = 20.0f;
  d.precision = "fp32";
  d.device = "cpu";
  d.checkpoint_format = "demo";
  d.checkpoint_sha256 = "";
  d.random_weights = true;
  return d;
}

std::vector<float> FakeEngine::TextVector(absl::string_view text, int dim) {
  return VectorFromSeed(Fnv1a(0xcbf29ce484222325ULL, text), dim);
}

std::vector<float> FakeEngine::ImageVector(const ImageInput& image, int dim) {
  uint64_t hash = Fnv1a(0xcbf29ce484222325ULL, image.is_raw ? "raw" : "encoded");
  if (image.is_raw) {
    hash = Fnv1a(hash, absl::StrCat(image.width, "x", image.height));
    hash = Fnv1a(hash, image.rgb8);
  } else {
    hash = Fnv1a(hash, image.encoded);
  }
  return VectorFromSeed(hash, dim);
}

std::vector<float> FakeEngine::Normalized(std::vector<float> v) {
  double sum = 0;
  for (const float x : v) sum += static_cast<double>(x) * x;
  const double norm = std::sqrt(sum);
  for (float& x : v) x = static_cast<float>(x / norm);
  return v;
}

void FakeEngine::set_hold(bool hold) {
  absl::MutexLock lock(&mu_);
  hold_ = hold;
  if (!hold) ReleaseLocked(held_.size());
}

void FakeEngine::set_error(absl::Status status) {
  absl::MutexLock lock(&mu_);
  error_ = std::move(status);
}

bool FakeEngine::AwaitHeld(int n) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (static_cast<int>(held_.size()) < n) {
    if (changed_.WaitWithDeadline(&mu_, deadline)) {
      return static_cast<int>(held_.size()) >= n;
    }
  }
  return true;
}

bool FakeEngine::ReleaseOne() {
  absl::MutexLock lock(&mu_);
  if (held_.empty()) return false;
  ReleaseLocked(1);
  return true;
}

void FakeEngine::ReleaseAll() {
  absl::MutexLock lock(&mu_);
  ReleaseLocked(held_.size());
}

void FakeEngine::ReleaseLocked(size_t n) {
  for (; n > 0 && !held_.empty(); --n) {
    ready_.push_back(std::move(held_.front().answer));
    held_.pop_front();
  }
  changed_.SignalAll();
}

int FakeEngine::outstanding() const {
  absl::MutexLock lock(&mu_);
  return outstanding_;
}

int FakeEngine::max_outstanding() const {
  absl::MutexLock lock(&mu_);
  return max_outstanding_;
}

std::vector<FakeEngine::Call> FakeEngine::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

int FakeEngine::CountCalls(Call::Kind kind) const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(std::count_if(
      calls_.begin(), calls_.end(), [kind](const Call& c) { return c.kind == kind; }));
}

int FakeEngine::texts_embedded() const {
  absl::MutexLock lock(&mu_);
  return texts_embedded_;
}

void FakeEngine::Submit(Call call, Answer answer) {
  // A request stops being outstanding just before its callback runs: the callback
  // may already make the service send the next request.
  Answer counted = [this, answer = std::move(answer)]() mutable {
    {
      absl::MutexLock lock(&mu_);
      --outstanding_;
    }
    std::move(answer)();
  };
  absl::MutexLock lock(&mu_);
  if (call.kind == Call::Kind::kTexts) texts_embedded_ += call.items;
  calls_.push_back(std::move(call));
  ++outstanding_;
  max_outstanding_ = std::max(max_outstanding_, outstanding_);
  if (hold_) {
    held_.push_back(Held{std::move(counted), calls_.back().options});
  } else {
    ready_.push_back(std::move(counted));
  }
  changed_.SignalAll();
}

void FakeEngine::DropDeadItems() {
  std::vector<Answer> dead;
  {
    absl::MutexLock lock(&mu_);
    ++drop_dead_calls_;
    if (!drop_dead_items_) return;
    std::deque<Held> live;
    for (Held& held : held_) {
      if (DeadStatus(held.options).ok()) {
        live.push_back(std::move(held));
      } else {
        dead.push_back(std::move(held.answer));
      }
    }
    held_ = std::move(live);
    changed_.SignalAll();
  }
  // On this thread, as EmbeddingEngine answers the items it drops.
  for (Answer& answer : dead) std::move(answer)();
}

void FakeEngine::set_drop_dead_items(bool drop) {
  absl::MutexLock lock(&mu_);
  drop_dead_items_ = drop;
}

int FakeEngine::drop_dead_calls() const {
  absl::MutexLock lock(&mu_);
  return drop_dead_calls_;
}

absl::Status FakeEngine::DeadStatus(const EmbedOptions& options) {
  if (options.cancellation != nullptr && options.cancellation->cancelled()) {
    return absl::CancelledError("cancelled while queued");
  }
  if (absl::Now() > options.deadline) {
    return absl::DeadlineExceededError("deadline passed while queued");
  }
  return absl::OkStatus();
}

absl::Status FakeEngine::DeliveryStatus(const EmbedOptions& options) const {
  absl::MutexLock lock(&mu_);
  if (!answer_dead_requests_) {
    if (absl::Status dead = DeadStatus(options); !dead.ok()) return dead;
  }
  return error_;
}

void FakeEngine::set_answer_dead_requests(bool answer) {
  absl::MutexLock lock(&mu_);
  answer_dead_requests_ = answer;
}

void FakeEngine::Work() {
  while (true) {
    Answer answer;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && ready_.empty()) changed_.Wait(&mu_);
      if (ready_.empty()) return;  // stopping, and everything answered
      answer = std::move(ready_.front());
      ready_.pop_front();
    }
    std::move(answer)();
  }
}

void FakeEngine::EmbedImages(std::vector<ImageInput> images, const EmbedOptions& options,
                             std::string field, EmbedCallback done) {
  Call call{Call::Kind::kImages, static_cast<int>(images.size()), {}, options, field};
  Submit(std::move(call), [this, images = std::move(images), options,
                           field = std::move(field), done = std::move(done)]() mutable {
    absl::StatusOr<EmbedResult> result = [&]() -> absl::StatusOr<EmbedResult> {
      if (absl::Status status = DeliveryStatus(options); !status.ok()) return status;
      EmbedResult out;
      out.dim = description_.embed_dim;
      for (size_t i = 0; i < images.size(); ++i) {
        if (!images[i].is_raw && absl::StartsWith(images[i].encoded, kUndecodable)) {
          return InvalidArgumentForField(Item(field, options, static_cast<int>(i)),
                                         "not a JPEG, PNG, WebP, GIF or BMP");
        }
        std::vector<float> v = ImageVector(images[i], out.dim);
        if (options.normalize) v = Normalized(std::move(v));
        out.values.insert(out.values.end(), v.begin(), v.end());
      }
      return out;
    }();
    std::move(done)(std::move(result));
  });
}

void FakeEngine::EmbedTexts(std::vector<std::string> texts, const EmbedOptions& options,
                            std::string field, EmbedCallback done) {
  Call call{Call::Kind::kTexts, static_cast<int>(texts.size()), texts, options, field};
  Submit(std::move(call), [this, texts = std::move(texts), options,
                           field = std::move(field), done = std::move(done)]() mutable {
    absl::StatusOr<EmbedResult> result = [&]() -> absl::StatusOr<EmbedResult> {
      if (absl::Status status = DeliveryStatus(options); !status.ok()) return status;
      EmbedResult out;
      out.dim = description_.embed_dim;
      const int context = description_.context_length;
      for (size_t i = 0; i < texts.size(); ++i) {
        const int tokens = static_cast<int>(texts[i].size()) + 2;
        if (tokens > context && !options.truncate) {
          return InvalidArgumentForField(
              Item(field, options, static_cast<int>(i)),
              absl::StrCat("text is ", tokens, " tokens, over the context of ", context));
        }
        if (texts[i] == kNonFinite) {
          return absl::InternalError(
              absl::StrCat(Item(field, options, static_cast<int>(i)),
                           ": the model gave NaN or infinite values for this item"));
        }
        std::vector<float> v = TextVector(texts[i], out.dim);
        if (options.normalize) v = Normalized(std::move(v));
        out.values.insert(out.values.end(), v.begin(), v.end());
        out.truncated.push_back(tokens > context);
        out.num_tokens.push_back(std::min(tokens, context));
      }
      return out;
    }();
    std::move(done)(std::move(result));
  });
}

void FakeEngine::Tokenize(std::vector<std::string> texts, const EmbedOptions& options,
                          std::string field, TokenizeCallback done) {
  const bool truncate = options.truncate;
  Call call{Call::Kind::kTokenize, static_cast<int>(texts.size()), texts, options, field};
  Submit(std::move(call), [this, texts = std::move(texts), truncate, options,
                           field = std::move(field), done = std::move(done)]() mutable {
    absl::StatusOr<std::vector<TokenizedResult>> result =
        [&]() -> absl::StatusOr<std::vector<TokenizedResult>> {
      if (absl::Status status = DeliveryStatus(options); !status.ok()) {
        return status;
      }
      const int context = description_.context_length;
      std::vector<TokenizedResult> out;
      for (size_t i = 0; i < texts.size(); ++i) {
        TokenizedResult tokens;
        tokens.ids.push_back(kStartToken);
        for (const unsigned char c : texts[i]) tokens.ids.push_back(c + 1);
        tokens.ids.push_back(kEndToken);
        if (static_cast<int>(tokens.ids.size()) > context) {
          if (!truncate) {
            return InvalidArgumentForField(Item(field, static_cast<int>(i)),
                                           "text is over the context");
          }
          tokens.ids.resize(context);
          tokens.ids.back() = kEndToken;
          tokens.truncated = true;
        }
        out.push_back(std::move(tokens));
      }
      return out;
    }();
    std::move(done)(std::move(result));
  });
}

}  // namespace clipserve
