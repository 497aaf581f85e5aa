#ifndef CLIPSERVE_SERVER_MODEL_JSON_EXCERPT_H_
#define CLIPSERVE_SERVER_MODEL_JSON_EXCERPT_H_

#include <string>

#include "nlohmann/json.hpp"

namespace clipserve {

// `value` as JSON for an error message, bounded: strings cut to 64 bytes, at most 8
// members of an array or object and 3 levels of nesting, "..." for the rest.
// nlohmann's dump() would print it in full, recursing once per level: a config or
// safetensors header nested a million deep would overflow the stack.
std::string JsonExcerpt(const nlohmann::json& value);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_JSON_EXCERPT_H_
