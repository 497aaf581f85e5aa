#!/usr/bin/python3
"""The baseline clipserve has to beat: CLIP in eager PyTorch, as a Python user runs it.

Builds ViT-B-32, ViT-B-16 and RN50 from clipserve's reference implementation
(tests/reference/clip_reference.py, the same networks the C++ model is tested
against) with random weights, and times the image tower on preprocessed images and
the text tower on texts padded to the 77-token context (as clip.tokenize does), at
one batch size, in fp32 and under bf16 autocast, with torch.set_num_threads(N).
Prints one JSON object per line:

  {"model": "ViT-B-32", "tower": "image", "precision": "bf16", "batch": 32,
   "threads": 2, "items_per_s": ..., "runs_s": [...]}

items_per_s is batch / median(run seconds). Run with Debian's interpreter:
  /usr/bin/python3 bench/python_baseline.py [--models ViT-B-32] [--batch 32]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "reference"))
import clip_reference  # noqa: E402

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
            "layers": 12}
CONFIGS = {
    "ViT-B-32": {"embed_dim": 512, "quick_gelu": True, "text_cfg": TEXT_CFG,
                 "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                "patch_size": 32}},
    "ViT-B-16": {"embed_dim": 512, "quick_gelu": True, "text_cfg": TEXT_CFG,
                 "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                "patch_size": 16}},
    "RN50": {"embed_dim": 1024, "quick_gelu": True, "text_cfg": TEXT_CFG,
             "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64}},
}


def time_runs(fn, runs, warmup=1):
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--towers", nargs="+", default=["image", "text"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text_tokens", type=int, default=77,
                        help="real tokens per text (start and end included); the "
                             "batch is always padded to the 77-token context")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--allocator", default="glibc",
                        help="label for the malloc in use (e.g. tcmalloc via LD_PRELOAD)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models:
        model = clip_reference.build_model(CONFIGS[name]).eval()
        clip_reference.init_random_(model, torch.Generator().manual_seed(0))
        size = CONFIGS[name]["vision_cfg"]["image_size"]
        images = torch.randn(args.batch, 3, size, size)
        texts = torch.zeros(args.batch, 77, dtype=torch.long)
        texts[:, 1:args.text_tokens - 1] = torch.randint(
            1, 49405, (args.batch, args.text_tokens - 2))
        texts[:, 0] = clip_reference.SOT_TOKEN
        texts[:, args.text_tokens - 1] = clip_reference.EOT_TOKEN
        for tower in args.towers:
            if tower == "image":
                fn = lambda: model.encode_image(images)  # noqa: E731
            else:
                fn = lambda: model.encode_text(texts)  # noqa: E731
            for precision in args.precisions:
                with torch.inference_mode(), torch.autocast(
                        "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    runs = time_runs(fn, args.runs)
                print(json.dumps({
                    "model": name, "tower": tower, "precision": precision,
                    "batch": args.batch, "threads": args.threads,
                    "allocator": args.allocator,
                    "text_tokens": args.text_tokens if tower == "text" else None,
                    "items_per_s": args.batch / statistics.median(runs),
                    "runs_s": [round(s, 4) for s in runs]}), flush=True)


if __name__ == "__main__":
    main()
