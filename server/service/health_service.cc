#include "server/service/health_service.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "glog/logging.h"
#include "server/service/grpc_status.h"
#include "server/service/request_parsing.h"

namespace clipserve {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

namespace {

// The request of a Check or Watch: its one field, and up to 16 unknown ones (see
// CheckEntryCounts()).
absl::StatusOr<HealthCheckRequest> ParseHealthRequest(const grpc::ByteBuffer& bytes) {
  HealthCheckRequest request;
  absl::Status parsed = ParseRequest(bytes, &request, /*max_items=*/1, KeepFieldName);
  if (!parsed.ok()) return parsed;
  return request;
}

// A Watch refused before it started: finishes at once.
class RefusedWatch final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RefusedWatch(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

// One Watch call: writes the latest status whenever it differs from the last one
// written, one write at a time, and ends after Shutdown()'s NOT_SERVING is written.
class HealthService::WatchReactor final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
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
      HealthCheckResponse response;
      response.set_status(*written_);
      if (absl::Status serialized = SerializeResponse(response, &response_);
          !serialized.ok()) {
        FinishLocked(ToGrpcStatus(serialized));
        return;
      }
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
  grpc::ByteBuffer response_ ABSL_GUARDED_BY(mu_);  // the write in flight

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
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<HealthCheckRequest> parsed = ParseHealthRequest(*request);
  if (!parsed.ok()) {
    reactor->Finish(ToGrpcStatus(parsed.status()));
    return reactor;
  }
  Status status;
  {
    absl::MutexLock lock(&mu_);
    status = StatusOfLocked(parsed->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
    return reactor;
  }
  HealthCheckResponse answer;
  answer.set_status(status);
  reactor->Finish(ToGrpcStatus(SerializeResponse(answer, response)));
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/, const grpc::ByteBuffer* request) {
  absl::StatusOr<HealthCheckRequest> parsed = ParseHealthRequest(*request);
  if (!parsed.ok()) return new RefusedWatch(parsed.status());
  auto* watch = new WatchReactor(this, parsed->service());
  absl::MutexLock lock(&mu_);
  watches_.insert(watch);
  watch->Update(StatusOfLocked(watch->service_), /*last=*/shut_down_);
  return watch;
}

}  // namespace clipserve
