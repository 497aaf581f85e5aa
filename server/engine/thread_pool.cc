#include "server/engine/thread_pool.h"

#include <utility>

#include "server/common/status_payloads.h"

namespace clipserve {

absl::StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::Create(int num_threads,
                                                               int max_pending) {
  if (num_threads < 1 || max_pending < 1) {
    return absl::InvalidArgumentError("a thread pool needs >= 1 thread and >= 1 slot");
  }
  std::unique_ptr<ThreadPool> pool(new ThreadPool(max_pending));
  for (int i = 0; i < num_threads; ++i)
    pool->threads_.emplace_back([p = pool.get()] { p->Loop(); });
  return pool;
}

ThreadPool::~ThreadPool() { Shutdown(); }

absl::Status ThreadPool::Submit(Task task, Priority priority) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the preprocessing pool is shutting down");
  if (static_cast<int>(quick_.size() + slow_.size()) >= max_pending_) {
    absl::Status status = absl::ResourceExhaustedError("the preprocessing queue is full");
    // Tasks take milliseconds; by then a few hundred will have drained.
    SetRetryInfoPayload(absl::Milliseconds(100), &status);
    return status;
  }
  (priority == Priority::kQuick ? quick_ : slow_).push_back(std::move(task));
  work_available_.Signal();
  return absl::OkStatus();
}

void ThreadPool::Loop() {
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && quick_.empty() && slow_.empty()) work_available_.Wait(&mu_);
      if (quick_.empty() && slow_.empty()) return;  // stopping and drained
      const bool quick = !quick_.empty() && (slow_.empty() || overtakes_ < kMaxOvertakes);
      std::deque<Task>& from = quick ? quick_ : slow_;
      overtakes_ = quick && !slow_.empty() ? overtakes_ + 1 : 0;
      task = std::move(from.front());
      from.pop_front();
    }
    std::move(task)();
  }
}

void ThreadPool::Shutdown() {
  absl::MutexLock join_lock(&join_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_available_.SignalAll();
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

}  // namespace clipserve
