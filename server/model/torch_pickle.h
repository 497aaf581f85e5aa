#ifndef CLIPSERVE_SERVER_MODEL_TORCH_PICKLE_H_
#define CLIPSERVE_SERVER_MODEL_TORCH_PICKLE_H_

#include <torch/torch.h>

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/model/clip_model.h"

namespace clipserve {

// Loads the raw bytes of storage `key` (the zip record "<archive>/data/<key>").
using StorageLoader = std::function<absl::StatusOr<torch::Tensor>(
    const std::string& key, torch::ScalarType dtype, int64_t numel)>;

// Reads the tensors out of the pickle of a torch.save zip archive (`data.pkl`).
//
// A small, safe pickle machine: it understands the opcodes torch.save emits
// (protocols 2-5) and the few globals a state dict uses (collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 and _rebuild_parameter, torch.*Storage); it never
// imports or calls anything, and any other global becomes an inert placeholder (so a
// training checkpoint's argparse.Namespace is skipped, not executed). LibTorch 1.13's
// own unpickler cannot read state dicts (no OrderedDict, no SETITEM).
//
// Returns the string-keyed tensors of the top-level dict, or of its "state_dict"
// entry when that is a dict (ReadCheckpoint() drops a DataParallel "module." prefix,
// of safetensors files too). INVALID_ARGUMENT for a malformed pickle, an unsupported
// opcode, a tensor view outside its storage, or no tensors at all.
absl::StatusOr<TensorMap> TensorsFromTorchPickle(absl::string_view pickle,
                                                 const StorageLoader& load_storage);

// Reads the tensors out of the pickle of a TorchScript archive (`data.pkl` of
// torch.jit.save, as OpenAI's released checkpoints are), with the same machine: each
// module is an object of a "__torch__.*" class whose BUILD state holds its attributes.
// Nothing in the archive is run, neither its code nor any __setstate__ (a module whose
// state is not a dict contributes no tensors), so a hostile archive can only be
// refused. Returns every tensor attribute by its dotted path ("visual.conv1.weight");
// parameters and buffers alike. INVALID_ARGUMENT as above, or when the root is not a
// module.
absl::StatusOr<TensorMap> TensorsFromTorchScriptPickle(absl::string_view pickle,
                                                       const StorageLoader& load_storage);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_TORCH_PICKLE_H_
