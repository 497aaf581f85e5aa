#ifndef CLIPSERVE_CLIENT_PROGRESS_BAR_H_
#define CLIPSERVE_CLIENT_PROGRESS_BAR_H_

#include <cstddef>
#include <cstdio>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace clipserve {

// "1h02m", "3m07s", "42s", "0.4s": a duration in at most two units.
std::string ShortDuration(absl::Duration d);

// One progress line, without "\r" or newline:
//   "[##########..........]  50%  512/1024 images  85.3 images/s  ETA 6s"
// `fraction` (clamped to [0, 1]) fills the bar and gives the ETA; `done` and `total`
// are printed as counts when total > 0; the rate is done / elapsed.
std::string FormatProgressLine(double fraction, size_t done, size_t total,
                               absl::string_view unit, absl::Duration elapsed,
                               int bar_width = 24);

// Whether stderr is a terminal (isatty), i.e. whether a progress bar would be seen.
bool StderrIsTerminal();

// A progress line redrawn in place on a stream (stderr), at most 10 times a second.
// Disabled bars (stderr not a terminal, so that logs and pipes stay clean) do nothing.
// Thread-safe: Update() may be called from any thread.
class ProgressBar {
 public:
  // `total` items of `unit` ("images"); 0 when unknown.
  ProgressBar(bool enabled, size_t total, std::string unit, FILE* out = stderr);
  ~ProgressBar();  // Finish()es

  // Records progress. `fraction` < 0 means done / total.
  void Update(size_t done, double fraction = -1);

  // Draws the final state and ends the line, or erases it when `erase`. Idempotent.
  void Finish(bool erase = false);

 private:
  void DrawLocked(bool final) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const bool enabled_;
  const size_t total_;
  const std::string unit_;
  FILE* const out_;
  const absl::Time start_;
  absl::Mutex mu_;
  size_t done_ ABSL_GUARDED_BY(mu_) = 0;
  double fraction_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_draw_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  size_t last_width_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_PROGRESS_BAR_H_
