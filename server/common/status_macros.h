#ifndef CLIPSERVE_SERVER_COMMON_STATUS_MACROS_H_
#define CLIPSERVE_SERVER_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Early-return helpers for absl::Status / absl::StatusOr, in the style of the
// Abseil-internal macros that are not part of Abseil's public API.

// Evaluates `expr` (an absl::Status); returns it from the enclosing function unless OK.
#define CLIPSERVE_RETURN_IF_ERROR(expr)                    \
  do {                                                     \
    ::absl::Status clipserve_status_ = (expr);             \
    if (!clipserve_status_.ok()) return clipserve_status_; \
  } while (false)

#define CLIPSERVE_STATUS_CONCAT_INNER_(a, b) a##b
#define CLIPSERVE_STATUS_CONCAT_(a, b) CLIPSERVE_STATUS_CONCAT_INNER_(a, b)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise
// moves the value into `lhs`, which may be a declaration (`auto x`) or an lvalue.
#define CLIPSERVE_ASSIGN_OR_RETURN(lhs, rexpr) \
  CLIPSERVE_ASSIGN_OR_RETURN_IMPL_(            \
      CLIPSERVE_STATUS_CONCAT_(clipserve_statusor_, __LINE__), lhs, rexpr)

#define CLIPSERVE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                     \
  if (!statusor.ok()) return std::move(statusor).status();     \
  lhs = *std::move(statusor)

#endif  // CLIPSERVE_SERVER_COMMON_STATUS_MACROS_H_
