#ifndef CLIPSERVE_SERVER_COMMON_IDLE_HEAP_TRIMMER_H_
#define CLIPSERVE_SERVER_COMMON_IDLE_HEAP_TRIMMER_H_

#include <cstdint>
#include <functional>
#include <optional>

#include "absl/time/time.h"

namespace clipserve {

// Gives the memory a burst of calls freed back to the system once the server has been
// quiet for a while. The allocator keeps freed memory for the process to reuse
// (tcmalloc gives it back only as the process allocates more), so after a burst (a
// flood of calls, thousands of reset streams) RSS stays near its peak: it looks like a
// leak to an operator and keeps a pod close to its memory limit. Releasing it walks
// the allocator's free lists under their locks, so it runs only when no call is in
// flight and none has started for `quiet_for`, and once per quiet spell. Not thread-safe:
// one caller ticks it (clip_server's main loop, once a second); it passes the time, from
// its own Clock.
class IdleHeapTrimmer {
 public:
  // Returns what it gave back in bytes, or -1 when that is unknown.
  using Trim = std::function<int64_t()>;

  // The default `trim` is tcmalloc's ReleaseFreeMemory() where tcmalloc is linked in,
  // else glibc's malloc_trim(0); it returns the RSS it saved.
  explicit IdleHeapTrimmer(absl::Duration quiet_for = absl::Seconds(10), Trim trim = {});

  IdleHeapTrimmer(const IdleHeapTrimmer&) = delete;
  IdleHeapTrimmer& operator=(const IdleHeapTrimmer&) = delete;

  // One look at the server at `now`: `calls_started`, a count that moves with each
  // call started (and whatever else frees memory: clip_server adds each time request
  // memory comes back), and `calls_in_flight`. Trims when both have stood still (and
  // none is in flight) for `quiet_for`, unless it already trimmed at this count: the
  // start-up (the model load frees its buffers) counts as a burst. Returns whether it
  // trimmed, and then sets `*released` to what the trim returned.
  bool Tick(absl::Time now, int64_t calls_started, int64_t calls_in_flight,
            int64_t* released);

 private:
  const absl::Duration quiet_for_;
  const Trim trim_;
  bool ticked_ = false;
  int64_t last_started_ = 0;
  absl::Time quiet_since_;
  // The count of calls started when it last trimmed; none before the first trim.
  std::optional<int64_t> trimmed_at_started_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_IDLE_HEAP_TRIMMER_H_
