#include "server/model/json_excerpt.h"

#include <cstddef>

#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

constexpr size_t kMaxStringBytes = 64;
constexpr size_t kMaxMembers = 8;
constexpr int kMaxDepth = 3;

void Append(const nlohmann::json& value, int depth, std::string* out) {
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    if (s.size() <= kMaxStringBytes) {
      // Replaces bytes that are not UTF-8 instead of throwing.
      out->append(nlohmann::json(s).dump(-1, ' ', false,
                                         nlohmann::json::error_handler_t::replace));
    } else {
      out->append(nlohmann::json(s.substr(0, kMaxStringBytes))
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      absl::StrAppend(out, "... (", s.size(), " bytes)");
    }
    return;
  }
  if (!value.is_structured()) {  // a number, boolean, null or binary: flat
    out->append(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  const bool object = value.is_object();
  out->push_back(object ? '{' : '[');
  if (!value.empty() && depth >= kMaxDepth) {
    out->append("...");
  } else {
    size_t shown = 0;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (shown > 0) out->append(", ");
      if (shown == kMaxMembers) {
        absl::StrAppend(out, "... (", value.size(), " in all)");
        break;
      }
      if (object) {
        Append(nlohmann::json(it.key()), depth, out);
        out->append(": ");
      }
      Append(it.value(), depth + 1, out);
      ++shown;
    }
  }
  out->push_back(object ? '}' : ']');
}

}  // namespace

std::string JsonExcerpt(const nlohmann::json& value) {
  std::string out;
  Append(value, 0, &out);
  return out;
}

}  // namespace clipserve
