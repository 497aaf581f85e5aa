"""Writers (and, for the tests, readers) of every checkpoint layout clipserve loads.

All writers take the same master state dict (OpenAI / open_clip key names, float32
values whose OpenAI-fp16 subset is already rounded to fp16, see
clip_reference.round_half_subset_), so each layout holds the same numbers:

  OpenAI TorchScript archive   write_openai_archive       fp16/fp32 mix
  torch.save(state_dict)       write_state_dict           fp16/fp32 mix, OrderedDict
  training checkpoint          write_wrapped_state_dict   {"state_dict": {"module."+k}}
  safetensors                  write_safetensors          F32 / F16 / BF16 (+ I64 ints)
  open_clip directory          write_open_clip_dir        config json + weights (F32)
  Hugging Face CLIP directory  write_hf_dir               config.json + HF key names

The safetensors writer follows the format's definition: an 8-byte little-endian u64 N,
an N-byte UTF-8 JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}} padded with spaces so that N % 8 == 0, then the raw
little-endian tensor bytes; offsets are relative to the start of the data, contiguous,
start at 0 and end at the end of the file.
"""

import copy
import json
import math
import os
import struct
import warnings
from collections import OrderedDict

import torch

import clip_reference as cr

# ------------------------------------------------------------------------- safetensors

