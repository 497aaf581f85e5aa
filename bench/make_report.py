#!/usr/bin/python3
"""Writes PERFORMANCE.md and performance.png from bench/run-benchmarks.sh's results.

Every number comes from the results; the report says when each stage ran and at which
commit, so that a ratio between stages shows how far apart its two numbers were
measured. Usage:
  /usr/bin/python3 bench/make_report.py --results build/bench-results --out_dir docs
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import python_baseline  # noqa: E402

MODELS = ["ViT-B-32", "ViT-B-16", "RN50"]

# Benchmarks that skipped themselves because this machine or build lacks what they
# measure (their error message starts with UNAVAILABLE): {name: reason}.
UNAVAILABLE = "not on this machine: "
not_run = {}


def gbench(path):
    """{run name: (items/s, ms per iteration, label)}, medians when repeated."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    runs, medians = {}, {}
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            message = b.get("error_message", "")
            if message.startswith(UNAVAILABLE):
                not_run[b["run_name"]] = message[len(UNAVAILABLE):]
                continue
            # A benchmark that found its own result wrong: no number to report.
            sys.exit(f"{path}: {b['name']} failed: {message}")
        name = b["run_name"]
        ms = b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        rate = b.get("items_per_second")
        for key in ("tokens/s", "texts/s"):  # the tokenizer counts its own units
            if rate is None and key in b:
                rate = b[key]
        value = (rate, ms, b.get("label", ""))
        if b.get("aggregate_name") == "median":
            medians[name] = value
        elif b.get("run_type", "iteration") == "iteration":
            runs.setdefault(name, value)
    runs.update(medians)
    return runs


def jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    text = f"{x:,.{digits}f}"
    # A value that rounds to zero is written without a sign ("-0.0" otherwise).
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def ratio(a, b):
    return None if not a or not b else a / b


def stage_spread(stages):
    """How far apart the stages ran, for the ratios that compare two of them."""
    times, commits = [], []
    for _, when in stages:
        parts = when.split()
        try:
            times.append(datetime.datetime.strptime(" ".join(parts[:2]), "%Y-%m-%d %H:%M"))
        except (ValueError, IndexError):
            return "A ratio between stages compares runs of different times."
        if len(parts) > 3 and parts[3] not in commits:
            commits.append(parts[3])
    span = max(times) - min(times)
    minutes = span.total_seconds() / 60
    if minutes <= 60 and len(commits) <= 1:
        return ("Ratios between stages compare runs minutes apart, at one commit, on the "
                "same idle machine.")
    spread = (f"{minutes:.0f} minutes" if minutes < 120
              else f"{minutes / 60:.1f} hours")
    at = (f"at commit {commits[0]}" if len(commits) == 1
          else f"at commits {' and '.join(commits)}")
    return (f"The stages ran {spread} apart, {at}: a ratio between "
            "two stages (served vs eager PyTorch, served vs in process) compares runs "
            "that far apart, on the same machine; the side-by-side rounds below do not.")


def machine():
    cpu = "unknown"
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "flags": wanted,
            "kernel": platform.release(), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def vit_b32_weight_mb():
    model = python_baseline.clip_reference.build_model(python_baseline.CONFIGS["ViT-B-32"])
    return sum(p.numel() for p in model.parameters()) * 4 / 2**20


def vit_b32_image_flops():
    """FLOPs (2 per multiply-add) of one ViT-B-32 image through the image tower."""
    width, layers, tokens, patch, embed = 768, 12, 50, 32, 512
    macs = (tokens - 1) * 3 * patch * patch * width  # patch embedding
    macs += layers * (tokens * width * 3 * width       # q, k, v
                      + 2 * tokens * tokens * width    # scores, weighted sum
                      + tokens * width * width         # attention output
                      + 2 * tokens * width * 4 * width)  # MLP
    macs += width * embed                              # projection of the class token
    return 2 * macs


