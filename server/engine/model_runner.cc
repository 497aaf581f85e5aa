#include "server/engine/model_runner.h"

#include <algorithm>
#include <exception>

#include "absl/strings/str_cat.h"

namespace clipserve {

ModelRunner::ModelRunner(int max_overtakes)
    : max_overtakes_(std::max(max_overtakes, 0)), thread_([this] { Loop(); }) {}

ModelRunner::~ModelRunner() { Shutdown(); }

absl::Status ModelRunner::Run(int priority, absl::FunctionRef<void()> task) {
  bool done = false;
  std::string error;
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the model runner is shutting down");
  const Waiting entry{priority, next_sequence_++, 0, &task, &done, &error};
  const auto before = [](const Waiting& a, const Waiting& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.sequence < b.sequence;
  };
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), entry, before),
                  entry);
  work_available_.Signal();
  while (!done) task_done_.Wait(&mu_);
  if (!error.empty()) return absl::InternalError(error);
  return absl::OkStatus();
}

ModelRunner::Waiting ModelRunner::TakeNext() {
  // The earliest task passed over max_overtakes_ times, else the front.
  auto next = waiting_.begin();
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->overtaken >= max_overtakes_ &&
        (next->overtaken < max_overtakes_ || it->sequence < next->sequence)) {
      next = it;
    }
  }
  for (Waiting& other : waiting_) {
    if (other.sequence < next->sequence) ++other.overtaken;
  }
  const Waiting taken = *next;
  waiting_.erase(next);
  return taken;
}

void ModelRunner::Loop() {
  bool* finished = nullptr;  // the flag of the task that just ran
  while (true) {
    Waiting next;
    {
      absl::MutexLock lock(&mu_);
      if (finished != nullptr) {
        *finished = true;
        // Every blocked caller wakes and checks its own flag; there are few of them.
        task_done_.SignalAll();
      }
      while (waiting_.empty() && !stopping_) work_available_.Wait(&mu_);
      if (waiting_.empty()) return;  // stopping, and nothing left
      next = TakeNext();
    }
    // Written before `finished` is set under mu_, so the caller reads it after.
    try {
      (*next.task)();
    } catch (const std::exception& e) {
      *next.error = absl::StrCat("a model runner task threw: ", e.what());
    } catch (...) {
      *next.error = "a model runner task threw a non-standard exception";
    }
    finished = next.done;
  }
}

void ModelRunner::Shutdown() {
  absl::MutexLock join_lock(&join_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_available_.Signal();
  }
  if (thread_.joinable()) thread_.join();
}

bool ModelRunner::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

int ModelRunner::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(waiting_.size());
}

}  // namespace clipserve