ST_DTYPES = {  # safetensors name -> (torch dtype, bytes per element)
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
TORCH_TO_ST = {v[0]: k for k, v in ST_DTYPES.items()}


class SafetensorsError(ValueError):
    pass


def tensor_bytes(t):
    """Raw little-endian bytes of a tensor (x86 is little-endian; bf16 via int16)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def safetensors_layout(tensors, metadata=None):
    """(header dict, data bytes) for `tensors` ({name: tensor}), in the official order:
    larger element size first, then by name, which keeps every tensor aligned."""
    names = sorted(tensors, key=lambda k: (-ST_DTYPES[TORCH_TO_ST[tensors[k].dtype]][1], k))
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in names:
        t = tensors[name]
        raw = tensor_bytes(t)
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    return header, b"".join(chunks)


def safetensors_pack(header, data):
    """Serializes a header dict and the data; pads the JSON with spaces to 8 bytes."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_safetensors(path, tensors, metadata=None):
    if metadata is None:
        metadata = {"format": "pt"}
    header, data = safetensors_layout(tensors, metadata)
    with open(path, "wb") as f:
        f.write(safetensors_pack(header, data))


def read_safetensors(path, with_metadata=False):
    """Strict reader: rejects anything the format forbids with a SafetensorsError that
    names the problem (and the tensor, where one is involved)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise SafetensorsError("file too small for the 8-byte header length (%d bytes)"
                               % len(blob))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise SafetensorsError("header length %d exceeds the file (%d bytes after it)"
                               % (n, len(blob) - 8))
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError("header is not JSON: %s" % e)
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", None)
    spans, out = [], {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError("%s: entry must have exactly dtype, shape, data_offsets"
                                   % name)
        if info["dtype"] not in ST_DTYPES:
            raise SafetensorsError("%s: unsupported dtype %s" % (name, info["dtype"]))
        dtype, size = ST_DTYPES[info["dtype"]]
        shape = info["shape"]
        begin, end = info["data_offsets"]
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsError("%s: bad shape %r" % (name, shape))
        if not (isinstance(begin, int) and isinstance(end, int)) or begin > end:
            raise SafetensorsError("%s: bad data_offsets %r" % (name, [begin, end]))
        if end > len(data):
            raise SafetensorsError("%s: data_offsets [%d, %d] out of bounds (data is %d bytes)"
                                   % (name, begin, end, len(data)))
        if end - begin != math.prod(shape) * size:
            raise SafetensorsError("%s: data_offsets span %d bytes, shape %r of %s needs %d"
                                   % (name, end - begin, shape, info["dtype"],
                                      math.prod(shape) * size))
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise SafetensorsError("%s: data_offsets [%d, %d] overlap the previous tensor"
                                   % (name, begin, end))
        if begin > position:
            raise SafetensorsError("%s: data_offsets [%d, %d] leave a gap after byte %d "
                                   "(not contiguous)" % (name, begin, end, position))
        position = end
    if position != len(data):
        raise SafetensorsError("data is %d bytes but the tensors cover %d"
                               % (len(data), position))
    for name, info in header.items():
        dtype, _ = ST_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = bytearray(data[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else \
                torch.empty(0, dtype=dtype)
        else:
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return (out, metadata) if with_metadata else out


# ------------------------------------------------------------------------- precisions


def is_float(t):
    return t.is_floating_point()


def openai_mixed(state_dict, half_keys):
    """OpenAI's storage precision: `half_keys` in fp16, everything else as is (fp32/int)."""
    return OrderedDict((k, v.half() if k in half_keys else v) for k, v in state_dict.items())


def all_floats_to(state_dict, dtype):
    """Every floating tensor cast to `dtype` (F16/BF16 variants); integers unchanged."""
    return OrderedDict((k, v.to(dtype) if is_float(v) else v) for k, v in state_dict.items())


def as_float32(state_dict):
    return OrderedDict((k, v.float() if is_float(v) else v) for k, v in state_dict.items())


def torch_state_dict(plain, prefix=""):
    """An OrderedDict with `_metadata`, as `model.state_dict()` returns it, so the files
    look exactly like the ones people save (version metadata per module included)."""
    out = OrderedDict((prefix + k, v) for k, v in plain.items())
    meta = OrderedDict()
    modules = {""}
    for k in plain:
        parts = k.split(".")
        for i in range(1, len(parts)):
            modules.add(".".join(parts[:i]))
    for m in sorted(modules):
        name = (prefix + m) if m else prefix.rstrip(".")
        meta[name] = {"version": 1}
    out._metadata = meta
    return out


# ------------------------------------------------------------------------- OpenAI / torch.save


def write_openai_archive(model, path, images, texts):
    """TorchScript archive like OpenAI's ViT-B-32.pt / RN50.pt.

    Traced in float32 (half convolutions and LayerNorm do not run on CPU), then OpenAI's
    fp16 subset is converted to half inside the traced module before torch.jit.save. Like
    the real archives, it carries int64 scalar buffers `input_resolution`,
    `context_length` and `vocab_size` beside the weights (loaders drop them). The traced
    code itself is not meant to run after the conversion; loaders read its parameters.
    """
    m = copy.deepcopy(model).float().eval()
    cfg = m.cfg
    m.register_buffer("input_resolution", torch.tensor(cfg["vision_cfg"]["image_size"]))
    m.register_buffer("context_length", torch.tensor(cfg["text_cfg"]["context_length"]))
    m.register_buffer("vocab_size", torch.tensor(cfg["text_cfg"]["vocab_size"]))
    half_keys = cr.openai_half_keys(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(m, {"encode_image": images, "encode_text": texts},
                                        check_trace=False)
        for name, p in traced.named_parameters():
            if name in half_keys:
                p.data = p.data.half()
    torch.jit.save(traced, path)
    return traced


def trace_fp32(model, images, texts):
    """The float32 traced module (what write_openai_archive saves, before halving)."""
    m = copy.deepcopy(model).float().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace_module(m, {"encode_image": images, "encode_text": texts},
                                      check_trace=False)


def write_state_dict(path, state_dict, half_keys):
    """torch.save(model.state_dict()) in OpenAI's fp16/fp32 mix (zip format)."""
    torch.save(torch_state_dict(openai_mixed(state_dict, half_keys)), path)


def write_wrapped_state_dict(path, state_dict, half_keys):
    """A training checkpoint (open_clip / DDP): {"epoch", "name", "state_dict":
    {"module." + key: tensor}}."""
    sd = torch_state_dict(openai_mixed(state_dict, half_keys), prefix="module.")
    torch.save({"epoch": 1, "name": "clipserve-fixture", "state_dict": sd}, path)


def unwrap_state_dict(obj):
    """Inverse of the wrappers above (used by the tests and as a loader's recipe)."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# ------------------------------------------------------------------------- open_clip


def open_clip_config(cfg):
    return {"model_cfg": cfg,
            "preprocess_cfg": {"mean": list(cr.OPENAI_MEAN), "std": list(cr.OPENAI_STD),
                               "interpolation": "bicubic", "resize_mode": "shortest"}}


def write_open_clip_dir(directory, cfg, state_dict, fmt):
    """open_clip hub layout: open_clip_config.json + open_clip_model.safetensors (fmt
    "safetensors", float32) or open_clip_pytorch_model.bin (fmt "bin", torch.save of the
    float32 state dict)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
        json.dump(open_clip_config(cfg), f, indent=2)
    sd = as_float32(state_dict)
    if fmt == "safetensors":
        write_safetensors(os.path.join(directory, "open_clip_model.safetensors"), sd)
    else:
        torch.save(torch_state_dict(sd), os.path.join(directory, "open_clip_pytorch_model.bin"))


# ------------------------------------------------------------------------- Hugging Face

_HF_BLOCK = [  # (OpenAI suffix in a resblock, HF suffix in an encoder layer)
    ("ln_1.weight", "layer_norm1.weight"), ("ln_1.bias", "layer_norm1.bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("ln_2.weight", "layer_norm2.weight"), ("ln_2.bias", "layer_norm2.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"), ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"), ("mlp.c_proj.bias", "mlp.fc2.bias"),
]
_HF_TOP = [  # (OpenAI key, HF key), copied as is
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),   # sic: HF's spelling
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
]
_HF_TRANSPOSED = [  # [in, out] matrices applied as x @ P  <->  nn.Linear weight [out, in]
    ("visual.proj", "visual_projection.weight"),
    ("text_projection", "text_projection.weight"),
]
_HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _check_hf_able(cfg):
    if cr.is_resnet_config(cfg) or cfg["text_cfg"].get("encoder_type", "transformer") != \
            "transformer":
        raise ValueError("the Hugging Face layout exists for ViT + transformer text only")


def openai_to_hf(state_dict, cfg):
    """OpenAI/open_clip keys -> transformers' CLIPModel keys (plus position_ids buffers)."""
    cfg = cr.normalized_config(cfg)
    _check_hf_able(cfg)
    sd, out = dict(state_dict), OrderedDict()
    for src, dst in _HF_TOP:
        out[dst] = sd[src].clone()
    for src, dst in _HF_TRANSPOSED:
        out[dst] = sd[src].t().contiguous()
    for tower, hf_tower, layers in (
            ("visual.transformer", "vision_model.encoder", cfg["vision_cfg"]["layers"]),
            ("transformer", "text_model.encoder", cfg["text_cfg"]["layers"])):
        for i in range(layers):
            a, h = "%s.resblocks.%d." % (tower, i), "%s.layers.%d." % (hf_tower, i)
            w = sd[a + "attn.in_proj_weight"]
            b = sd[a + "attn.in_proj_bias"]
            width = w.shape[1]
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):  # row blocks q; k; v
                out[h + "self_attn.%s.weight" % name] = w[j * width:(j + 1) * width].clone()
                out[h + "self_attn.%s.bias" % name] = b[j * width:(j + 1) * width].clone()
            for src, dst in _HF_BLOCK:
                out[h + dst] = sd[a + src].clone()
    n_vis = sd["visual.positional_embedding"].shape[0]
    n_txt = sd["positional_embedding"].shape[0]
    out["text_model.embeddings.position_ids"] = torch.arange(n_txt)[None]
    out["vision_model.embeddings.position_ids"] = torch.arange(n_vis)[None]
    return out


