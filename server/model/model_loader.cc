#include "server/model/model_loader.h"

#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "server/common/status_macros.h"

namespace clipserve {

namespace {

// True when a "flags" line of `cpuinfo` lists one of `wanted`.
bool CpuInfoHasAnyFlag(absl::string_view cpuinfo,
                       std::initializer_list<absl::string_view> wanted) {
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    if (!absl::StartsWith(line, "flags")) continue;
    for (absl::string_view flag : absl::StrSplit(line, absl::ByAnyChar(" \t"))) {
      for (absl::string_view w : wanted) {
        if (flag == w) return true;
      }
    }
  }
  return false;
}

// True when the "vendor_id" line of `cpuinfo` says AuthenticAMD.
bool CpuInfoVendorIsAmd(absl::string_view cpuinfo) {
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    if (!absl::StartsWith(line, "vendor_id")) continue;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    return absl::StripAsciiWhitespace(line.substr(colon + 1)) == "AuthenticAMD";
  }
  return false;
}

}  // namespace

std::string ReadProcCpuinfo() {
  std::ifstream in("/proc/cpuinfo");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool CpuInfoHasBf16(absl::string_view cpuinfo) {
  return CpuInfoHasAnyFlag(cpuinfo, {"amx_bf16", "avx512_bf16"});
}

bool CpuInfoPrefersBf16(absl::string_view cpuinfo) {
  return CpuInfoHasAnyFlag(cpuinfo, {"amx_bf16"}) ||
         (CpuInfoHasAnyFlag(cpuinfo, {"avx512_bf16"}) && CpuInfoVendorIsAmd(cpuinfo));
}

bool CpuInfoHasInt8Dot(absl::string_view cpuinfo) {
  return CpuInfoHasAnyFlag(cpuinfo, {"avx512_vnni", "avx_vnni", "amx_int8"});
}

absl::StatusOr<torch::Device> ParseDevice(absl::string_view name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "cuda") return torch::Device(torch::kCUDA, 0);
  int index = -1;
  if (absl::StartsWith(name, "cuda:") && absl::SimpleAtoi(name.substr(5), &index) &&
      index >= 0 && index < 64) {
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device '", name, "' is not cpu, cuda or cuda:N (N from 0 to 63)"));
}

absl::StatusOr<Precision> ResolvePrecision(absl::string_view flag,
                                           const torch::Device& device,
                                           absl::string_view cpuinfo) {
  if (flag != "auto") {
    absl::StatusOr<Precision> precision = ParsePrecision(flag);
    if (!precision.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("precision '", flag, "' is not auto, fp32, bf16, fp16 or int8"));
    }
    return precision;
  }
  if (device.is_cuda()) return Precision::kFloat16;
  return CpuInfoPrefersBf16(cpuinfo) ? Precision::kBFloat16 : Precision::kFloat32;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& spec,
                                      const ModelLoadOptions& options) {
  LoadedModel loaded;
  if (absl::StartsWith(spec, "demo:")) {
    if (options.config_path.has_value()) {
      // Ignoring it would hide the mistake until the demo model is swapped for a real
      // one (a config file that does not even exist was accepted).
      return absl::InvalidArgumentError(
          absl::StrCat("--model_config is for a checkpoint; ", spec,
                       " is built from its preset (drop --model_config)"));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(ClipConfig config, PresetConfig(spec.substr(5)));
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.model,
                               ClipModel::Create(config, options.demo_seed));
    loaded.name = spec;
    loaded.format = CheckpointFormat::kDemo;
    loaded.random_weights = true;
  } else {
    ReadCheckpointOptions read_options;
    if (options.config_path.has_value()) {
      CLIPSERVE_ASSIGN_OR_RETURN(const std::string text,
                                 ReadConfigFile(*options.config_path));
      CLIPSERVE_ASSIGN_OR_RETURN(read_options.config, ParseOpenClipConfig(text));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(Checkpoint checkpoint, ReadCheckpoint(spec, read_options));
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.sha256, Sha256OfFiles(checkpoint.weight_files));
    // Shapes alone (of empty tensors, say) could describe a model far larger than the
    // file: refuse one the checkpoint's values cannot fill before building it.
    // Values actually stored: each storage once, whatever views of it (stride 0
    // included) claim.
    double values = 0;
    std::set<const void*> storages;
    for (const auto& [key, tensor] : checkpoint.weights) {
      if (!tensor.has_storage() || tensor.element_size() == 0) continue;
      const c10::Storage& storage = tensor.storage();
      if (!storages.insert(storage.data()).second) continue;
      values += static_cast<double>(storage.nbytes()) / tensor.element_size();
    }
    const double needed = MinimumParameterCount(checkpoint.config);
    if (values < needed) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s holds %.0f weight values, but the model it describes (%s, from %s) needs "
          "at least %.0f: a config that does not match the checkpoint's tensors, or "
          "tensors stored hollow",
          spec, values, checkpoint.config.name,
          options.config_path.has_value() ? "--model_config" : "its config or shapes",
          needed));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.model,
                               ClipModel::CreateForLoading(checkpoint.config));
    if (absl::Status status = loaded.model->LoadWeights(std::move(checkpoint.weights));
        !status.ok()) {
      // Its errors name the key; the file is what the operator has to go and fix.
      return absl::Status(status.code(),
                          absl::StrCat(checkpoint.weights_path, ": ", status.message()));
    }
    loaded.name = checkpoint.config.name;
    loaded.format = checkpoint.format;
    loaded.directory = checkpoint.directory;
    loaded.activation_assumed = checkpoint.activation_assumed;
    loaded.heads_assumed = checkpoint.heads_assumed;
  }
  CLIPSERVE_RETURN_IF_ERROR(
      loaded.model->To(options.device, options.precision, options.int8));
  return loaded;
}

}  // namespace clipserve
