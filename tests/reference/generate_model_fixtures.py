#!/usr/bin/python3
"""Writes tiny seeded CLIP checkpoints in every layout, with inputs and expected outputs.

    /usr/bin/python3 tests/reference/generate_model_fixtures.py --out DIR
    /usr/bin/python3 tests/reference/generate_model_fixtures.py --full_vit_b32 PATH

DIR/<case>/ for each case in CASES (see DIR/<case>/manifest.json for what each file is
and which expected file it must reproduce), and DIR/corrupt/ with broken checkpoints
(DIR/corrupt/manifest.json). Deterministic: the same command writes byte-identical
tensors. --full_vit_b32 writes a full-size random ViT-B-32 state dict (OpenAI's fp16/
fp32 mix, torch.save) for load-time and memory measurements; it is not part of CI.
"""

import argparse
import io
import json
import math
import os
import random
import shutil
import struct
import sys
import time
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoints as ck  # noqa: E402
import clip_reference as cr  # noqa: E402

BATCH = 8
# Real tokens between <|startoftext|> and <|endoftext|> for each of the 8 text rows:
# empty, short, ..., 70, and 75 (77 with SOT and EOT: a full context, no padding).
TEXT_BODY_LENGTHS = [17, 0, 75, 3, 52, 9, 70, 33]

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
_VIT = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16}

# name -> (seed, config, options). Configs use the open_clip schema; vit_transformer
# spells out every field, the others leave defaults (mlp_ratio 4.0, encoder_type
# "transformer") out so that config parsers exercise them.
CASES = {
    "vit_transformer": (1001, {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": dict(_VIT, mlp_ratio=4.0),
        "text_cfg": dict(_TEXT, mlp_ratio=4.0, encoder_type="transformer")},
        {"hf": True}),
    "resnet_transformer": (1002, {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                       "patch_size": None, "head_width": 16},
        "text_cfg": dict(_TEXT)},
        {}),
    "vit_cbow": (1003, {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": dict(_VIT),
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64,
                     "encoder_type": "cbow"}},
        {}),
    # exp(logit_scale) > 100 here, so the clamp at 100 is exercised.
    "vit_gelu": (1004, {
        "embed_dim": 32, "quick_gelu": False,
        "vision_cfg": dict(_VIT),
        "text_cfg": dict(_TEXT)},
        {"hf": True, "logit_scale": math.log(100.0) + 0.5}),
    # Head counts follow OpenAI's shape-inference rule (vision heads = width // 64 for a
    # ViT, width * 32 // 64 for a ResNet; text heads = width // 64), so a loader that
    # infers the architecture from an OpenAI checkpoint alone can be checked. Only the
    # OpenAI layouts are written for these.
    "vit_openai_shapes": (1005, {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 128, "patch_size": 8,
                       "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                     "layers": 1}},
        {"openai_only": True}),
    "resnet_openai_shapes": (1006, {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                       "patch_size": None, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                     "layers": 1}},
        {"openai_only": True}),
}
CORRUPT_BASE = "vit_transformer"

VIT_B_32 = {
    "embed_dim": 512, "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                 "layers": 12},
}


def heads_follow_openai_rule(cfg):
    cfg = cr.normalized_config(cfg)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    ok = v["head_width"] == 64
    if t["encoder_type"] == "transformer":
        ok = ok and t["heads"] == t["width"] // 64
    return ok


def make_inputs(cfg, gen):
    s = cfg["vision_cfg"]["image_size"]
    ctx = cfg["text_cfg"]["context_length"]
    images = torch.randn((BATCH, 3, s, s), generator=gen)
    texts = torch.zeros((BATCH, ctx), dtype=torch.long)
    lengths = torch.zeros((BATCH,), dtype=torch.long)
    for i, body in enumerate(TEXT_BODY_LENGTHS):
        texts[i, 0] = cr.SOT_TOKEN
        texts[i, 1:1 + body] = torch.randint(1, cr.SOT_TOKEN, (body,), generator=gen)
        texts[i, 1 + body] = cr.EOT_TOKEN
        lengths[i] = body + 2
    return {"images": images, "texts": texts, "text_lengths": lengths}


def make_master(cfg, seed, logit_scale=None):
    """The seeded model whose weights every layout stores (fp16 subset pre-rounded)."""
    gen = torch.Generator().manual_seed(seed)
    model = cr.build_model(cfg)
    cr.init_random_(model, gen)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    cr.round_half_subset_(model)
    inputs = make_inputs(model.cfg, gen)
    return model.eval(), inputs


