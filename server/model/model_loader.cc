#include "server/model/model_loader.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"

namespace clipserve {

absl::StatusOr<LoadedModel> LoadModel(const std::string& spec,
                                      const ModelLoadOptions& options) {
  LoadedModel loaded;
  if (absl::StartsWith(spec, "demo:")) {
    CLIPSERVE_ASSIGN_OR_RETURN(ClipConfig config, PresetConfig(spec.substr(5)));
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.model, ClipModel::Create(config, options.demo_seed));
    loaded.name = spec;
    loaded.format = CheckpointFormat::kDemo;
    loaded.random_weights = true;
  } else {
    ReadCheckpointOptions read_options;
    if (options.config_path.has_value()) {
      std::ifstream in(*options.config_path, std::ios::binary);
      if (!in) {
        return absl::NotFoundError(absl::StrCat("cannot read ", *options.config_path));
      }
      std::ostringstream text;
      text << in.rdbuf();
      CLIPSERVE_ASSIGN_OR_RETURN(read_options.config, ParseOpenClipConfig(text.str()));
    }
    CLIPSERVE_ASSIGN_OR_RETURN(Checkpoint checkpoint, ReadCheckpoint(spec, read_options));
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.sha256, Sha256OfFile(checkpoint.weights_path));
    // Random init is wasted work here, but cheap next to reading the weights, and it
    // keeps one construction path.
    CLIPSERVE_ASSIGN_OR_RETURN(loaded.model, ClipModel::Create(checkpoint.config));
    CLIPSERVE_RETURN_IF_ERROR(loaded.model->LoadWeights(std::move(checkpoint.weights)));
    loaded.name = checkpoint.config.name;
    loaded.format = checkpoint.format;
    loaded.directory = checkpoint.directory;
  }
  CLIPSERVE_RETURN_IF_ERROR(loaded.model->To(options.device, options.precision));
  return loaded;
}

}  // namespace clipserve
