#include "client/error_naming.h"

#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/status_details.h"
#include "server/common/utf8.h"

namespace clipserve {

absl::Status WithMessage(const absl::Status& status, absl::string_view message) {
  absl::Status out(status.code(), message);
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    out.SetPayload(url, payload);
  });
  return out;
}

absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  if (status.ok() || prefix.empty()) return status;
  return WithMessage(status, absl::StrCat(prefix, ": ", status.message()));
}

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (absl::StartsWith(status.message(), absl::StrCat(prefix, ": "))) return status;
  return WithPrefix(status, prefix);
}

std::string QuoteText(const std::string& text) {
  std::string shown = text.size() > 60 ? absl::StrCat(Utf8Prefix(text, 57), "...") : text;
  return absl::StrCat("text \"", shown, "\"");
}

absl::Status NameItem(const absl::Status& status, absl::string_view list,
                      const std::vector<std::string>& names, size_t offset, bool texts) {
  std::optional<size_t> index = BadRequestItemIndex(status, list);
  // Compared without adding: the index comes from the server, and may be huge.
  if (!index.has_value() || offset >= names.size() || *index >= names.size() - offset) {
    return status;
  }
  const std::string& name = names[offset + *index];
  absl::Status named = status;
  if (offset > 0) {
    // The server counts the items of its request, one of several: the message says
    // where the item stands in the whole list.
    const std::string in_request = absl::StrCat(list, "[", *index, "]");
    std::string message(status.message());
    if (const size_t at = message.find(in_request); at != std::string::npos) {
      message.replace(at, in_request.size(),
                      absl::StrCat(list, "[", offset + *index, "]"));
      named = WithMessage(status, message);
    }
  }
  return Prefixed(named, texts ? QuoteText(name) : name);
}

std::string UnavailablePrefix(absl::string_view target, size_t answered, size_t total,
                              absl::string_view items) {
  if (answered == 0) return absl::StrCat("cannot reach the server at ", target);
  return absl::StrCat("lost the server at ", target, " after ", answered, " of ", total,
                      " ", items);
}

}  // namespace clipserve