def expected_for_state_dict(cfg, state_dict, inputs):
    model = cr.build_model(cfg)
    model.load_state_dict(ck.as_float32(state_dict), strict=True)
    return cr.compute_expected(model, inputs["images"], inputs["texts"])


def save_plain(obj, path):
    """torch.save of a plain dict of tensors (zip format), readable by torch::pickle_load:
    more than one key per dict, no OrderedDict (LibTorch 1.13's unpickler has neither
    SETITEM nor collections.OrderedDict)."""
    assert type(obj) is dict and len(obj) > 1
    torch.save({k: v.contiguous().clone() for k, v in obj.items()}, path)


def write_case(out, name, seed, cfg, options, log):
    t0 = time.time()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model, inputs = make_master(cfg, seed, options.get("logit_scale"))
    sd = cr.state_dict_plain(model)
    half_keys = cr.openai_half_keys(model)
    expected = cr.compute_expected(model, inputs["images"], inputs["texts"])

    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_plain(inputs, os.path.join(d, "inputs.pt"))
    save_plain(expected, os.path.join(d, "expected.pt"))

    entries = []

    def entry(path, layout, storage, expected_file="expected.pt", **extra):
        e = {"path": path, "layout": layout, "storage": storage, "expected": expected_file}
        e.update(extra)
        entries.append(e)

    ck.write_openai_archive(model, os.path.join(d, "openai.pt"), inputs["images"],
                            inputs["texts"])
    entry("openai.pt", "openai_torchscript", "openai_mixed",
          extra_keys_to_ignore=["input_resolution", "context_length", "vocab_size"])
    ck.write_state_dict(os.path.join(d, "state_dict.pt"), sd, half_keys)
    entry("state_dict.pt", "torch_state_dict", "openai_mixed")
    # The same records in a zip64 archive, as torch.save writes one past 4 GiB.
    rezip(os.path.join(d, "state_dict.pt"), os.path.join(d, "state_dict_zip64.pt"),
          zip64=True)
    entry("state_dict_zip64.pt", "torch_state_dict", "openai_mixed")

    if not options.get("openai_only"):
        ck.write_wrapped_state_dict(os.path.join(d, "state_dict_wrapped.pt"), sd, half_keys)
        entry("state_dict_wrapped.pt", "torch_training_checkpoint", "openai_mixed",
              key_prefix="module.", container_key="state_dict")
        ck.write_safetensors(os.path.join(d, "model_f32.safetensors"), ck.as_float32(sd))
        entry("model_f32.safetensors", "safetensors", "F32")
        # Double precision, as a conversion from numpy may leave it: the same values.
        ck.write_safetensors(os.path.join(d, "model_f64.safetensors"),
                             ck.all_floats_to(sd, torch.float64))
        entry("model_f64.safetensors", "safetensors", "F64")
        # A training checkpoint's state_dict converted as it is (DataParallel's prefix).
        ck.write_safetensors(os.path.join(d, "model_f32_ddp.safetensors"),
                             {"module." + k: v for k, v in ck.as_float32(sd).items()})
        entry("model_f32_ddp.safetensors", "safetensors", "F32", key_prefix="module.")
        for tag, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
            low = ck.all_floats_to(sd, dtype)
            ck.write_safetensors(os.path.join(d, "model_%s.safetensors" % tag), low)
            save_plain(expected_for_state_dict(cfg, low, inputs),
                       os.path.join(d, "expected_%s.pt" % tag))
            entry("model_%s.safetensors" % tag, "safetensors", tag.upper(),
                  "expected_%s.pt" % tag)
        ck.write_open_clip_dir(os.path.join(d, "open_clip"), cfg, sd, "safetensors")
        entry("open_clip/open_clip_model.safetensors", "open_clip_dir", "F32",
              dir="open_clip", config_file="open_clip/open_clip_config.json")
        ck.write_open_clip_dir(os.path.join(d, "open_clip_bin"), cfg, sd, "bin")
        entry("open_clip_bin/open_clip_pytorch_model.bin", "open_clip_dir", "F32",
              dir="open_clip_bin", config_file="open_clip_bin/open_clip_config.json")
        if options.get("hf"):
            ck.write_hf_dir(os.path.join(d, "hf"), cfg, sd, "safetensors")
            entry("hf/model.safetensors", "hf_dir", "F32", dir="hf",
                  config_file="hf/config.json",
                  extra_keys_to_ignore=list(ck._HF_IGNORED))
            ck.write_hf_dir(os.path.join(d, "hf_bin"), cfg, sd, "bin")
            entry("hf_bin/pytorch_model.bin", "hf_dir", "F32", dir="hf_bin",
                  config_file="hf_bin/config.json",
                  extra_keys_to_ignore=list(ck._HF_IGNORED))
            # Split over files with an index, as save_pretrained() does past its shard
            # size (ViT-bigG and its fine-tunes come so).
            for sub, fmt in (("hf_sharded", "safetensors"), ("hf_sharded_bin", "bin")):
                index = ck.write_hf_dir(os.path.join(d, sub), cfg, sd, fmt, shards=3)
                entry(sub + "/" + index, "hf_dir", "F32", dir=sub,
                      config_file=sub + "/config.json",
                      extra_keys_to_ignore=list(ck._HF_IGNORED))

    manifest = {
        "case": name,
        "seed": seed,
        "config": "config.json",
        "inputs": "inputs.pt",
        "heads_follow_openai_rule": heads_follow_openai_rule(cfg),
        "notes": [
            "Every file stores the same values (the fp16 subset was rounded once in the "
            "master weights); computed in float32 each must reproduce `expected`.",
            "`expected_f16.pt` / `expected_bf16.pt` are the reference run in float32 on "
            "the weights as stored in those files (every float tensor rounded).",
            "Head counts are not in the tensor shapes: unless heads_follow_openai_rule is "
            "true, load OpenAI/state-dict/safetensors files with config.json.",
            "storage 'openai_mixed': Conv/Linear/MultiheadAttention weights and biases, "
            "visual.proj and text_projection in fp16; LayerNorm, BatchNorm, embeddings, "
            "logit_scale in fp32; num_batches_tracked int64.",
        ],
        "half_keys": sorted(half_keys),
        "checkpoints": entries,
        "recommended_tolerance_fp32": {"atol": 1e-4, "rtol": 1e-4},
    }
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    log("%-22s %5.2fs  %s" % (name, time.time() - t0, ", ".join(e["path"] for e in entries)))
    return model, sd


