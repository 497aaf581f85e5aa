#ifndef CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_
#define CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace clipserve {

class Metrics;

// A limit on the bytes of requests the service holds at once, so that many concurrent
// large requests cannot take the process past its memory limit.
//
// gRPC caps each message (--max_message_bytes) but not how many calls are in flight,
// and with the callback API every call that arrives is held until the engine answers
// it. Each call reserves its request's size here as its handler starts (before the
// methods that take raw bytes parse them) and keeps the reservation until gRPC is
// done with the call; an EmbedStream item keeps one from its parse until the engine
// has answered it. A reservation that does not fit is refused at once with
// RESOURCE_EXHAUSTED and a google.rpc.RetryInfo, so the refused request is freed at
// once instead of waiting, and the client retries when earlier calls are done.
//
// What is counted is the request's serialized size as gRPC hands it over (after any
// decompression; EmbedImage, which gRPC parses itself, counts its parsed message's
// size, the same number). The service holds up to about three times that while a
// call is in flight (the received message, the parsed one, and the engine's copy of
// its images or texts); docs/OPERATIONS.md sizes pods from it.
//
// The budget is shared by all clients, first come, first served: one client with
// many large calls in flight can take it all, and while small calls keep it nearly
// full a request of the largest size is refused (and retried) until a gap opens.
// Keep the limit several times --max_message_bytes (the default is four times).
//
// Thread-safe and lock-free; never blocks.
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
    Reservation(RequestMemoryBudget* budget, int64_t bytes)
        : budget_(budget), bytes_(bytes) {}

    RequestMemoryBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  // `capacity_bytes` 0 means no limit (sizes are still counted); it must not be
  // negative. `metrics` (optional, not owned, must outlive the budget) gets the bytes
  // held (clipserve_request_memory_bytes), the limit and each refusal.
  explicit RequestMemoryBudget(int64_t capacity_bytes, Metrics* metrics = nullptr);
  // Every reservation must have been released.
  ~RequestMemoryBudget();
  RequestMemoryBudget(const RequestMemoryBudget&) = delete;
  RequestMemoryBudget& operator=(const RequestMemoryBudget&) = delete;

  // Reserves `bytes` (negative counts as 0). RESOURCE_EXHAUSTED with a RetryInfo of
  // kRetryAfter when they do not fit beside what is held; a request larger than the
  // whole capacity is refused the same way (the caller's limits should rule it out,
  // see ValidateRequestMemoryLimit()).
  absl::StatusOr<Reservation> Reserve(int64_t bytes);

  int64_t capacity() const { return capacity_; }
  // Bytes held now.
  int64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  void Return(int64_t bytes);

  const int64_t capacity_;
  Metrics* const metrics_;
  std::atomic<int64_t> used_{0};
};

// INVALID_ARGUMENT when `capacity_bytes` is negative, or positive but smaller than
// `max_message_bytes`: a request of the largest size gRPC accepts could then never be
// admitted.
absl::Status ValidateRequestMemoryLimit(int64_t capacity_bytes,
                                        int64_t max_message_bytes);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_REQUEST_MEMORY_BUDGET_H_
