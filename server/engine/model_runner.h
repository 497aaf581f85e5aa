#ifndef CLIPSERVE_SERVER_ENGINE_MODEL_RUNNER_H_
#define CLIPSERVE_SERVER_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace clipserve {

// One thread that runs every model computation of a CPU engine, one at a time, the
// highest priority first (in arrival order within a priority), except that a task
// passed over by `max_overtakes` later arrivals runs next; callers block until theirs
// has run.
//
// Why one thread: LibTorch's CPU kernels parallelize with OpenMP, and GNU libgomp
// keeps a team of helper threads for each thread that starts parallel work. Once the
// process holds more such threads than CPUs (the image worker's team, the text
// worker's, the loader's), libgomp stops spin-waiting between parallel regions, and
// each of a forward pass's hundreds of regions pays a futex wake-up. Measured on 2
// vCPUs: a batch-1 text forward takes 9.8 ms on a process's only team and 13.6 ms on a
// worker thread while an idle second team exists. With every model run on this
// thread there is one team, and batches of the two modalities take turns on the
// cores instead of oversubscribing them.
//
// Thread-safe. A task must not call Run() or Shutdown() (it would wait for itself).
class ModelRunner {
 public:
  // `max_overtakes` >= 0: how many tasks that arrived later, with a higher priority,
  // may run before a queued task (0: arrival order only).
  explicit ModelRunner(int max_overtakes = 1);
  ~ModelRunner();  // Shutdown()
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  // Runs `task` on the runner thread after every queued task of higher `priority`
  // and every earlier one of the same priority, and returns once it has run: `task`
  // may use the caller's stack. UNAVAILABLE (task not run) after Shutdown() began;
  // INTERNAL, with the exception's message, when `task` threw (the runner goes on).
  // Never throws.
  //
  // Priorities are not strict: once `max_overtakes` later tasks have gone first, a
  // task goes before any other, so callers that keep a higher priority queued (text
  // batches from several workers) delay a lower one (an image batch) by a bounded
  // number of tasks instead of starving it.
  absl::Status Run(int priority, absl::FunctionRef<void()> task) ABSL_LOCKS_EXCLUDED(mu_);

  // Runs the tasks already queued, then joins the thread; later Run() calls return
  // UNAVAILABLE. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // Tasks queued and not yet started (for tests).
  int queued() const ABSL_LOCKS_EXCLUDED(mu_);
  // Whether Shutdown() has begun (for tests).
  bool stopping() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiting {
    int priority = 0;
    int64_t sequence = 0;
    int overtaken = 0;  // later arrivals that ran before this task
    absl::FunctionRef<void()>* task = nullptr;  // the caller's, alive until done
    bool* done = nullptr;                       // the caller's; set under mu_
    std::string* error = nullptr;  // the caller's: what the task threw, if it did
  };
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // Removes and returns the task to run next; waiting_ must not be empty.
  Waiting TakeNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_overtakes_;
  mutable absl::Mutex mu_;
  // Kept sorted: highest priority first, then lowest sequence. Short (one entry per
  // blocked caller), so a vector with sorted insertion is enough.
  std::vector<Waiting> waiting_ ABSL_GUARDED_BY(mu_);
  int64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // CondVars rather than Mutex::Await(Condition): ThreadSanitizer sees the hand-over
  // through them (see server/common/tsan_absl_annotations.cc).
  absl::CondVar work_available_;
  absl::CondVar task_done_;
  absl::Mutex join_mu_;
  std::thread thread_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_MODEL_RUNNER_H_