def rezip(source, target, zip64=False, deflate=False, extra=None):
    """`source`'s records written again: as zip64 (every size and the directory in
    zip64 form), deflated, and/or with `extra` (name, bytes) records added."""
    with zipfile.ZipFile(source) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    records += list(extra or [])
    limit = zipfile.ZIP64_LIMIT
    if zip64:
        zipfile.ZIP64_LIMIT = 0  # what 4 GiB makes zipfile do
    try:
        with zipfile.ZipFile(target, "w") as z:
            for name, data in records:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                with z.open(info, "w", force_zip64=zip64) as f:
                    f.write(data)
    finally:
        zipfile.ZIP64_LIMIT = limit


# ------------------------------------------------------------------------- corrupt files


def _tensor_at(header, offset):
    for k, v in header.items():
        if k != "__metadata__" and v["data_offsets"][0] <= offset < v["data_offsets"][1]:
            return k
    return None


def _drop_region_and_alias(header, data, victim, target):
    """`victim` points at `target`'s bytes; its own bytes are removed from the data and
    later offsets shifted, so the only defect is the overlap."""
    h = json.loads(json.dumps(header))
    vb, ve = h[victim]["data_offsets"]
    size = ve - vb
    new_data = data[:vb] + data[ve:]
    for k, v in h.items():
        if k == "__metadata__" or k == victim:
            continue
        b, e = v["data_offsets"]
        if b >= ve:
            v["data_offsets"] = [b - size, e - size]
    h[victim]["data_offsets"] = list(h[target]["data_offsets"])
    return h, new_data


def _insert_gap(header, data, before, gap):
    h = json.loads(json.dumps(header))
    b0 = h[before]["data_offsets"][0]
    for k, v in h.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        if b >= b0:
            v["data_offsets"] = [b + gap, e + gap]
    return h, data[:b0] + b"\0" * gap + data[b0:]