def metric_sums(path):
    """Prometheus text: {name with labels: value} of the _sum and _count series."""
    sums = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#") and \
                    parts[0].split("{")[0].endswith(("_sum", "_count")):
                sums[parts[0]] = float(parts[1])
    return sums


def server_split_ms(results, n):
    """Mean ms per image the server spent decoding and preprocessing, waiting in the
    queue and in the model during round n's concurrency-1 run (from its metrics before
    and after), or None without them."""
    paths = [os.path.join(results, f"paired_metrics_{n}_{when}.txt")
             for when in ("before", "after")]
    if not all(os.path.exists(p) for p in paths):
        return None
    before, after = metric_sums(paths[0]), metric_sums(paths[1])

    def mean(series):  # the mean over the run of histogram `series` (image modality)
        key = f'{series}_%s{{modality="image"}}'
        count = after.get(key % "count", 0) - before.get(key % "count", 0)
        return (after[key % "sum"] - before[key % "sum"]) / count if count > 0 else None

    split = {name: mean(f"clipserve_{name}_seconds")
             for name in ("preprocess", "queue_wait", "inference")}
    batch = mean("clipserve_batch_size")
    if None in split.values() or batch is None:
        print(f"warning: round {n}: the image histograms are missing from {paths[1]}",
              file=sys.stderr)
        return None
    if batch != 1:  # The model run is then not one image's.
        print(f"warning: round {n}: concurrency 1 ran batches of {batch:.2f} images",
              file=sys.stderr)
        return None
    return {name: 1000 * seconds for name, seconds in split.items()}


def paired_rounds(results, e2e, bf16):
    """The side-by-side rounds of run-benchmarks.sh: per round, in-process batch-32
    images/s and batch-1 ms, served concurrency-64 images/s and concurrency-1 p50 ms,
    and the server's split of its concurrency-1 time (server_split_ms)."""
    rounds = []
    for n in range(1, 100):
        path = os.path.join(results, f"paired_model_{n}.json")
        if not os.path.exists(path):
            break
        model = gbench(path)
        b32 = model.get(f"BM_ImageTower/model:0/batch:32/bf16:{bf16}/real_time")
        b1 = model.get(f"BM_ImageTower/model:0/batch:1/bf16:{bf16}/real_time")
        c1 = [e for e in e2e if e.get("label") == f"paired{n}" and e.get("concurrency") == 1]
        c64 = [e for e in e2e
               if e.get("label") == f"paired{n}" and e.get("concurrency") == 64]
        if not (b32 and b1 and c1 and c64):
            continue
        rounds.append({"b32": b32[0], "b1_ms": b1[1], "c1_p50": c1[0]["latency_ms"]["p50"],
                       "c64": c64[0]["items_per_s"], "split": server_split_ms(results, n)})
    return rounds


