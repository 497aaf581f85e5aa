#ifndef CLIPSERVE_TESTS_SERVICE_FAKE_ENGINE_H_
#define CLIPSERVE_TESTS_SERVICE_FAKE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/engine.h"

namespace clipserve {

// An Engine for service tests: no model, deterministic answers, and full control over
// when answers arrive.
//
// Embeddings: TextVector()/ImageVector() derive `embed_dim` values in [-1, 1) from the
// input's bytes (FNV-1a seeded), L2-normalized when asked. Texts read one token per
// byte plus start and end: num_tokens = min(bytes + 2, context_length); longer texts
// are truncated, or INVALID_ARGUMENT naming "<field>[i]" with truncate=false. An
// encoded image whose bytes start with kUndecodable is INVALID_ARGUMENT naming
// "<field>[i]", as a real decoder would answer; a text equal to kNonFinite is
// INTERNAL "<field>[i]: ...", as EmbeddingEngine answers an item the model gives NaN
// for. Tokenize gives ids byte + 1 between
// the start (49406) and end (49407) tokens.
//
// Every answer is computed when it is delivered, like a real queue: a request whose
// cancellation flag is set by then gets CANCELLED, one past its deadline
// DEADLINE_EXCEEDED, and while set_error() holds a status every request gets it.
// Answers run on the fake's own thread, never the caller's, except as below. With
// set_hold(true) they wait until Release*() is called, so tests can look at queued
// work. DropDeadItems() is counted; after set_drop_dead_items(true) it also delivers
// the held answers of requests cancelled or past their deadline, on the calling
// thread before it returns, as EmbeddingEngine answers the queued items it drops (by
// default they stay held: answers that come late, after the cancel).
//
// Thread-safe.
class FakeEngine : public Engine {
 public:
  static constexpr absl::string_view kUndecodable = "undecodable";
  static constexpr absl::string_view kNonFinite = "non-finite";

  // One request as the fake received it.
  struct Call {
    enum class Kind { kImages, kTexts, kTokenize };
    Kind kind;
    int items = 0;
    std::vector<std::string> texts;  // kTexts and kTokenize
    EmbedOptions options;
    std::string field;
  };

  // `max_texts_per_call` is only reported (max_texts_per_call()), not enforced.
  explicit FakeEngine(ModelDescription description, int max_texts_per_call = 1 << 20);
  // Answers every held request, then stops the answering thread.
  ~FakeEngine() override;

  // A description with embed_dim 8, context 77, logit_scale 20, every field set.
  static ModelDescription DefaultDescription();

  static std::vector<float> TextVector(absl::string_view text, int dim);
  static std::vector<float> ImageVector(const ImageInput& image, int dim);
  static std::vector<float> Normalized(std::vector<float> v);

  // While true, answers wait for Release*(). Turning it off releases every held one.
  void set_hold(bool hold);
  // Every request fails with `status` until cleared with absl::OkStatus().
  void set_error(absl::Status status);
  // While true, a request cancelled or past its deadline by the time it is delivered
  // is answered as a live one is: as a batch that was already running when the call
  // died.
  void set_answer_dead_requests(bool answer);

  // Waits up to 10 s until at least `n` answers are held; false on timeout.
  bool AwaitHeld(int n);
  // Delivers the oldest held answer; false when none is held.
  bool ReleaseOne();
  void ReleaseAll();

  // Requests received and not yet answered (their callback has not started), now and
  // at most so far.
  int outstanding() const;
  int max_outstanding() const;
  std::vector<Call> calls() const;
  int CountCalls(Call::Kind kind) const;
  // Texts received by EmbedTexts, over all calls.
  int texts_embedded() const;

  void EmbedImages(std::vector<ImageInput> images, const EmbedOptions& options,
                   std::string field, EmbedCallback done) override;
  void EmbedTexts(std::vector<std::string> texts, const EmbedOptions& options,
                  std::string field, EmbedCallback done) override;
  void Tokenize(std::vector<std::string> texts, const EmbedOptions& options,
                std::string field, TokenizeCallback done) override;
  const ModelDescription& description() const override { return description_; }
  int max_texts_per_call() const override { return max_texts_per_call_; }
  bool healthy() const override { return true; }
  void DropDeadItems() override;
  void set_drop_dead_items(bool drop);
  // DropDeadItems() calls so far.
  int drop_dead_calls() const;

 private:
  using Answer = absl::AnyInvocable<void() &&>;
  struct Held {
    Answer answer;
    EmbedOptions options;  // for Tokenize, the defaults: never dead
  };

  // Records the call, then holds or queues its answer.
  void Submit(Call call, Answer answer);
  // CANCELLED or DEADLINE_EXCEEDED for a request that is dead now, else OK.
  static absl::Status DeadStatus(const EmbedOptions& options);
  // The status of a request at delivery time, before its items are looked at.
  absl::Status DeliveryStatus(const EmbedOptions& options) const;
  void Work();
  // Moves up to `n` held answers to the ready queue and wakes the waiters.
  void ReleaseLocked(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModelDescription description_;
  const int max_texts_per_call_;

  mutable absl::Mutex mu_;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool answer_dead_requests_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Held> held_ ABSL_GUARDED_BY(mu_);
  bool drop_dead_items_ ABSL_GUARDED_BY(mu_) = false;
  int drop_dead_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Answer> ready_ ABSL_GUARDED_BY(mu_);
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  int max_outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  int texts_embedded_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
  // Signalled whenever held_, ready_ or stopping_ change. Waits use a CondVar, not
  // Mutex::Await(Condition), so ThreadSanitizer sees the hand-over (see
  // server/common/tsan_absl_annotations.cc).
  absl::CondVar changed_;
  std::thread worker_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_TESTS_SERVICE_FAKE_ENGINE_H_
