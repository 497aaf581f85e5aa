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
      bytes_(std::exchange(other.bytes_, 0)),
      client_(std::exchange(other.client_, std::string())) {}

RequestMemoryBudget::Reservation& RequestMemoryBudget::Reservation::operator=(
    Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    client_ = std::exchange(other.client_, std::string());
  }
  return *this;
}

RequestMemoryBudget::Reservation::~Reservation() { Release(); }

void RequestMemoryBudget::Reservation::Release() {
  if (budget_ != nullptr) budget_->Return(bytes_, client_);
  budget_ = nullptr;
  bytes_ = 0;
  client_.clear();
}

RequestMemoryBudget::RequestMemoryBudget(int64_t capacity_bytes, int64_t per_client_bytes,
                                         Metrics* metrics)
    : capacity_(std::max<int64_t>(capacity_bytes, 0)),
      per_client_capacity_(std::max<int64_t>(per_client_bytes, 0)),
      metrics_(metrics) {
  DCHECK_GE(capacity_bytes, 0);
  DCHECK_GE(per_client_bytes, 0);
  if (metrics_ != nullptr) {
    metrics_->SetRequestMemoryLimit(capacity_);
    metrics_->SetRequestMemoryClientLimit(per_client_capacity_);
  }
}

RequestMemoryBudget::~RequestMemoryBudget() {
  DCHECK_EQ(used(), 0) << "a reservation outlived its RequestMemoryBudget";
}

absl::StatusOr<RequestMemoryBudget::Reservation> RequestMemoryBudget::Reserve(
    int64_t bytes, absl::string_view client, bool count_refusal) {
  bytes = std::max<int64_t>(bytes, 0);
  // Nothing to count for a client: an empty request holds none of its share (and a
  // client entry exists only while it holds bytes).
  if (per_client_capacity_ == 0 || client.empty() || bytes == 0) {
    if (absl::Status status = TakeFromTotal(bytes, count_refusal); !status.ok()) {
      return status;
    }
    return Reservation(this, bytes, std::string());
  }
  int64_t held = 0;
  {
    absl::MutexLock lock(&clients_mu_);
    const auto it = clients_.find(client);
    held = it == clients_.end() ? 0 : it->second;
    if (bytes <= per_client_capacity_ - held) {
      if (absl::Status status = TakeFromTotal(bytes, count_refusal); !status.ok()) {
        return status;
      }
      if (it == clients_.end()) {
        clients_.emplace(client, bytes);
      } else {
        it->second += bytes;
      }
      return Reservation(this, bytes, std::string(client));
    }
  }
  if (metrics_ != nullptr && count_refusal) metrics_->RecordRequestMemoryClientRefusal();
  return ResourceExhaustedWithRetry(
      absl::StrCat("this client (", client, ") holds ", Size(held),
                   " of requests and responses in flight; ", Size(bytes),
                   " more would pass the limit of ", Size(per_client_capacity_),
                   " per client (--max_request_memory_per_client_mb); retry after its "
                   "earlier calls finish"),
      kRetryAfter);
}

absl::StatusOr<RequestMemoryBudget::Reservation> RequestMemoryBudget::ReserveBeside(
    const Reservation& held, int64_t bytes, absl::string_view client) {
  bytes = std::max<int64_t>(bytes, 0);
  if (capacity_ > 0)
    bytes = std::min(bytes, std::max<int64_t>(capacity_ - held.bytes(), 0));
  if (per_client_capacity_ > 0 && !client.empty()) {
    bytes = std::min(bytes, std::max<int64_t>(per_client_capacity_ - held.bytes(), 0));
  }
  return Reserve(bytes, client, /*count_refusal=*/true);
}

size_t RequestMemoryBudget::clients_holding() const {
  absl::MutexLock lock(&clients_mu_);
  return clients_.size();
}

int64_t RequestMemoryBudget::used_by(absl::string_view client) const {
  absl::MutexLock lock(&clients_mu_);
  const auto it = clients_.find(client);
  return it == clients_.end() ? 0 : it->second;
}

absl::Status RequestMemoryBudget::TakeFromTotal(int64_t bytes, bool count_refusal) {
  int64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (capacity_ > 0 && bytes > capacity_ - used) {
      if (metrics_ != nullptr && count_refusal) metrics_->RecordRequestMemoryRefusal();
      return ResourceExhaustedWithRetry(
          absl::StrCat("the server holds ", Size(used),
                       " of requests and responses in flight; ", Size(bytes),
                       " more would pass its limit of ", Size(capacity_),
                       " (--max_request_memory_mb); retry after earlier calls finish"),
          kRetryAfter);
    }
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  if (metrics_ != nullptr) metrics_->AddRequestMemory(bytes);
  return absl::OkStatus();
}

void RequestMemoryBudget::Return(int64_t bytes, const std::string& client) {
  used_.fetch_sub(bytes, std::memory_order_relaxed);
  if (metrics_ != nullptr) metrics_->AddRequestMemory(-bytes);
  if (client.empty()) return;
  absl::MutexLock lock(&clients_mu_);
  const auto it = clients_.find(client);
  if (it == clients_.end()) {
    DCHECK(false) << "a reservation of " << client << " that its budget does not know";
    return;
  }
  it->second -= bytes;
  DCHECK_GE(it->second, 0) << "more returned for " << client << " than it held";
  if (it->second <= 0) clients_.erase(it);
}

absl::Status ValidateRequestMemoryLimit(int64_t capacity_bytes, int64_t max_message_bytes,
                                        int64_t per_client_bytes) {
  if (capacity_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the request memory limit must not be negative, got ", capacity_bytes, " bytes"));
  }
  if (per_client_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the per-client request memory limit must not be negative, got ",
                     per_client_bytes, " bytes"));
  }
  if (per_client_bytes > 0 && per_client_bytes < max_message_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the per-client request memory limit (", Size(per_client_bytes),
                     ") is smaller than the largest message (", Size(max_message_bytes),
                     "): a request of that size could never be admitted"));
  }
  if (per_client_bytes > 0 && capacity_bytes > 0 && per_client_bytes > capacity_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the per-client request memory limit (", Size(per_client_bytes),
                     ") is above the request memory limit (", Size(capacity_bytes),
                     ") and would never apply"));
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
