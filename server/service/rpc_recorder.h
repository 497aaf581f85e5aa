#ifndef CLIPSERVE_SERVER_SERVICE_RPC_RECORDER_H_
#define CLIPSERVE_SERVER_SERVICE_RPC_RECORDER_H_

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/common/line_rate_limiter.h"

namespace clipserve {

class Metrics;

struct RpcRecorderOptions {
  // Where calls are counted and timed; not owned, must outlive the recorder. nullptr:
  // nothing is counted (calls are still logged).
  Metrics* metrics = nullptr;
  // A successful unary call that took at least this long is logged as slow (one
  // WARNING line). Zero or negative: slow calls are not logged. Default 1 s: well above a
  // batch of a ViT-B model on a CPU, so a slow line means queueing or an overload.
  absl::Duration slow_request_threshold = absl::Seconds(1);
  // Longest error message copied into a log line, in bytes; longer ones are cut.
  // Default 512: enough for any message of ours, bounded for a hostile one.
  size_t max_logged_message_bytes = 512;
  // WARNING lines (failed calls that are not server faults, and slow calls) logged in
  // one second of the clock at most; the next line after a full second then carries
  // suppressed=N, the lines left out since the last one. A client sending invalid
  // requests in a loop would otherwise write a line per call. ERROR lines (server
  // faults) are never left out. 0: no limit. Every call is counted in the metrics
  // either way.
  int max_warning_lines_per_second = 20;

  // --- Test-only ---

  // Time source for durations; not owned. nullptr means RealClock::Get().
  Clock* clock = nullptr;
};

// The one place where ClipService records how each RPC ended: the request counter by
// RPC and status code, the duration histogram, the in-flight gauge, and one log line
// per failed call (RPC, code, message, peer, request id, duration) and per slow
// successful call, at a bounded rate (see max_warning_lines_per_second).
//
// Thread-safe; Start() and End() never block for long (End() of a call that logs
// takes one mutex for the rate limit). The recorder must outlive
// every Call it started.
class RpcRecorder {
 public:
  // One RPC being recorded; created by Start(), ended by End(), movable until then.
  class Call {
   public:
    Call() = default;

   private:
    friend class RpcRecorder;
    // When Cancelled() saw gRPC cancel the call, in nanoseconds since the Unix epoch
    // on the recorder's clock; INT64_MAX: not cancelled. Atomic: a reactor's
    // OnCancel() may run on one thread while End() runs on another.
    struct CancelTime {
      CancelTime() = default;
      CancelTime(CancelTime&& other) noexcept
          : ns(other.ns.load(std::memory_order_relaxed)) {}
      CancelTime& operator=(CancelTime&& other) noexcept {
        ns.store(other.ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
        return *this;
      }
      std::atomic<int64_t> ns{std::numeric_limits<int64_t>::max()};
    };
    std::string rpc_;
    std::string peer_;
    std::string request_id_;
    absl::Time start_;
    bool stream_ = false;
    bool started_ = false;
    CancelTime cancelled_;
  };

  explicit RpcRecorder(const RpcRecorderOptions& options);
  RpcRecorder(const RpcRecorder&) = delete;
  RpcRecorder& operator=(const RpcRecorder&) = delete;

  // Whether a call is a long-lived stream, whose duration the client decides: it is
  // timed and counted like any call, but never logged as slow.
  enum class Kind { kUnary, kStream };

  // A call of `rpc` (the method name, "EmbedText") from `peer` (grpc's peer(),
  // "ipv4:10.0.0.7:51234") has started: counted in flight from now. Its log line, if
  // any, names `request_id` (see request_id.h) unless that is empty.
  Call Start(absl::string_view rpc, std::string peer, Kind kind = Kind::kUnary,
             std::string request_id = "") const;

  // `call` ended with `status` (the code and message its client receives). Call it
  // once per Start(), just before the RPC's Finish(), so that a client reading the
  // metrics after its answer finds its call counted; a stream, whose client may cancel
  // it after its Finish(), when gRPC is done with it. A second End() of the same call
  // does nothing. With Logging::kQuiet a failure is counted but not logged: for
  // refusals whose caller logs them itself at a bounded rate (a bad bearer token).
  enum class Logging { kDefault, kQuiet };
  void End(Call& call, const absl::Status& status,
           Logging logging = Logging::kDefault) const;

  // An item of the stream `call` failed with `status`, answered in the stream, which
  // goes on: counted in clipserve_stream_item_failures_total{rpc,code} and logged as a
  // failed call is ("stream item failed", with the item's `id`), at the same bounded
  // rate. A stream's own code says nothing of its items: without this, a bulk job whose
  // every image fails would show only an OK stream.
  void ItemFailed(const Call& call, absl::string_view id,
                  const absl::Status& status) const;

  // gRPC cancelled `call` now (its reactor's OnCancel()). Thread-safe against End()
  // of the same call; the first time counts. See ShutdownBegins().
  void Cancelled(Call& call) const;

  // The server's shutdown begins now, with `grace` for the calls in flight: gRPC
  // cancels those still running when it ends, and their clients see UNAVAILABLE, not
  // CANCELLED. A call that ends CANCELLED is recorded as UNAVAILABLE, so that a
  // rollout does not swell the CANCELLED count, when gRPC cancelled it once the grace
  // was over (Cancelled()), or, where Cancelled() was not called, when it ends then: a
  // client's cancel just before the cutoff stays CANCELLED though the call ends after.
  // (gRPC 1.51 tells a handler no reason for a cancel: calls that outlive
  // --max_connection_age_grace_s, or whose connection the keepalive found dead, still
  // count as CANCELLED.) Thread-safe; the earliest end of a grace counts.
  void ShutdownBegins(absl::Duration grace) const;

 private:
  const RpcRecorderOptions options_;
  Clock* const clock_;
  // Bounds the WARNING lines (options_.max_warning_lines_per_second).
  mutable LineRateLimiter warning_lines_;
  // When ShutdownBegins()'s grace ends, in nanoseconds since the Unix epoch on
  // clock_; INT64_MAX: no shutdown has begun.
  mutable std::atomic<int64_t> shutdown_cutoff_ns_{std::numeric_limits<int64_t>::max()};

  // Logs a failure of `call` (`message`: "request failed", "stream item failed") with
  // `status`, the item's id when not empty, and `elapsed`; ERROR for a server fault,
  // else WARNING at the bounded rate.
  void LogFailure(const Call& call, absl::string_view message, const absl::Status& status,
                  absl::string_view item_id, absl::Duration elapsed) const;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_RPC_RECORDER_H_
