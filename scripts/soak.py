#!/usr/bin/python3
"""Soak test (not in CI): clip_server under steady load for a long time.

Starts clip_server (ViT-B-32 demo unless --server_flags says otherwise), measures its
capacity for one-image requests, then sends an open-loop mix at --load (default 80%)
of that rate for --minutes (default 10): good images, good texts, and hostile inputs
(a non-image, a truncated JPEG, an empty request, an over-long text without
truncation), each hostile call expected to fail with INVALID_ARGUMENT and nothing
else. Every --window seconds it records p50/p99 latency of the good calls,
error counts by code, and the server's RSS; at the end it prints a Markdown table and
judges flatness: last-window p99 within 1.5x of the first, RSS growth within 10%.

  /usr/bin/python3 scripts/soak.py [--minutes 10] [--load 0.8] [--out soak.json]
Run it from the repository root after building (build/bin/clip_server).
"""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from concurrent import futures

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import clipserve_testlib as lib  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.path.join(ROOT, "build", "bin", "clip_server"))
    parser.add_argument("--server_flags", nargs="*", default=["--model=demo:ViT-B-32"])
    parser.add_argument("--images", default=os.path.join(ROOT, "..", "shared", "images"))
    parser.add_argument("--googleapis_dir", default="/usr/share/gocode/src/github.com/gogo/googleapis")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--bad_fraction", type=float, default=0.1)
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "soak.json"))
    args = parser.parse_args()
    if not (args.window > 0 and args.minutes * 60 > args.window):
        parser.error("--window must be > 0 and --minutes must last longer than one window")
    if not (0 < args.load <= 1 and 0 <= args.bad_fraction <= 1):
        parser.error("--load must be in (0, 1] and --bad_fraction in [0, 1]")

    lib.compile_stubs(os.path.join(ROOT, "proto"), args.googleapis_dir)
    health_pb, health_grpc = lib.import_health()
    pb, pb_grpc = lib.import_clipserve()
    server = lib.Server(args.server, "--text_cache_mb=0", *args.server_flags)
    try:
        channel = server.wait_ready(health_pb, health_grpc, timeout_s=300)
        stub = pb_grpc.ClipServiceStub(channel)
        read = lambda name: open(os.path.join(args.images, name), "rb").read()  # noqa: E731
        good_images = [read(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
        good = [
            lambda: stub.EmbedImage(pb.EmbedImageRequest(
                images=[pb.Image(encoded=random.choice(good_images))]), timeout=60),
            lambda: stub.EmbedText(pb.EmbedTextRequest(
                texts=[f"a photo of thing {random.randrange(10**9)}"]), timeout=60),
        ]
        bad = [
            lambda: stub.EmbedImage(pb.EmbedImageRequest(
                images=[pb.Image(encoded=read("not_an_image.jpg"))]), timeout=60),
            lambda: stub.EmbedImage(pb.EmbedImageRequest(
                images=[pb.Image(encoded=read("truncated.jpg"))]), timeout=60),
            lambda: stub.EmbedText(pb.EmbedTextRequest(texts=[]), timeout=60),
            lambda: stub.EmbedText(pb.EmbedTextRequest(
                texts=["word " * 200], truncate=False), timeout=60),
        ]

        # Capacity: closed loop, 16 callers, one image per call, 20 s.
        done, failed, stop = [0], [0], threading.Event()
        counts_lock = threading.Lock()

        def closed_loop():
            while not stop.is_set():
                try:
                    good[0]()
                except grpc.RpcError:  # counted, so a failing server shows, not hides
                    with counts_lock:
                        failed[0] += 1
                    continue
                with counts_lock:
                    done[0] += 1
        pool = [threading.Thread(target=closed_loop) for _ in range(16)]
        for t in pool:
            t.start()
        time.sleep(20)
        stop.set()
        for t in pool:
            t.join()
        capacity = done[0] / 20.0
        if failed[0] or not capacity:
            sys.exit(f"capacity run: {done[0]} calls answered, {failed[0]} failed")
        rate = capacity * args.load
        print(f"capacity {capacity:.1f} images/s; soaking at {rate:.1f} requests/s "
              f"for {args.minutes} min", flush=True)

        windows, lock = [], threading.Lock()
        current = {"latency": [], "codes": {}, "unexpected": 0}

        def call(is_bad):
            fn = random.choice(bad if is_bad else good)
            start = time.monotonic()
            try:
                fn()
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            elapsed = (time.monotonic() - start) * 1000
            with lock:
                current["codes"][code] = current["codes"].get(code, 0) + 1
                if is_bad and code != "INVALID_ARGUMENT":
                    current["unexpected"] += 1
                elif not is_bad:
                    if code == "OK":
                        current["latency"].append(elapsed)
                    else:
                        current["unexpected"] += 1

        executor = futures.ThreadPoolExecutor(max_workers=256)
        start = time.monotonic()
        next_window = start + args.window
        sent = 0
        while time.monotonic() - start < args.minutes * 60:
            due = start + sent / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            executor.submit(call, random.random() < args.bad_fraction)
            sent += 1
            if time.monotonic() >= next_window:
                with lock:
                    lat = current["latency"]
                    windows.append({
                        "t_s": round(time.monotonic() - start),
                        "ok": len(lat),
                        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                        "codes": dict(current["codes"]),
                        "unexpected": current["unexpected"],
                        "rss_mb": rss_mb(server.process.pid)})
                    print(json.dumps(windows[-1]), flush=True)
                    current.update(latency=[], codes={}, unexpected=0)
                next_window += args.window
        executor.shutdown(wait=True)
        code, _ = server.terminate(timeout_s=120)
    finally:
        server.kill()

    if not windows:  # the run ended as its only window did, before recording it
        sys.exit("no window was recorded: give --minutes more than one --window")
    first, last = windows[0], windows[-1]
    # A window without a good call has no p99: that is no flat latency either.
    p99_ok = (first["p99_ms"] is not None and last["p99_ms"] is not None
              and last["p99_ms"] <= 1.5 * first["p99_ms"])
    rss_ok = last["rss_mb"] <= 1.1 * first["rss_mb"]
    unexpected = sum(w["unexpected"] for w in windows)
    result = {"capacity_images_per_s": capacity, "rate_per_s": rate,
              "minutes": args.minutes, "windows": windows, "exit_code": code,
              "p99_flat": p99_ok, "rss_flat": rss_ok, "unexpected": unexpected}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("\n| t (s) | good OK | p50 ms | p99 ms | RSS MiB | unexpected |")
    print("|---|---|---|---|---|---|")
    def ms(value):
        return "-" if value is None else f"{value:.1f}"
    for w in windows:
        print(f"| {w['t_s']} | {w['ok']} | {ms(w['p50_ms'])} | {ms(w['p99_ms'])} | "
              f"{w['rss_mb']:.0f} | {w['unexpected']} |")
    print(f"\ncapacity {capacity:.1f}/s, load {rate:.1f}/s; p99 flat: {p99_ok}; "
          f"RSS flat: {rss_ok}; unexpected outcomes: {unexpected}; exit code {code}")
    sys.exit(0 if p99_ok and rss_ok and unexpected == 0 and code == 0 else 1)


if __name__ == "__main__":
    main()
