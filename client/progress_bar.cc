#include "client/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace clipserve {

std::string ShortDuration(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  if (d < absl::Seconds(10)) return absl::StrFormat("%.1fs", absl::ToDoubleSeconds(d));
  const int64_t s = absl::ToInt64Seconds(d);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatProgressLine(double fraction, size_t done, size_t total,
                               absl::string_view unit, absl::Duration elapsed,
                               int bar_width) {
  if (!(fraction >= 0)) fraction = 0;
  fraction = std::min(fraction, 1.0);
  const int filled = static_cast<int>(std::floor(fraction * bar_width));
  std::string line =
      absl::StrCat("[", std::string(static_cast<size_t>(filled), '#'),
                   std::string(static_cast<size_t>(bar_width - filled), '.'), "] ",
                   absl::StrFormat("%3d%%", static_cast<int>(fraction * 100)));
  if (total > 0) {
    absl::StrAppend(&line, "  ", done, "/", total, " ", unit);
  } else {
    absl::StrAppend(&line, "  ", done, " ", unit);
  }
  const double seconds = absl::ToDoubleSeconds(elapsed);
  if (seconds > 0) {
    absl::StrAppend(&line, absl::StrFormat("  %.1f %s/s", done / seconds, unit));
  }
  if (fraction >= 1) {
    absl::StrAppend(&line, "  in ", ShortDuration(elapsed));
  } else if (fraction > 0 && seconds > 0) {
    absl::StrAppend(&line, "  ETA ",
                    ShortDuration(elapsed * ((1 - fraction) / fraction)));
  }
  return line;
}

bool StderrIsTerminal() { return isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(bool enabled, size_t total, std::string unit, FILE* out)
    : enabled_(enabled),
      total_(total),
      unit_(std::move(unit)),
      out_(out),
      start_(absl::Now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(size_t done, double fraction) {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  done_ = done;
  fraction_ =
      fraction >= 0 ? fraction : (total_ > 0 ? static_cast<double>(done) / total_ : 0.0);
  const absl::Time now = absl::Now();
  if (now - last_draw_ < absl::Milliseconds(100)) return;
  last_draw_ = now;
  DrawLocked(false);
}

void ProgressBar::Finish(bool erase) {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  finished_ = true;
  if (erase) {
    std::fprintf(out_, "\r%s\r", std::string(last_width_, ' ').c_str());
  } else {
    DrawLocked(true);
    std::fputc('\n', out_);
  }
  std::fflush(out_);
}

void ProgressBar::DrawLocked(bool final) {
  const std::string line =
      FormatProgressLine(final && total_ > 0 && done_ >= total_ ? 1.0 : fraction_, done_,
                         total_, unit_, absl::Now() - start_);
  const size_t pad = last_width_ > line.size() ? last_width_ - line.size() : 0;
  std::fprintf(out_, "\r%s%s", line.c_str(), std::string(pad, ' ').c_str());
  std::fflush(out_);
  last_width_ = line.size();
}

}  // namespace clipserve
