#ifndef CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_
#define CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace clipserve {

class Metrics;

// A limit on the bytes of requests, and of the responses gRPC has yet to send, that
// the service holds at once, so that many concurrent large requests, or clients that
// do not read their responses, cannot take the process past its memory limit.
//
// gRPC caps each message (--max_message_bytes) but not how many calls are in flight,
// and with the callback API every call that arrives is held until the engine answers
// it. Each call reserves its request's size here as its handler starts (before the
// methods that take raw bytes parse them) and keeps the reservation until gRPC is
// done with the call; an EmbedStream item keeps one from its parse until its answer
// is written. A reservation that does not fit is refused at once with
// RESOURCE_EXHAUSTED and a google.rpc.RetryInfo, so the refused request is freed at
// once instead of waiting, and the client retries when earlier calls are done.
//
// What is counted is the request's serialized size as gRPC hands it over, and for a
// unary call also its response's (reserved before the model work, from the items
// asked for; see ClipService). The service holds up to about three times that while a
// call is in flight (the received message, the parsed one, and the engine's copy of
// its images or texts); docs/OPERATIONS.md sizes pods from it.
//
// The budget is shared by all clients, first come, first served: while small calls
// keep it nearly full a request of the largest size is refused (and retried) until a
// gap opens, so keep the limit several times --max_message_bytes (the default is four
// times). Without a per-client limit one client with many large calls in flight can
// take all of it; with one, each client (by its host address, PeerHost()) holds at
// most that much, and the others keep the rest.
//
// Thread-safe; never blocks for long: lock-free without a per-client limit, one short
// mutex hold per reservation and release with it.
class RequestMemoryBudget {
 public:
  // How long a refused client is asked to wait. Room comes back only as whole calls
  // finish, which under the load that fills the budget takes batches, not one: a
  // client retrying sooner would upload its request again only to be refused again.
  static constexpr absl::Duration kRetryAfter = absl::Seconds(1);

  // Bytes held by one call; returned to the budget on destruction. Move-only. A
  // default-constructed one holds nothing.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept;
    Reservation& operator=(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation();

    int64_t bytes() const { return bytes_; }

    // Returns the bytes now; the reservation then holds nothing. Idempotent.
    void Release();

   private:
    friend class RequestMemoryBudget;
    Reservation(RequestMemoryBudget* budget, int64_t bytes, std::string client)
        : budget_(budget), bytes_(bytes), client_(std::move(client)) {}

    RequestMemoryBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
    std::string client_;  // "" when not counted per client
  };

  // `capacity_bytes` 0 means no limit (sizes are still counted); it must not be
  // negative. `metrics` (optional, not owned, must outlive the budget) gets the bytes
  // held (clipserve_request_memory_bytes), the limit and each refusal.
  explicit RequestMemoryBudget(int64_t capacity_bytes, Metrics* metrics = nullptr)
      : RequestMemoryBudget(capacity_bytes, 0, metrics) {}
  // As above, and no client may hold more than `per_client_bytes` at once (0: no such
  // limit; not negative). See ValidateRequestMemoryLimit().
  RequestMemoryBudget(int64_t capacity_bytes, int64_t per_client_bytes, Metrics* metrics);
  // Every reservation must have been released.
  ~RequestMemoryBudget();
  RequestMemoryBudget(const RequestMemoryBudget&) = delete;
  RequestMemoryBudget& operator=(const RequestMemoryBudget&) = delete;

  // Reserves `bytes` (negative counts as 0). RESOURCE_EXHAUSTED with a RetryInfo of
  // kRetryAfter when they do not fit beside what is held; a request larger than the
  // whole capacity is refused the same way (the caller's limits should rule it out,
  // see ValidateRequestMemoryLimit()).
  //
  // `client` names the caller for the per-client limit: PeerHost() of the call's
  // peer. With a per-client limit, RESOURCE_EXHAUSTED (same RetryInfo) too when the
  // bytes do not fit beside what that client holds. "" is not limited per client.
  absl::StatusOr<Reservation> Reserve(int64_t bytes, absl::string_view client = "")
      ABSL_LOCKS_EXCLUDED(clients_mu_) {
    return Reserve(bytes, client, /*count_refusal=*/true);
  }
  // As Reserve(), but a refusal is not counted in the metrics: for a caller that may
  // wait and try again rather than refuse (an EmbedStream item waiting for its
  // stream's earlier items), and calls Reserve() when it does refuse.
  absl::StatusOr<Reservation> TryReserve(int64_t bytes, absl::string_view client = "")
      ABSL_LOCKS_EXCLUDED(clients_mu_) {
    return Reserve(bytes, client, /*count_refusal=*/false);
  }

  // Reserves `bytes` more for a call that already holds `held` (a reservation of this
  // budget, made for the same `client`), as Reserve() does, except that what would
  // take the call past the whole capacity or the per-client limit is left out: a call
  // is refused for what others hold, never for its own size alone. For a unary call's
  // response, which gRPC holds until its client has read it.
  absl::StatusOr<Reservation> ReserveBeside(const Reservation& held, int64_t bytes,
                                            absl::string_view client = "")
      ABSL_LOCKS_EXCLUDED(clients_mu_);

  int64_t capacity() const { return capacity_; }
  int64_t per_client_capacity() const { return per_client_capacity_; }
  // Bytes held now.
  int64_t used() const { return used_.load(std::memory_order_relaxed); }
  // Bytes `client` holds now (0 without a per-client limit).
  int64_t used_by(absl::string_view client) const ABSL_LOCKS_EXCLUDED(clients_mu_);
  // Clients that hold bytes now: the entries kept per client, none for a client once
  // it holds nothing.
  size_t clients_holding() const ABSL_LOCKS_EXCLUDED(clients_mu_);

 private:
  absl::StatusOr<Reservation> Reserve(int64_t bytes, absl::string_view client,
                                      bool count_refusal)
      ABSL_LOCKS_EXCLUDED(clients_mu_);
  // Adds `bytes` to the total unless that passes the capacity.
  absl::Status TakeFromTotal(int64_t bytes, bool count_refusal);
  void Return(int64_t bytes, const std::string& client) ABSL_LOCKS_EXCLUDED(clients_mu_);

  const int64_t capacity_;
  const int64_t per_client_capacity_;
  Metrics* const metrics_;
  std::atomic<int64_t> used_{0};
  mutable absl::Mutex clients_mu_;
  // Bytes held by each client holding any; an entry goes when its client holds none,
  // so the map is as large as the clients with calls in flight.
  absl::flat_hash_map<std::string, int64_t> clients_ ABSL_GUARDED_BY(clients_mu_);
};

// INVALID_ARGUMENT when `capacity_bytes` or `per_client_bytes` is negative, or one is
// positive but smaller than `max_message_bytes` (a request of the largest size gRPC
// accepts could then never be admitted), or the per-client limit is above a total
// limit it could then never reach.
absl::Status ValidateRequestMemoryLimit(int64_t capacity_bytes, int64_t max_message_bytes,
                                        int64_t per_client_bytes = 0);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_