def write_corrupt(out, base_sd, base_dir, log):
    t0 = time.time()
    d = os.path.join(out, "corrupt")
    os.makedirs(d, exist_ok=True)
    cfg_rel = "../%s/config.json" % CORRUPT_BASE
    sd = ck.as_float32(base_sd)
    header, data = ck.safetensors_layout(sd, {"format": "pt"})
    entries = []

    def put(fname, blob, fmt, expect, key=None):
        with open(os.path.join(d, fname), "wb") as f:
            f.write(blob)
        entries.append({"file": fname, "format": fmt, "config": cfg_rel, "expect": expect,
                        "key": key})

    # 1. cut inside the data
    full = ck.safetensors_pack(header, data)
    data_start = len(full) - len(data)
    cut = len(data) // 2 + 2
    victim = _tensor_at(header, cut)
    put("truncated_data.safetensors", full[:data_start + cut], "safetensors",
        "reject: file ends inside the data of %s (tensor data need %d bytes, file has %d)"
        % (victim, len(data), cut), victim)
    # 2. header length larger than the file
    put("header_length_too_large.safetensors", struct.pack("<Q", len(full)) + full[8:],
        "safetensors", "reject: header length %d is larger than the file" % len(full))
    # 3. header not JSON (same length, so the data is where it was)
    n = struct.unpack("<Q", full[:8])[0]
    junk = b"this is not JSON {\"a\": [1, 2"
    junk = (junk * (n // len(junk) + 1))[:n]
    put("header_not_json.safetensors", full[:8] + junk + full[8 + n:], "safetensors",
        "reject: header is not valid JSON")
    # 4. data_offsets beyond the data
    h = json.loads(json.dumps(header))
    b, e = h["visual.proj"]["data_offsets"]
    h["visual.proj"]["data_offsets"] = [2 ** 40, 2 ** 40 + (e - b)]
    put("offsets_out_of_bounds.safetensors", ck.safetensors_pack(h, data), "safetensors",
        "reject: data_offsets of visual.proj [2^40, 2^40 + %d] are beyond the data" % (e - b),
        "visual.proj")
    # 5. overlapping offsets (no gap: the victim's own bytes are removed)
    h, dd = _drop_region_and_alias(header, data, "visual.ln_post.weight",
                                   "visual.ln_post.bias")
    put("offsets_overlap.safetensors", ck.safetensors_pack(h, dd), "safetensors",
        "reject: data_offsets of visual.ln_post.weight overlap visual.ln_post.bias",
        "visual.ln_post.weight")
    # 6. misaligned offsets: 2 bytes inserted before an F32 tensor (gap + begin % 4 == 2)
    h, dd = _insert_gap(header, data, "ln_final.weight", 2)
    put("offsets_misaligned.safetensors", ck.safetensors_pack(h, dd), "safetensors",
        "reject: ln_final.weight starts 2 bytes after the previous tensor ends (data_offsets "
        "not contiguous; begin not a multiple of 4 for F32)", "ln_final.weight")
    # 7. offsets span disagrees with shape x dtype size
    h = json.loads(json.dumps(header))
    h["ln_final.bias"]["shape"] = [h["ln_final.bias"]["shape"][0] - 1]
    put("offsets_size_mismatch.safetensors", ck.safetensors_pack(h, data), "safetensors",
        "reject: ln_final.bias data_offsets span 256 bytes but shape [63] F32 needs 252",
        "ln_final.bias")
    # 8. an integer tensor for a floating weight
    bad = dict(sd)
    bad["text_projection"] = (sd["text_projection"] * 100).round().clamp(-127, 127).to(
        torch.int8)
    hh, dd = ck.safetensors_layout(bad, {"format": "pt"})
    put("integer_weight_i8.safetensors", ck.safetensors_pack(hh, dd), "safetensors",
        "reject: text_projection has dtype I8 (a weight must be F64, F32, F16 or BF16)",
        "text_projection")
    # 9-11. well-formed files with the wrong tensors
    bad = {k: v for k, v in sd.items() if k != "ln_final.weight"}
    hh, dd = ck.safetensors_layout(bad, {"format": "pt"})
    put("missing_key.safetensors", ck.safetensors_pack(hh, dd), "safetensors",
        "reject: missing key ln_final.weight", "ln_final.weight")
    bad = dict(sd)
    bad["visual.head.weight"] = torch.zeros(32)
    hh, dd = ck.safetensors_layout(bad, {"format": "pt"})
    put("unexpected_key.safetensors", ck.safetensors_pack(hh, dd), "safetensors",
        "reject: unexpected key visual.head.weight", "visual.head.weight")
    bad = dict(sd)
    bad["visual.proj"] = sd["visual.proj"].t().contiguous()
    hh, dd = ck.safetensors_layout(bad, {"format": "pt"})
    put("misshapen_key.safetensors", ck.safetensors_pack(hh, dd), "safetensors",
        "reject: visual.proj has shape [32, 64], expected [64, 32]", "visual.proj")
    # 12-15. broken torch.save files, random bytes, empty files
    with open(os.path.join(base_dir, "state_dict.pt"), "rb") as f:
        zip_blob = f.read()
    put("truncated.pt", zip_blob[:len(zip_blob) // 2], "torch_zip",
        "reject: truncated zip archive (torch.save file cut in half; no central directory)")
    rnd = random.Random(7)
    noise = bytes(rnd.getrandbits(8) for _ in range(4096))
    put("random_bytes.pt", noise, "unknown", "reject: not a zip archive / TorchScript file")
    put("random_bytes.safetensors", noise, "safetensors",
        "reject: header length %d is larger than the file" % struct.unpack("<Q", noise[:8])[0])
    put("empty.pt", b"", "unknown", "reject: empty file")
    put("empty.safetensors", b"", "safetensors",
        "reject: empty file (no 8-byte header length)")
    # 16. deflated records that would inflate to far more than the file (64 MiB of
    # zeros in 64 KiB): LibTorch inflates a record whole before anything is checked
    prefix = zipfile.ZipFile(os.path.join(base_dir, "state_dict.pt")).namelist()[0]
    prefix = prefix.split("/")[0]
    rezip(os.path.join(base_dir, "state_dict.pt"), os.path.join(d, "deflated_bomb.pt"),
          deflate=True, extra=[(prefix + "/data/9999", bytes(64 << 20))])
    entries.append({"file": "deflated_bomb.pt", "format": "torch_zip", "config": cfg_rel,
                    "expect": "reject: records would inflate to over 4x the file",
                    "key": "would inflate"})
    # 17. a TorchScript archive whose data.pkl is 4 hostile bytes (REDUCE on an empty
    # stack), which made LibTorch's own unpickler (torch::jit::load) crash the process
    with zipfile.ZipFile(os.path.join(base_dir, "openai.pt")) as z:
        records = [(info, z.read(info)) for info in z.infolist()]
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_STORED) as z:
        for info, data in records:
            z.writestr(info, b"\x80\x02R." if info.filename.endswith("/data.pkl") else data)
    put("torchscript_hostile_pickle.pt", blob.getvalue(), "torch_zip",
        "reject: malformed pickle (stack underflow), read without running anything",
        "stack underflow")
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(entries, f, indent=2)
    log("%-22s %5.2fs  %d files" % ("corrupt", time.time() - t0, len(entries)))


# ------------------------------------------------------------------------- ViT-B-32


def write_full_vit_b32(path, log, seed=32):
    """Full-size random ViT-B-32 (151M parameters) in OpenAI's fp16/fp32 mix."""
    t0 = time.time()
    model = cr.build_model(VIT_B_32)
    cr.init_random_(model, torch.Generator().manual_seed(seed))
    half_keys = cr.openai_half_keys(model)
    sd = cr.state_dict_plain(model)
    del model
    ck.write_state_dict(path, sd, half_keys)
    n = sum(v.numel() for v in sd.values())
    log("ViT-B-32: %d parameters -> %s (%d bytes) in %.1fs"
        % (n, path, os.path.getsize(path), time.time() - t0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="fixture directory to (re)create")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated subset of: " + ",".join(CASES))
    parser.add_argument("--full_vit_b32", metavar="PATH",
                        help="also write a full-size random ViT-B-32 state dict here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.out and not args.full_vit_b32:
        parser.error("give --out DIR and/or --full_vit_b32 PATH")
    torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    t0 = time.time()
    if args.out:
        names = [c for c in args.cases.split(",") if c]
        unknown = [c for c in names if c not in CASES]
        if unknown:
            parser.error("unknown cases: %s" % unknown)
        os.makedirs(args.out, exist_ok=True)
        for name in names:
            if os.path.isdir(os.path.join(args.out, name)):
                shutil.rmtree(os.path.join(args.out, name))
        for name in names:
            seed, cfg, options = CASES[name]
            _, sd = write_case(args.out, name, seed, cfg, options, log)
            if name == CORRUPT_BASE:
                shutil.rmtree(os.path.join(args.out, "corrupt"), ignore_errors=True)
                write_corrupt(args.out, sd, os.path.join(args.out, name), log)
    if args.full_vit_b32:
        write_full_vit_b32(args.full_vit_b32, log)
    log("total %.1fs" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
