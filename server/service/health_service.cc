#include "server/service/health_service.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "glog/logging.h"

namespace clipserve {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch call: writes the latest status whenever it differs from the last one
// written, one write at a time, and ends after Shutdown()'s NOT_SERVING is written.
class HealthService::WatchReactor final
    : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  WatchReactor(HealthService* owner, std::string service)
      : owner_(owner), service_(std::move(service)) {}

  // The status to stream now; `last` ends the call once it is written.
  void Update(Status status, bool last) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    wanted_ = status;
    finish_after_write_ = finish_after_write_ || last;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {  // the call is over (cancelled, or its connection went away)
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the watch ended"));
      return;
    }
    MaybeWriteLocked();
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    // Even with a write in flight: gRPC may report it done with ok = true after this,
    // and nothing would finish the call then (its OnDone() never coming, the service's
    // destructor would wait for it for ever).
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    owner_->Forget(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (wanted_.has_value() && wanted_ != written_) {
      written_ = *wanted_;
      response_.set_status(*written_);
      writing_ = true;
      StartWrite(&response_);
      return;
    }
    if (finish_after_write_) FinishLocked(grpc::Status::OK);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  HealthService* const owner_;
  const std::string service_;
  absl::Mutex mu_;
  std::optional<Status> wanted_ ABSL_GUARDED_BY(mu_);
  std::optional<Status> written_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_after_write_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);

  friend class HealthService;
};

HealthService::HealthService(std::vector<std::string> services)
    : services_(std::move(services)) {}

HealthService::~HealthService() {
  // gRPC deletes each reactor after its OnDone(), which the server's shutdown waits
  // for; a Watch still registered here would call Forget() on a dead service.
  absl::MutexLock lock(&mu_);
  while (!watches_.empty()) no_watches_.Wait(&mu_);
}

HealthService::Status HealthService::StatusOfLocked(const std::string& service) const {
  if (std::find(services_.begin(), services_.end(), service) == services_.end()) {
    return HealthCheckResponse::SERVICE_UNKNOWN;
  }
  return serving_ && !shut_down_ ? HealthCheckResponse::SERVING
                                 : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_ || serving_ == serving) return;
  serving_ = serving;
  for (WatchReactor* watch : watches_) {
    watch->Update(StatusOfLocked(watch->service_), /*last=*/false);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (WatchReactor* watch : watches_) {
    watch->Update(StatusOfLocked(watch->service_), /*last=*/true);
  }
}

int HealthService::NumWatches() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(watches_.size());
}

void HealthService::Forget(WatchReactor* watch) {
  absl::MutexLock lock(&mu_);
  watches_.erase(watch);
  if (watches_.empty()) no_watches_.SignalAll();
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Status status;
  {
    absl::MutexLock lock(&mu_);
    status = StatusOfLocked(request->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
  } else {
    response->set_status(status);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/, const HealthCheckRequest* request) {
  auto* watch = new WatchReactor(this, request->service());
  absl::MutexLock lock(&mu_);
  watches_.insert(watch);
  watch->Update(StatusOfLocked(watch->service_), /*last=*/shut_down_);
  return watch;
}

}  // namespace clipserve