def median_round(rounds, key):
    """The round whose key is the median (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=key)
    return ordered[(len(ordered) - 1) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--command", default="bash bench/run-benchmarks.sh")
    args = parser.parse_args()
    r = args.results
    model = gbench(os.path.join(r, "model.json"))
    python = jsonl(os.path.join(r, "python.jsonl"))
    e2e = jsonl(os.path.join(r, "e2e.jsonl"))
    for e in e2e:
        # Throughput of answered items only: fast failures must not count.
        if "succeeded" in e and e.get("elapsed_s"):
            e["items_per_s"] = e["succeeded"] * e["items_per_request"] / e["elapsed_s"]
    stages = []
    if os.path.exists(os.path.join(r, "stages.txt")):
        with open(os.path.join(r, "stages.txt")) as f:
            stages = [line.split(" ", 1) for line in f.read().splitlines() if line]
    served_precision = "bf16"
    if os.path.exists(os.path.join(r, "served_model.json")):
        with open(os.path.join(r, "served_model.json")) as f:
            served_precision = json.load(f).get("precision", "bf16")
    served_bf16 = 1 if served_precision == "bf16" else 0
    # --precision=int8 runs what is not an int8 product as auto does.
    int8_rest = served_precision
    m = machine()
    lines = []
    add = lines.append

    def tower(kind, model_index, batch, bf16, tokens=None):
        """bf16: 0 (fp32), 1 (bf16) or "int8" (the BM_*TowerInt8 rows)."""
        if bf16 == "int8":
            name = f"BM_{kind}TowerInt8/model:{model_index}/batch:{batch}/int8:1"
        else:
            name = f"BM_{kind}Tower/model:{model_index}/batch:{batch}/bf16:{bf16}"
        if tokens is not None:
            name += f"/tokens:{tokens}"
        return model.get(name + "/real_time", (None, None, ""))

    def best_py(model_name, tower_name, tokens=77):
        """Best of fp32 and bf16 autocast, under either allocator."""
        values = [p["items_per_s"] for p in python
                  if (p["model"], p["tower"]) == (model_name, tower_name)
                  and (tower_name == "image" or p["text_tokens"] == tokens)]
        return max(values) if values else None

    def served(modality, c, label="served"):
        for e in e2e:
            if e.get("label") == label and e.get("modality") == modality \
                    and e.get("concurrency") == c:
                return e
        return None

    add("# clipserve performance")
    add("")
    add(f"On {m['cpu']}, {m['cores']} cores ({', '.join(m['flags'])}), Linux "
        f"{m['kernel']}; report written {m['date']}. Reproduce with `{args.command}` "
        "(about 20 minutes; `SMOKE=1` for a minute or so, into build/; `STAGES=...` "
        "reruns some stages). Microbenchmark, in-process and eager-PyTorch throughputs "
        "are medians of repeated runs; each end-to-end figure is one run of "
        "`clip_client bench` (\"best concurrency\": the highest of those runs), except "
        "the side-by-side rounds below, whose median round the headline uses. The "
        "machine ran nothing else. Models are the demo presets: random weights, real "
        "cost.")
    if stages:
        add("")
        add("Stages (when each last ran, and at which commit): " + "; ".join(
            f"{name} {when}" for name, when in stages) + ". " + stage_spread(stages))
    # Filled in once every result file has been read (see below).
    not_run_at = len(lines)
    add("")

    # Headlines.
    add("## Headline ratios (ViT-B-32)")
    add("")
    add("| what | clipserve | baseline | ratio | target |")
    add("|---|---|---|---|---|")
    img_best = best_py("ViT-B-32", "image")
    txt_best = best_py("ViT-B-32", "text", 20)
    served_img = max((e["items_per_s"] for e in e2e
                      if e.get("label") == "served" and e["modality"] == "image"), default=None)
    served_txt = max((e["items_per_s"] for e in e2e
                      if e.get("label") == "served" and e["modality"] == "text"), default=None)
    add(f"| served images/s (JPEG decode included, best concurrency) vs best eager PyTorch "
        f"image tower, batch 32 | {fmt(served_img)} | {fmt(img_best)} | "
        f"{fmt(ratio(served_img, img_best), 2)}x | >= 2x |")
    add(f"| served captions/s (clip_client bench's built-in captions, each made unique "
        f"by a three-word suffix, 9 to 18 tokens with start and end, padded to the "
        f"longest of each batch; no cache) vs best eager PyTorch text "
        f"tower on 20-token captions padded to 77 as clip.tokenize does, batch 32 | "
        f"{fmt(served_txt)} | "
        f"{fmt(txt_best)} | {fmt(ratio(served_txt, txt_best), 2)}x | >= 3x |")
    short = tower("Text", 0, 32, served_bf16, 20)[0]
    padded = tower("Text", 0, 32, served_bf16, 77)[0]
    add(f"| text tower, batch 32 {served_precision}: 20-token captions vs the same padded "
        f"to 77 | "
        f"{fmt(short)} texts/s | {fmt(padded)} texts/s | {fmt(ratio(short, padded), 2)}x | >= 3x |")
    bf16_32 = tower("Image", 0, 32, 1)[0]
    fp32_32 = tower("Image", 0, 32, 0)[0]
    add(f"| image tower batch 32: bf16 vs fp32 | {fmt(bf16_32)} | {fmt(fp32_32)} | "
        f"{fmt(ratio(bf16_32, fp32_32), 2)}x | |")
    int8_32 = tower("Image", 0, 32, "int8")[0]
    served_32 = bf16_32 if served_bf16 else fp32_32
    if int8_32:
        add(f"| image tower batch 32: int8 vs {served_precision} (`auto` here) | "
            f"{fmt(int8_32)} | {fmt(served_32)} | {fmt(ratio(int8_32, served_32), 2)}x | |")
    served_int8 = max((e["items_per_s"] for e in e2e
                       if e.get("label") == "served_int8" and e["modality"] == "image"),
                      default=None)
    if served_int8:
        add(f"| served images/s with `--precision=int8` (best concurrency) vs best eager "
            f"PyTorch image tower, batch 32 | {fmt(served_int8)} | {fmt(img_best)} | "
            f"{fmt(ratio(served_int8, img_best), 2)}x | |")
    paired = paired_rounds(r, e2e, served_bf16)
    if paired:
        # The median round of the side-by-side runs (see "Dynamic batching, side by side").
        mid = median_round(paired, lambda p: ratio(p["c64"], p["b32"]))
        c64_value, b32 = mid["c64"], mid["b32"]
        mid1 = median_round(paired, lambda p: p["c1_p50"] - p["b1_ms"])
        c1_p50, b1_ms = mid1["c1_p50"], mid1["b1_ms"]
        when = ", the median of side-by-side rounds"
    else:
        c64 = served("image", 64)
        c64_value = c64 and c64["items_per_s"]
        b32 = tower("Image", 0, 32, served_bf16)[0]
        c1 = served("image", 1)
        c1_p50 = c1 and c1["latency_ms"]["p50"]
        b1_ms = tower("Image", 0, 1, served_bf16)[1]
        when = ""
    add(f"| dynamic batching: served images/s at concurrency 64, one image per request, "
        f"vs in-process batch 32 ({served_precision}{when}) | {fmt(c64_value)} | {fmt(b32)} | "
        f"{fmt(ratio(c64_value, b32), 2)}x | >= 0.85x |")
    add(f"| concurrency 1: served p50 latency (ms) vs in-process batch-1 time + 2 ms"
        f"{when} | {fmt(c1_p50)} | {fmt(b1_ms and b1_ms + 2)} | | <= |")
    cached = served("text", 16, "cached")
    s16 = served("text", 16)
    add(f"| text cache: repeated captions/s with the default cache vs unique ones without, "
        f"concurrency 16 | {fmt(cached and cached['items_per_s'])} | "
        f"{fmt(s16 and s16['items_per_s'])} | "
        f"{fmt(ratio(cached and cached['items_per_s'], s16 and s16['items_per_s']), 1)}x | |")
    add("")

    # The compute ceiling.
    mm_bf16_libtorch = model.get("BM_Matmul/bf16:1/real_time", (None,))[0]
    mm_bf16_packed = model.get("BM_MatmulBf16Packed/real_time", (None,))[0]
    # The towers' own bf16 kernel where the build has it.
    mm_bf16 = mm_bf16_packed or mm_bf16_libtorch
    mm_fp32 = model.get("BM_Matmul/bf16:0/real_time", (None,))[0]
    mm_int8 = model.get("BM_MatmulInt8/real_time", (None,))[0]
    # The reference: the faster of the bf16 and fp32 products (the one --precision=auto
    # should pick).
    mm_ref, ref_name = max(((mm_bf16 or 0, "bf16"), (mm_fp32 or 0, "fp32")))
    if mm_ref:
        flops = vit_b32_image_flops()
        add("## Compute ceiling")
        add("")
        add(f"A ViT-B-32 image costs {flops / 1e9:.2f} GFLOP (multiply and add counted "
            "apart; patch embedding, attention, MLPs, projection). `BM_Matmul` runs the "
            "product that dominates a batch of 32 (1600 x 768 by 768 x 3072) through "
            "LibTorch, alone; `BM_MatmulBf16Packed` runs it on Bf16Linear, the kernel "
            "the towers' bf16 products use (the weight laid out once for oneDNN); the "
            "fp32 row runs on the OpenBLAS kernels clip_server picks. The faster of "
            f"the bf16 and fp32 products, here {ref_name}, is the most this machine's "
            "cores give a CLIP layer short of int8.")
        add("")
        add(f"| | images/s | GFLOP/s | of the {ref_name} matmul |")
        add("|---|---|---|---|")
        if mm_bf16_packed:
            add(f"| bf16 matmul, 1600 x 768 x 3072, Bf16Linear | | "
                f"{fmt(mm_bf16_packed / 1e9)} | {100 * mm_bf16_packed / mm_ref:.0f}% |")
        if mm_bf16_libtorch:
            add(f"| bf16 matmul, same shape, LibTorch's linear | | "
                f"{fmt(mm_bf16_libtorch / 1e9)} | {100 * mm_bf16_libtorch / mm_ref:.0f}% |")
        if mm_fp32:
            add(f"| fp32 matmul, same shape | | {fmt(mm_fp32 / 1e9)} | "
                f"{100 * mm_fp32 / mm_ref:.0f}% |")
        if mm_int8:
            add(f"| int8 matmul (Int8Linear, a new input each call), same shape | | "
                f"{fmt(mm_int8 / 1e9)} | {100 * mm_int8 / mm_ref:.0f}% |")
        for label, ips in (("clipserve image tower, bf16, batch 32", bf16_32),
                           ("clipserve image tower, fp32, batch 32", fp32_32),
                           ("clipserve image tower, int8, batch 32", int8_32),
                           ("served images (best concurrency)", served_img),
                           ("served images, int8 (best concurrency)", served_int8),
                           ("eager PyTorch image tower (best)", img_best)):
            if ips:
                add(f"| {label} | {fmt(ips)} | {fmt(ips * flops / 1e9)} | "
                    f"{100 * ips * flops / mm_ref:.0f}% |")
        add("")
        if img_best:
            add(f"Twice the eager baseline would need {fmt(2 * img_best * flops / 1e9)} "
                f"GFLOP/s, {2 * img_best * flops / mm_ref:.1f}x what the cores reach "
                f"on the product the network is made of in {ref_name}"
                + (f"; in int8, {100 * 2 * img_best * flops / mm_int8:.0f}% of that "
                   "product's rate over the whole network, where the int8 tower "
                   f"reaches {100 * (int8_32 or 0) * flops / mm_int8:.0f}% (the patch "
                   f"embedding and attention run in {int8_rest}; the norms, the "
                   "activations, "
                   "the softmax and each product's quantization of its input are "
                   "passes over memory)." if mm_int8 else "."))
            add("")

    # fp32 BLAS kernels.
    add("## fp32 kernels")
    add("")
    add("ViT-B-32 image tower, batch 32, fp32, by the OpenBLAS kernels forced with "
        "`OPENBLAS_CORETYPE` (clip_server picks the best the CPU supports at startup, "
        "see `--blas_kernel`):")
    add("")
    add("| OpenBLAS kernels | images/s | vs Prescott |")
    add("|---|---|---|")
    base = gbench(os.path.join(r, "blas_Prescott.json")).get(
        "BM_ImageTower/model:0/batch:32/bf16:0/real_time", (None,))[0]
    for core in ("Prescott", "Haswell", "SkylakeX"):
        if not os.path.exists(os.path.join(r, f"blas_{core}.json")):
            add(f"| {core} | not run: this CPU lacks its instructions | |")
            continue
        v = gbench(os.path.join(r, f"blas_{core}.json")).get(
            "BM_ImageTower/model:0/batch:32/bf16:0/real_time", (None,))[0]
        add(f"| {core} | {fmt(v)} | {fmt(ratio(v, base), 2)}x |")
    add("")

    # Model in process.
    add("## Model in process (items/s)")
    add("")
    add("`bench/model_benchmark`: preprocessed inputs straight into the towers, LibTorch "
        "with one intra-op thread per core. Text rows: every text 20 or 77 tokens. "
        "Each iteration gets new inputs, as served batches are. int8 rows: every "
        "transformer linear product in int8 (oneDNN's int8 matmul, the input quantized "
        f"per call), the rest in {int8_rest} as `--precision=auto` runs it here; RN50's "
        f"image tower has no transformer and runs exactly as the {int8_rest} row, so its "
        "difference from that row is this VM's noise. fp32 rows: on the OpenBLAS "
        "kernels clip_server picks (`--blas_kernel`).")
    add("")
    add("| model | tower | precision | batch 1 | batch 8 | batch 32 | batch 64 |")
    add("|---|---|---|---|---|---|---|")
    names = {0: "fp32", 1: "bf16", "int8": "int8"}
    for i, name in enumerate(MODELS):
        for bf16 in (0, 1, "int8"):
            cells = [fmt(tower("Image", i, b, bf16)[0]) for b in (1, 8, 32, 64)]
            if all(c == "n/a" for c in cells):
                continue
            add(f"| {name} | image | {names[bf16]} | " + " | ".join(cells) + " |")
    for bf16 in (0, 1, "int8"):
        for tokens in (20, 77):
            cells = [fmt(tower("Text", 0, b, bf16, tokens)[0]) for b in (1, 8, 32, 64)]
            if all(c == "n/a" for c in cells):
                continue
            add(f"| ViT-B-32 / B-16 / RN50 | text, {tokens} tokens | "
                f"{names[bf16]} | " + " | ".join(cells) + " |")
    add("")

    # Python baseline.
    add("## Eager PyTorch baseline (batch 32)")
    add("")
    add("`bench/python_baseline.py`: the reference networks of tests/reference in eager "
        "PyTorch (Debian's python3-torch, same LibTorch, thread count and OpenBLAS "
        "kernels), texts padded "
        "to 77 as `clip.tokenize` does. clipserve columns: the in-process towers above "
        "at batch 32.")
    add("")
    add("The `allocator` column: Python as installed (glibc malloc), and the same with "
        "`LD_PRELOAD` of the tcmalloc clip_server links, which on this VM removes most "
        "of the cost of faulting in freed activation memory. The headline ratios use "
        "the best row of either.")
    add("")
    add("| model | tower | precision | allocator | eager PyTorch | clipserve in process "
        "| ratio |")
    add("|---|---|---|---|---|---|---|")
    for p in python:
        i = MODELS.index(p["model"])
        bf16 = 1 if p["precision"] == "bf16" else 0
        if p["tower"] == "image":
            ours = tower("Image", i, 32, bf16)[0]
            label = "image"
        else:
            ours = tower("Text", 0, 32, bf16, p["text_tokens"])[0]
            label = f"text ({p['text_tokens']} real tokens)"
        add(f"| {p['model']} | {label} | {p['precision']} | {p.get('allocator', 'glibc')} | "
            f"{fmt(p['items_per_s'])} | "
            f"{fmt(ours)} | {fmt(ratio(ours, p['items_per_s']), 2)}x |")
    add("")

    # End to end.
    add("## End to end (clip_server + clip_client bench)")
    add("")
    add(f"ViT-B-32 demo model, default flags (`--precision=auto`: {served_precision} "
        "here) and `--text_cache_mb=0`; one "
        "item per request; images are synthetic 640x480 JPEG photos decoded and "
        "preprocessed by the server; texts are short captions, each made unique "
        "(`--unique_texts`: identical texts in one batch run once). Closed loop: each of C "
        "callers sends its next request when answered.")
    add("")
    add("| modality | concurrency | items/s | p50 ms | p99 ms | errors |")
    add("|---|---|---|---|---|---|")
    suffixes = {"served": "", "served_int8": ", `--precision=int8`"}
    for label, suffix in suffixes.items():
        for e in e2e:
            if e.get("label") != label:
                continue
            add(f"| {e['modality']}{suffix} | {e['concurrency']} | "
                f"{fmt(e['items_per_s'])} | {fmt(e['latency_ms']['p50'], 2)} | "
                f"{fmt(e['latency_ms']['p99'], 2)} | "
                f"{sum(e['errors'].values()) if e['errors'] else 0} |")
    add("")
    add("![throughput vs concurrency](performance.png)")
    add("")

    if paired:
        add("## Dynamic batching, side by side")
        add("")
        add("This VM's speed drifts by 10 to 20% over minutes, more than the margins of the "
            "two batching targets. So each round runs the in-process towers "
            f"({served_precision}) and then the served images seconds later; the headline "
            "rows use the median round.")
        add("")
        add("| round | in-process batch 32 images/s | served c=64 images/s | ratio | "
            "in-process batch 1 ms | served c=1 p50 ms | difference ms |")
        add("|---|---|---|---|---|---|---|")
        for i, p in enumerate(paired, 1):
            add(f"| {i} | {fmt(p['b32'])} | {fmt(p['c64'])} | "
                f"{fmt(ratio(p['c64'], p['b32']), 2)}x | {fmt(p['b1_ms'])} | "
                f"{fmt(p['c1_p50'])} | {fmt(p['c1_p50'] - p['b1_ms'])} |")
        add("")
        splits = [(i, p["split"]) for i, p in enumerate(paired, 1) if p["split"]]
        if splits:
            add("Where the served concurrency-1 time went, from the server's own metrics: "
                "means per image over each round's run, every batch one image. The "
                "client's p50 above also holds gRPC, the wait for a preprocessing thread "
                "and the reply. The last column compares a served mean with the in-process "
                "median, measured seconds apart.")
            add("")
            add("| round | decode + preprocess ms | queue wait ms | "
                "model run, batch 1 ms (stacking and copying included) | "
                "in-process batch 1 ms | model served minus in process ms |")
            add("|---|---|---|---|---|---|")
            for i, split in splits:
                b1 = paired[i - 1]["b1_ms"]
                add(f"| {i} | {fmt(split['preprocess'], 2)} | {fmt(split['queue_wait'], 2)} | "
                    f"{fmt(split['inference'])} | {fmt(b1)} | "
                    f"{fmt(split['inference'] - b1)} |")
            add("")

    # Memory.
    rss = {e["label"]: e["rss_mb"] for e in e2e if e.get("label") in ("rss_start", "rss_end")}
    rss_requests = sum(e.get("requests", 0) for e in e2e if e.get("label") == "rss")
    weights = vit_b32_weight_mb()
    add("## Memory")
    add("")
    phases = [e for e in e2e if e.get("label") == "rss"]
    add(f"ViT-B-32 in fp32 (`--precision=fp32`, default text cache): weights "
        f"{weights:.0f} MiB; target: RSS at most weights + 300 = {weights + 300:.0f} MiB, "
        f"and flat. {rss_requests:,} requests in all.")
    add("")
    add("| after | requests | RSS MiB |")
    add("|---|---|---|")
    add(f"| warm-up | 0 | {fmt(rss.get('rss_start'))} |")
    for e in phases:
        add(f"| {e['modality']} requests at concurrency {e['concurrency']} | "
            f"{e['requests']:,} | {fmt(e['rss_mb'])} |")
    add(f"| the end | | {fmt(rss.get('rss_end'))} |")
    add("")

    # Microbenchmarks.
    add("## Microbenchmarks")
    add("")
    add("Items are images for the image benchmarks, tokens for the tokenizer's encode "
        "benchmarks, queued items for the batcher's (a no-op model), and rows for the "
        "kernel benchmarks (ViT-B-32 batch-32 shapes: a LayerNorm feeding an int8 "
        "product, with the range it quantizes with; the attention softmax; the MLP's "
        "QuickGELU on its 3072-wide hidden rows; the MLP's first bf16 product on 50 "
        "rows, a batch of one image, and 1600, of 32; `ours:0` is LibTorch's ops, "
        "`ours:1` clipserve's kernel; that product and its QuickGELU, `fused:0` as two "
        "passes, `fused:1` with the activation inside the product, as the towers run "
        "it).")
    add("")
    add("| benchmark | what | items/s | time per iteration |")
    add("|---|---|---|---|")
    for f in ("tokenizer", "image", "batcher", "kernel"):
        for name, (ips, ms, label) in sorted(gbench(os.path.join(r, f + ".json")).items()):
            add(f"| {name} | {label} | {fmt(ips)} | {fmt(ms, 3)} ms |")
    add("")

    # GPU.
    add("## GPU")
    add("")
    gpu_table = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_results.md")
    if os.path.exists(gpu_table):
        with open(gpu_table) as f:
            add(f.read().strip())
    else:
        add("Not measured yet: no machine with an NVIDIA GPU has run "
            "`scripts/gpu-check.sh` (see docs/OPERATIONS.md). Its table goes into "
            "`bench/gpu_results.md`, which this report then includes.")
    add("")

    # Threads.
    add("## Threads")
    add("")
    add("- LibTorch intra-op threads (`--intra_op_threads`, default 0 = one per CPU the "
        "process may use: its affinity mask, or its cgroup's CPU limit where smaller): a "
        "batch is the one piece of work that should use every core.")
    add("- Batch workers per modality (`--workers`, default 0 = 1 on the CPU, 2 per GPU): "
        "they form and answer batches. On the CPU every model run goes through one "
        "model-runner thread (text batches before waiting image batches), so batches "
        "never fight for the cores and LibTorch keeps a single OpenMP team: with more "
        "OpenMP threads than CPUs, GNU libgomp stops spin-waiting between parallel "
        "regions and each region pays a futex wake-up (a served caption's model run "
        "took 11.2 ms instead of 9.6 before the runner).")
    add("- Preprocessing threads (`--preprocess_threads`, default 2): decoding and "
        "tokenizing overlap with the model run; they mostly wait on it, so they do not "
        "oversubscribe the cores in practice.")
    add("- gRPC's own threads only parse and hand off requests.")
    add("")

    if not_run:
        lines[not_run_at:not_run_at] = ["", "Not run on this machine: " + "; ".join(
            f"{name} ({reason})" for name, reason in sorted(not_run.items())) + "."]

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "PERFORMANCE.md"), "w") as f:
        f.write("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, suffix, style in (("served", "", "-"), ("served_int8", ", int8", ":")):
        for modality, marker, color in (("image", "o", "C0"), ("text", "s", "C1")):
            points = sorted((e["concurrency"], e["items_per_s"]) for e in e2e
                            if e.get("label") == label and e["modality"] == modality)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                        linestyle=style, color=color, label=f"{modality}s/s served{suffix}")
    if img_best:
        ax.axhline(img_best, linestyle="--", color="C0", alpha=0.6,
                   label="eager PyTorch image tower, batch 32")
    if txt_best:
        ax.axhline(txt_best, linestyle="--", color="C1", alpha=0.6,
                   label="eager PyTorch text tower, batch 32")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers (one item per request)")
    ax.set_ylabel("items per second")
    ax.set_title(f"clipserve ViT-B-32 on {m['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "performance.png"), dpi=110)


if __name__ == "__main__":
    main()
