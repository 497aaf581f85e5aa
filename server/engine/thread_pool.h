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

// A fixed set of threads running tasks from one bounded FIFO queue: the engine's
// preprocessing pool (decoding, resizing, tokenizing), kept off gRPC's threads.
//
// Thread-safe. Tasks must not throw and must not call Shutdown().
class ThreadPool {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  // Starts `num_threads` (>= 1) threads; at most `max_pending` (>= 1) tasks wait.
  static absl::StatusOr<std::unique_ptr<ThreadPool>> Create(int num_threads,
                                                            int max_pending);
  ~ThreadPool();  // Shutdown()

  // Queues `task`. RESOURCE_EXHAUSTED when max_pending tasks already wait,
  // UNAVAILABLE after Shutdown; the task is not run then (and is destroyed here).
  // Never blocks on the workers.
  absl::Status Submit(Task task) ABSL_LOCKS_EXCLUDED(mu_);

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
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Signalled when a task is queued or stopping_ is set. A CondVar rather than
  // Mutex::Await(Condition): ThreadSanitizer sees the hand-over through it (see
  // server/common/tsan_absl_annotations.cc).
  absl::CondVar work_available_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_THREAD_POOL_H_
