#ifndef CLIPSERVE_SERVER_ENGINE_THREAD_POOL_H_
#define CLIPSERVE_SERVER_ENGINE_THREAD_POOL_H_

#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace clipserve {

// A fixed set of threads running tasks from a bounded queue: the engine's
// preprocessing pool (decoding, resizing, tokenizing), kept off gRPC's threads.
//
// Two priorities, each first in first out: a quick task (tokenizing a request's texts,
// microseconds a text) goes before the slow ones queued (decoding an image, up to
// hundreds of milliseconds), or one large image request would hold every text call
// behind its decodes. Not strictly: after kMaxOvertakes quick tasks in a row a slow one
// waiting goes first, so a flood of texts does not starve images.
//
// Thread-safe. Tasks must not throw and must not call Shutdown().
class ThreadPool {
 public:
  using Task = absl::AnyInvocable<void() &&>;
  enum class Priority { kQuick, kSlow };
  static constexpr int kMaxOvertakes = 8;

  // Starts `num_threads` (>= 1) threads; at most `max_pending` (>= 1) tasks wait.
  static absl::StatusOr<std::unique_ptr<ThreadPool>> Create(int num_threads,
                                                            int max_pending);
  ~ThreadPool();  // Shutdown()

  // Queues `task`. RESOURCE_EXHAUSTED when max_pending tasks (of both priorities)
  // already wait, UNAVAILABLE after Shutdown; the task is not run then (and is
  // destroyed here). Never blocks on the workers.
  absl::Status Submit(Task task, Priority priority = Priority::kSlow)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs the tasks already queued, then joins the threads. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  int num_threads() const { return static_cast<int>(threads_.size()); }

 private:
  explicit ThreadPool(int max_pending) : max_pending_(max_pending) {}
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const int max_pending_;
  std::vector<std::thread> threads_;
  absl::Mutex join_mu_;
  absl::Mutex mu_;
  std::deque<Task> quick_ ABSL_GUARDED_BY(mu_);
  std::deque<Task> slow_ ABSL_GUARDED_BY(mu_);
  // Quick tasks started in a row while a slow one waited.
  int overtakes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Signalled when a task is queued or stopping_ is set. A CondVar rather than
  // Mutex::Await(Condition): ThreadSanitizer sees the hand-over through it (see
  // server/common/tsan_absl_annotations.cc).
  absl::CondVar work_available_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_THREAD_POOL_H_
