#ifndef CLIPSERVE_CLIENT_ERROR_NAMING_H_
#define CLIPSERVE_CLIENT_ERROR_NAMING_H_

// How clip_client's errors name what they are about: a prefix before the message, and
// the file or text of a bulk job that the server's BadRequest details point at. Every
// function keeps the status's code and payloads (details, request id).

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// `status` with `message` instead of its own.
absl::Status WithMessage(const absl::Status& status, absl::string_view message);

// `status` with "prefix: " before its message; OK and an empty prefix as they are.
absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix);

// The same, unless the message starts with "prefix: " already.
absl::Status Prefixed(const absl::Status& status, absl::string_view prefix);

// A text as an error message shows it: `text "..."`, cut to 57 bytes and "..." past
// 60 (at a UTF-8 character's boundary).
std::string QuoteText(const std::string& text);

// An error of a call that sent names[offset..] as the items of `list` ("images",
// "texts"), with the item the server's BadRequest points at ("images[2]") named first:
// its path, or its text quoted when `texts`. With an offset (one request of several)
// the message's "list[i]" becomes "list[offset + i]", where the item stands in the
// whole job. `status` as it is when no item is pointed at or the index is past the
// names sent.
absl::Status NameItem(const absl::Status& status, absl::string_view list,
                      const std::vector<std::string>& names, size_t offset, bool texts);

// What an UNAVAILABLE that ended a job of `total` `items` ("images", "texts") says
// before its message: "cannot reach the server at <target>" when nothing had been
// answered, else "lost the server at <target> after N of <total> <items>" (the server
// was reached, and answered N: a connection cut or a restart, not a wrong address).
std::string UnavailablePrefix(absl::string_view target, size_t answered, size_t total,
                              absl::string_view items);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_ERROR_NAMING_H_