def hf_to_openai(hf):
    """Inverse of openai_to_hf (drops the position_ids buffers)."""
    hf = {k: v for k, v in hf.items() if k not in _HF_IGNORED}
    out = OrderedDict()
    for src, dst in _HF_TOP:
        out[src] = hf.pop(dst)
    for src, dst in _HF_TRANSPOSED:
        out[src] = hf.pop(dst).t().contiguous()
    for tower, hf_tower in (("visual.transformer", "vision_model.encoder"),
                            ("transformer", "text_model.encoder")):
        i = 0
        while ("%s.layers.%d.self_attn.q_proj.weight" % (hf_tower, i)) in hf:
            a, h = "%s.resblocks.%d." % (tower, i), "%s.layers.%d." % (hf_tower, i)
            out[a + "attn.in_proj_weight"] = torch.cat(
                [hf.pop(h + "self_attn.%s_proj.weight" % c) for c in "qkv"], 0)
            out[a + "attn.in_proj_bias"] = torch.cat(
                [hf.pop(h + "self_attn.%s_proj.bias" % c) for c in "qkv"], 0)
            for src, dst in _HF_BLOCK:
                out[a + src] = hf.pop(h + dst)
            i += 1
    if hf:
        raise KeyError("unmapped Hugging Face keys: %s" % sorted(hf))
    return out


