#include "server/model/blas_kernel.h"

#include <dlfcn.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace clipserve {
namespace {

// How wide a kernel family's vectors are: 0 = older than AVX2, 2 = AVX2, 3 = AVX-512.
// Names as OpenBLAS 0.3.21 reports them (lower-cased); -1 for names not listed.
int Tier(absl::string_view core) {
  const std::string name = absl::AsciiStrToLower(core);
  static const auto* const kPreAvx2 = new absl::flat_hash_set<std::string>{
      "unknown",   "katmai",      "coppermine", "northwood",  "prescott",
      "banias",    "atom",        "core2",      "penryn",     "dunnington",
      "nehalem",   "sandybridge", "athlon",     "opteron",    "opteron_sse3",
      "barcelona", "bobcat",      "bulldozer",  "piledriver", "steamroller",
      "excavator", "nano"};
  static const auto* const kAvx2 = new absl::flat_hash_set<std::string>{"haswell", "zen"};
  static const auto* const kAvx512 =
      new absl::flat_hash_set<std::string>{"skylakex", "cooperlake", "sapphirerapids"};
  if (kPreAvx2->contains(name)) return 0;
  if (kAvx2->contains(name)) return 2;
  if (kAvx512->contains(name)) return 3;
  return -1;
}

absl::flat_hash_set<absl::string_view> CpuFlags(absl::string_view cpuinfo) {
  absl::flat_hash_set<absl::string_view> flags;
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    if (!absl::StartsWith(line, "flags")) continue;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    for (absl::string_view flag :
         absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipEmpty())) {
      flags.insert(flag);
    }
    break;  // every core lists the same flags
  }
  return flags;
}

}  // namespace

std::string OpenBlasCoreName() {
  using CoreNameFn = char* (*)();
  auto fn = reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (fn == nullptr) return "";
  const char* name = fn();
  return name == nullptr ? "" : std::string(name);
}

std::optional<std::string> BetterOpenBlasCore(absl::string_view current,
                                              absl::string_view cpuinfo) {
  const int tier = Tier(current);
  if (tier < 0) return std::nullopt;
  const absl::flat_hash_set<absl::string_view> flags = CpuFlags(cpuinfo);
  auto has = [&flags](absl::string_view flag) { return flags.contains(flag); };
  if (has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq")) {
    if (tier >= 3) return std::nullopt;
    // Not "Cooperlake" even with AVX512-BF16: OpenBLAS 0.3.21 does not accept that
    // name in OPENBLAS_CORETYPE, and its fp32 kernels are SkylakeX's anyway.
    return std::string("SkylakeX");
  }
  if (has("avx2") && has("fma")) {
    if (tier >= 2) return std::nullopt;
    return std::string("Haswell");
  }
  return std::nullopt;
}

}  // namespace clipserve
