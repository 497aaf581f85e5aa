#!/usr/bin/python3
"""Peak memory of clip_server under many concurrent large requests, with and without
--max_request_memory_mb.

    /usr/bin/python3 bench/request_memory.py [--server build/bin/clip_server]
        [--model demo:ViT-B-16] [--calls 32] [--images 4] [--side 2000]
        [--limits 0,256]

For each limit, starts clip_server on `--model`, reads its resident memory once it
is serving, then sends `--calls` EmbedImage requests at once, each of `--images` raw RGB
images of side x side pixels (4 x 2000 x 2000 x 3 bytes: 48 MB per request by
default), without retrying. Prints a Markdown table: the limit, the server's RSS before
the burst, its peak RSS during the burst (VmHWM, reset first; Linux), the calls answered OK and those refused with
RESOURCE_EXHAUSTED. Needs python3-grpcio, protobuf-compiler-grpc and the gogo
googleapis protos (scripts/install-deps.sh installs them).
"""

import argparse
import concurrent.futures
import os
import sys
import time

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
import clipserve_testlib as lib  # noqa: E402


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def run(args, limit_mb, pb, pb_grpc, health_pb, health_grpc):
    server = lib.Server(args.server, f"--model={args.model}",
                        f"--max_request_memory_mb={limit_mb}")
    try:
        channel = server.wait_ready(health_pb, health_grpc, timeout_s=300)
        stub = pb_grpc.ClipServiceStub(channel)
        # Warm the path once (first-call allocations), then take the resting RSS.
        small = pb.EmbedImageRequest()
        small.images.add().raw.CopyFrom(pb.RawImage(width=2, height=2, rgb8=b"\x80" * 12))
        stub.EmbedImage(small, timeout=120)
        rest_kib = status_kib(server.process.pid, "VmRSS")
        # Resets VmHWM to the current RSS (Linux 4.0+), so the peak below is the
        # burst's, not the model load's.
        with open(f"/proc/{server.process.pid}/clear_refs", "w") as f:
            f.write("5")

        request = pb.EmbedImageRequest()
        pixels = bytes(range(256)) * (args.side * args.side * 3 // 256 + 1)
        for _ in range(args.images):
            request.images.add().raw.CopyFrom(pb.RawImage(
                width=args.side, height=args.side,
                rgb8=pixels[:args.side * args.side * 3]))
        payload_mb = request.ByteSize() / 1e6

        codes = {}
        # One channel per call, each with a connection of its own (gRPC would share one
        # subchannel between channels with the same arguments), as separate clients.
        channels = [grpc.insecure_channel(
            server.target, options=[("grpc.max_send_message_length", 64 << 20),
                                    ("grpc.use_local_subchannel_pool", 1)])
            for _ in range(args.calls)]

        def call(i):
            try:
                pb_grpc.ClipServiceStub(channels[i]).EmbedImage(request, timeout=600)
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.calls) as pool:
            for code in pool.map(call, range(args.calls)):
                codes[code] = codes.get(code, 0) + 1
        elapsed = time.monotonic() - start
        for c in channels:
            c.close()
        peak_kib = status_kib(server.process.pid, "VmHWM")
        return rest_kib, peak_kib, codes, payload_mb, elapsed
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.path.join(ROOT, "build/bin/clip_server"))
    parser.add_argument("--proto_dir", default=os.path.join(ROOT, "proto"))
    parser.add_argument("--googleapis_dir",
                        default="/usr/share/gocode/src/github.com/gogo/googleapis")
    # A model slower than the uploads, so that calls pile up in the server.
    parser.add_argument("--model", default="demo:ViT-B-16")
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=2000)
    parser.add_argument("--limits", default="0,256",
                        help="comma-separated --max_request_memory_mb values")
    args = parser.parse_args()

    lib.compile_stubs(args.proto_dir, args.googleapis_dir)
    pb, pb_grpc = lib.import_clipserve()
    health_pb, health_grpc = lib.import_health()

    print(f"{args.model}: {args.calls} concurrent EmbedImage calls, {args.images} raw "
          f"{args.side}x{args.side} images each\n")
    print("| --max_request_memory_mb | request MB | RSS at rest MiB | peak RSS MiB "
          "| OK | RESOURCE_EXHAUSTED | other | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for limit in args.limits.split(","):
        rest, peak, codes, payload_mb, elapsed = run(
            args, limit, pb, pb_grpc, health_pb, health_grpc)
        other = sum(n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED"))
        print(f"| {limit} | {payload_mb:.1f} | {rest / 1024:.0f} | {peak / 1024:.0f} "
              f"| {codes.get('OK', 0)} | {codes.get('RESOURCE_EXHAUSTED', 0)} | {other} "
              f"| {elapsed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
