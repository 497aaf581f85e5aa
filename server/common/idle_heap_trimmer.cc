#include "server/common/idle_heap_trimmer.h"

#include <unistd.h>

#include <fstream>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

// gperftools' tcmalloc, which clip_server links (CMakeLists.txt), gives freed memory
// back to the system only slowly, as the process goes on allocating. Weak: defined
// where tcmalloc is linked in, null elsewhere (the tests), where glibc's malloc_trim()
// does the same for glibc's arenas.
extern "C" void MallocExtension_ReleaseFreeMemory(void) __attribute__((weak));

namespace clipserve {
namespace {

// Resident bytes of this process (/proc/self/statm), -1 when unreadable.
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0;
  int64_t resident = 0;
  if (!(statm >> size >> resident)) return -1;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

int64_t ReleaseFreeMemory() {
  const int64_t before = ResidentBytes();
  if (MallocExtension_ReleaseFreeMemory != nullptr) {
    MallocExtension_ReleaseFreeMemory();
  } else {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
  }
  const int64_t after = ResidentBytes();
  return before >= 0 && after >= 0 ? before - after : -1;
}

}  // namespace

IdleHeapTrimmer::IdleHeapTrimmer(absl::Duration quiet_for, Trim trim)
    : quiet_for_(quiet_for), trim_(trim ? std::move(trim) : Trim(ReleaseFreeMemory)) {}

bool IdleHeapTrimmer::Tick(absl::Time now, int64_t calls_started, int64_t calls_in_flight,
                           int64_t* released) {
  if (!ticked_ || calls_started != last_started_ || calls_in_flight > 0 ||
      now < quiet_since_) {
    ticked_ = true;
    last_started_ = calls_started;
    quiet_since_ = now;
    return false;
  }
  if (now - quiet_since_ < quiet_for_) return false;
  if (trimmed_at_started_ == calls_started) return false;
  trimmed_at_started_ = calls_started;
  *released = trim_();
  return true;
}

}  // namespace clipserve