def hf_config(cfg, logit_scale_init_value=2.6592):
    """transformers' CLIPConfig for a ViT + transformer-text config."""
    cfg = cr.normalized_config(cfg)
    _check_hf_able(cfg)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg["quick_gelu"] else "gelu"
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg["embed_dim"],
        "logit_scale_init_value": logit_scale_init_value,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": t["width"],
            "intermediate_size": int(t["width"] * t["mlp_ratio"]),
            "num_attention_heads": t["heads"],
            "num_hidden_layers": t["layers"],
            "max_position_embeddings": t["context_length"],
            "vocab_size": t["vocab_size"],
            "hidden_act": act,
            "layer_norm_eps": cr.LAYER_NORM_EPS,
            "projection_dim": cfg["embed_dim"],
            "bos_token_id": cr.SOT_TOKEN,
            "eos_token_id": cr.EOT_TOKEN,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v["width"],
            "intermediate_size": int(v["width"] * v["mlp_ratio"]),
            "num_attention_heads": v["width"] // v["head_width"],
            "num_hidden_layers": v["layers"],
            "image_size": v["image_size"],
            "patch_size": v["patch_size"],
            "num_channels": 3,
            "hidden_act": act,
            "layer_norm_eps": cr.LAYER_NORM_EPS,
            "projection_dim": cfg["embed_dim"],
        },
    }


def write_hf_dir(directory, cfg, state_dict, fmt, shards=1):
    """config.json + model.safetensors (fmt "safetensors") or pytorch_model.bin ("bin"),
    float32 with int64 position_ids buffers. With shards > 1, the tensors split over
    that many files named as transformers' save_pretrained() names them
    (model-00001-of-00002.safetensors, ...), with the index it writes beside them
    (model.safetensors.index.json: metadata.total_size and weight_map); returns the
    index's name, else the weights file's."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
    hf = openai_to_hf(as_float32(state_dict), cfg)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")

    def write(name, tensors):
        if fmt == "safetensors":
            write_safetensors(os.path.join(directory, name), tensors)
        else:
            torch.save(torch_state_dict(tensors), os.path.join(directory, name))

    if shards == 1:
        write("%s.%s" % (stem, ext), hf)
        return "%s.%s" % (stem, ext)
    keys = sorted(hf)
    weight_map = {}
    for i in range(shards):
        name = "%s-%05d-of-%05d.%s" % (stem, i + 1, shards, ext)
        part = {k: hf[k] for k in keys[i::shards]}
        write(name, part)
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in hf.values())
    index = "%s.%s.index.json" % (stem, ext)
    with open(os.path.join(directory, index), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                  indent=2)
    return index
