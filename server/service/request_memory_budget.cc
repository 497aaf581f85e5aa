#include "server/service/request_memory_budget.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"
#include "server/metrics/metrics.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

// "1536 bytes" below a MiB, else "12.5 MiB".
std::string Size(int64_t bytes) {
  if (bytes < (1 << 20)) return absl::StrCat(bytes, " bytes");
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
}

}  // namespace

RequestMemoryBudget::Reservation::Reservation(Reservation&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

RequestMemoryBudget::Reservation& RequestMemoryBudget::Reservation::operator=(
    Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

RequestMemoryBudget::Reservation::~Reservation() { Release(); }

void RequestMemoryBudget::Reservation::Release() {
  if (budget_ != nullptr) budget_->Return(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

RequestMemoryBudget::RequestMemoryBudget(int64_t capacity_bytes, Metrics* metrics)
    : capacity_(std::max<int64_t>(capacity_bytes, 0)), metrics_(metrics) {
  DCHECK_GE(capacity_bytes, 0);
  if (metrics_ != nullptr) metrics_->SetRequestMemoryLimit(capacity_);
}

RequestMemoryBudget::~RequestMemoryBudget() {
  DCHECK_EQ(used(), 0) << "a reservation outlived its RequestMemoryBudget";
}

absl::StatusOr<RequestMemoryBudget::Reservation> RequestMemoryBudget::Reserve(
    int64_t bytes) {
  bytes = std::max<int64_t>(bytes, 0);
  int64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (capacity_ > 0 && bytes > capacity_ - used) {
      if (metrics_ != nullptr) metrics_->RecordRequestMemoryRefusal();
      return ResourceExhaustedWithRetry(
          absl::StrCat("the server holds ", Size(used),
                       " of requests in flight; this one (", Size(bytes),
                       ") would pass its limit of ", Size(capacity_),
                       " (--max_request_memory_mb); retry after earlier calls finish"),
          kRetryAfter);
    }
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  if (metrics_ != nullptr) metrics_->AddRequestMemory(bytes);
  return Reservation(this, bytes);
}

void RequestMemoryBudget::Return(int64_t bytes) {
  used_.fetch_sub(bytes, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->AddRequestMemory(-bytes);
}

absl::Status ValidateRequestMemoryLimit(int64_t capacity_bytes,
                                        int64_t max_message_bytes) {
  if (capacity_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the request memory limit must not be negative, got ", capacity_bytes, " bytes"));
  }
  if (capacity_bytes > 0 && capacity_bytes < max_message_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request memory limit (", Size(capacity_bytes),
                     ") is smaller than the largest message (", Size(max_message_bytes),
                     "): a request of that size could never be admitted"));
  }
  return absl::OkStatus();
}

}  // namespace clipserve
