#include "server/service/rpc_recorder.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/logging/structured_log.h"
#include "server/metrics/metrics.h"

namespace clipserve {
namespace {

// Failures that mean the server is broken (ERROR) rather than a request it could not
// or would not serve (WARNING: bad input, overload, cancellation, deadlines).
bool IsServerFault(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kDataLoss:
      return true;
    default:
      return false;
  }
}

}  // namespace

RpcRecorder::RpcRecorder(const RpcRecorderOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : RealClock::Get()),
      warning_lines_(options.max_warning_lines_per_second) {}

RpcRecorder::Call RpcRecorder::Start(absl::string_view rpc, std::string peer, Kind kind,
                                     std::string request_id) const {
  Call call;
  call.stream_ = kind == Kind::kStream;
  call.rpc_ = std::string(rpc);
  call.peer_ = std::move(peer);
  call.request_id_ = std::move(request_id);
  call.start_ = clock_->Now();
  call.started_ = true;
  if (options_.metrics != nullptr) options_.metrics->RequestStarted();
  return call;
}

void RpcRecorder::ShutdownBegins(absl::Duration grace) const {
  const int64_t ns = absl::ToUnixNanos(clock_->Now() + grace);
  int64_t current = shutdown_cutoff_ns_.load(std::memory_order_relaxed);
  while (ns < current && !shutdown_cutoff_ns_.compare_exchange_weak(
                             current, ns, std::memory_order_relaxed)) {
  }
}

void RpcRecorder::Cancelled(Call& call) const {
  int64_t never = std::numeric_limits<int64_t>::max();
  call.cancelled_.ns.compare_exchange_strong(never, absl::ToUnixNanos(clock_->Now()),
                                             std::memory_order_relaxed);
}

void RpcRecorder::End(Call& call, const absl::Status& ended, Logging logging) const {
  if (!call.started_) return;
  call.started_ = false;
  const absl::Time now = clock_->Now();
  // Never negative: a Clock never goes back (RealClock is monotonic).
  const absl::Duration elapsed = now - call.start_;
  const int64_t cancelled_ns = call.cancelled_.ns.load(std::memory_order_relaxed);
  const int64_t cancel_ns = cancelled_ns != std::numeric_limits<int64_t>::max()
                                ? cancelled_ns
                                : absl::ToUnixNanos(now);
  const absl::Status status =
      ended.code() == absl::StatusCode::kCancelled &&
              cancel_ns >= shutdown_cutoff_ns_.load(std::memory_order_relaxed)
          ? absl::UnavailableError(absl::StrCat(
                "cancelled by the server's shutdown at the end of its grace (",
                ended.message(), ")"))
          : ended;
  if (options_.metrics != nullptr) {
    options_.metrics->RequestFinished(call.rpc_, status.code(), elapsed);
  }
  const bool slow = !call.stream_ &&
                    options_.slow_request_threshold > absl::ZeroDuration() &&
                    elapsed >= options_.slow_request_threshold;
  if (status.ok() && !slow) return;
  if (!status.ok() && logging == Logging::kQuiet) return;

  if (!status.ok()) {
    LogFailure(call, "request failed", status, "", elapsed);
    return;
  }
  int64_t suppressed = 0;
  if (!warning_lines_.Admit(clock_->Now(), &suppressed)) return;
  LogFields fields;
  fields.Add("rpc", call.rpc_);
  fields.Add("code", StatusCodeLabel(status.code()));
  fields.Add("peer", call.peer_);
  if (!call.request_id_.empty()) fields.Add("request_id", call.request_id_);
  fields.Add("duration_ms", absl::ToDoubleMilliseconds(elapsed));
  if (suppressed > 0) fields.Add("suppressed", suppressed);
  CLIPSERVE_LOG_FIELDS(WARNING, "slow request", fields);
}

void RpcRecorder::ItemFailed(const Call& call, absl::string_view id,
                             const absl::Status& status) const {
  if (status.ok()) return;
  if (options_.metrics != nullptr) {
    options_.metrics->StreamItemFailed(call.rpc_, status.code());
  }
  LogFailure(call, "stream item failed", status, id, clock_->Now() - call.start_);
}

void RpcRecorder::LogFailure(const Call& call, absl::string_view message,
                             const absl::Status& status, absl::string_view item_id,
                             absl::Duration elapsed) const {
  const bool error = IsServerFault(status.code());
  int64_t suppressed = 0;
  if (!error && !warning_lines_.Admit(clock_->Now(), &suppressed)) return;
  const size_t limit = options_.max_logged_message_bytes;
  LogFields fields;
  fields.Add("rpc", call.rpc_);
  fields.Add("code", StatusCodeLabel(status.code()));
  fields.Add("error", status.message().substr(0, limit));
  fields.Add("peer", call.peer_);
  if (!call.request_id_.empty()) fields.Add("request_id", call.request_id_);
  if (!item_id.empty()) fields.Add("item_id", item_id.substr(0, limit));
  fields.Add("duration_ms", absl::ToDoubleMilliseconds(elapsed));
  if (suppressed > 0) fields.Add("suppressed", suppressed);
  if (error) {
    CLIPSERVE_LOG_FIELDS(ERROR, message, fields);
  } else {
    CLIPSERVE_LOG_FIELDS(WARNING, message, fields);
  }
}

}  // namespace clipserve
