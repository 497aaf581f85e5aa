"""A Python gRPC client finds a real clip_server SERVING, reflected, and stoppable.

Usage: /usr/bin/python3 server_smoke_test.py --server PATH --client PATH
           --proto_dir DIR --googleapis_dir DIR [TestClass ...]
ctest runs each test class as its own entry (tests/CMakeLists.txt).
"""

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.request

import grpc
import numpy as np

import clipserve_testlib as lib

ARGS = None


class ServerSmokeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        cls.health_pb, cls.health_grpc = lib.import_health()
        cls.refl_pb, cls.refl_grpc = lib.import_reflection()

    def setUp(self):
        self.server = lib.Server(ARGS.server)
        self.addCleanup(self.server.kill)
        self.channel = self.server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(self.channel.close)

    def test_health_serving_for_server_and_service(self):
        stub = self.health_grpc.HealthStub(self.channel)
        for service in ("", "clipserve.v1.ClipService"):
            reply = stub.Check(self.health_pb.HealthCheckRequest(service=service), timeout=5)
            self.assertEqual(reply.status, self.health_pb.HealthCheckResponse.SERVING, service)

    def test_reflection_lists_clip_service(self):
        stub = self.refl_grpc.ServerReflectionStub(self.channel)
        request = self.refl_pb.ServerReflectionRequest(list_services="*")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        self.assertEqual(len(replies), 1)
        names = [s.name for s in replies[0].list_services_response.service]
        self.assertIn("clipserve.v1.ClipService", names)
        self.assertIn("grpc.health.v1.Health", names)

    def test_reflection_serves_the_contract(self):
        stub = self.refl_grpc.ServerReflectionStub(self.channel)
        request = self.refl_pb.ServerReflectionRequest(
            file_containing_symbol="clipserve.v1.ClipService")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        from google.protobuf import descriptor_pb2
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in reply.file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in files for s in f.service if s.name == "ClipService"
                   for m in s.method}
        self.assertEqual(methods, {"EmbedImage", "EmbedText", "Similarity", "Classify",
                                   "EmbedStream", "Tokenize", "GetModelInfo"})

    def test_clip_client_health_exits_zero(self):
        result = subprocess.run([ARGS.client, "--target", self.server.target, "health"],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "SERVING")

    def test_sigterm_exits_zero(self):
        code, output = self.server.terminate()
        self.assertEqual(code, 0, output)
        self.assertIn("received SIGTERM", output)


# For a server that is to fail before it serves: not the default port. A bind to
# 0.0.0.0:50051 fails while any connection on this machine has 50051 as its local
# (ephemeral) port, or had it in the last minute (TIME_WAIT), and these tests' clients
# open thousands of connections.
LOOPBACK_ANY_PORT = ("--host=127.0.0.1", "--port=0")


class UsageTest(unittest.TestCase):

    def test_help_lists_every_flag_with_its_default(self):
        # Abseil's --help shows only flags from a file named after the program unless
        # told otherwise; clip_server's live in server/main.cc.
        main_cc = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "..", "..", "server", "main.cc")
        with open(main_cc) as f:
            names = re.findall(r"^ABSL_FLAG\(\s*[\w:]+,\s*(\w+),", f.read(), re.M)
        self.assertGreater(len(names), 20)
        result = subprocess.run([ARGS.server, "--help"], capture_output=True, text=True,
                                timeout=30)
        # Help asked for is no failure (Abseil 20220623 itself exits 1).
        self.assertEqual(result.returncode, 0, result.stderr)
        output = result.stdout + result.stderr
        self.assertNotIn("No flags matched", output)
        for name in names:
            self.assertRegex(output, rf"--{name} \(", name)
        # And the README's table of flags has a row for each.
        with open(os.path.join(os.path.dirname(main_cc), "..", "README.md")) as f:
            readme = f.read()
        for name in names:
            self.assertRegex(readme, rf"(?m)^\| [^|]*`--{name}`[^|]*\|", name)
        self.assertRegex(output, r"--max_batch_size \([^)]*\); default: 32;")


    def test_a_word_that_is_not_a_flag_is_refused(self):
        # Abseil leaves such words unread: "--resize_on_device false" would turn the
        # flag on, and a checkpoint path without --model= would serve the demo model.
        for args in (["model.pt"], ["--resize_on_device", "false"]):
            result = subprocess.run([ARGS.server, *LOOPBACK_ANY_PORT, *args],
                                    capture_output=True, text=True, timeout=30)
            self.assertEqual(result.returncode, 1, args)
            self.assertIn(f"clip_server: unexpected argument '{args[-1]}': give flags as "
                          "--name=value", result.stderr, args)
            self.assertNotIn("loading model", result.stderr, args)


class TokenizerFlagTest(unittest.TestCase):
    """--tokenizer names files that exist; the server logs what it read."""

    VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                         "third_party", "clip", "bpe_simple_vocab_16e6.txt.gz")

    def run_server(self, tokenizer):
        server = lib.Server(ARGS.server, f"--tokenizer={tokenizer}")
        self.addCleanup(server.kill)
        return server

    def test_a_path_that_is_not_there_is_refused_not_read_beside(self):
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(self.VOCAB, folder)
            for typo in ("custom_tokenzier", "vocab.jsn"):
                server = self.run_server(os.path.join(folder, typo))
                code = server.process.wait(timeout=120)
                output = server.output()
                self.assertEqual(code, 1, output)
                self.assertIn(f"--tokenizer={folder}/{typo}: no such file or folder",
                              output)
                # Before the model load, which may take minutes for a large one.
                self.assertNotIn("loading model", output)
            # A file that is there but no tokenizer's is refused too.
            other = os.path.join(folder, "notes.txt")
            with open(other, "w") as f:
                f.write("not a vocabulary")
            server = self.run_server(other)
            self.assertEqual(server.process.wait(timeout=120), 1, server.output())
            self.assertIn(f"--tokenizer={other} is no tokenizer file", server.output())
            # Half of a Hugging Face pair is not completed by another tokenizer there.
            vocab = os.path.join(folder, "vocab.json")
            with open(vocab, "w") as f:
                f.write("{}")
            server = self.run_server(vocab)
            self.assertEqual(server.process.wait(timeout=120), 1, server.output())
            self.assertIn(f"{folder}/merges.txt, its other half, is not there",
                          server.output())
            os.remove(vocab)
            # The folder itself is read, and the log names the file.
            server = self.run_server(folder)
            server.wait_for_log(re.escape(
                f"tokenizer: {folder}/bpe_simple_vocab_16e6.txt.gz"))


    def test_a_folder_the_server_may_not_search_is_permission_denied(self):
        # Not a missing file: the operator has a permission to fix. Root reads files
        # whatever their mode: as root, the server runs as nobody.
        folder = tempfile.mkdtemp(prefix="clip_server_locked_tokenizer_")
        self.addCleanup(shutil.rmtree, folder)
        os.chmod(folder, 0o755)
        locked = os.path.join(folder, "locked")
        os.mkdir(locked)
        shutil.copy(self.VOCAB, locked)
        os.chmod(locked, 0)
        self.addCleanup(os.chmod, locked, 0o755)
        for name in ("vocab.json", "bpe_simple_vocab_16e6.txt.gz"):
            tokenizer = os.path.join(locked, name)
            try:
                result = subprocess.run(
                    [ARGS.server, *LOOPBACK_ANY_PORT, f"--tokenizer={tokenizer}"],
                    capture_output=True, text=True, timeout=60,
                    user=65534 if os.geteuid() == 0 else None)
            except PermissionError:  # a checkout nobody may enter
                self.skipTest("nobody cannot run the server from this checkout")
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertIn(f"PERMISSION_DENIED: cannot read tokenizer (--tokenizer) "
                          f"'{tokenizer}': Permission denied", result.stderr)


class SignalTest(unittest.TestCase):
    """SIGTERM during start-up, and a second one during the drain, end the process."""

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)

    def test_sigterm_during_start_up_exits_at_once(self):
        # ViT-L-14's random weights take many seconds to build: the signal lands then.
        server = lib.Server(ARGS.server, "--model=demo:ViT-L-14")
        self.addCleanup(server.kill)
        server.wait_for_log(re.escape("metrics, /healthz and /readyz on"))
        code, output = server.terminate(timeout_s=10)
        self.assertEqual(code, 128 + signal.SIGTERM, output)
        self.assertIn("received SIGTERM during start-up", output)

    def test_sighup_drains_like_sigterm(self):
        # A server started by hand in a terminal or SSH session that closes.
        server = lib.Server(ARGS.server)
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        channel.close()
        server.process.send_signal(signal.SIGHUP)
        code = server.process.wait(timeout=60)
        output = server.output()
        self.assertEqual(code, 0, output)
        self.assertIn("received SIGHUP, draining for up to", output)

    def test_sighup_is_ignored_under_nohup(self):
        # As nohup does: SIGHUP ignored when the server starts (exec keeps an ignored
        # signal ignored); the session's end must not stop it.
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            server = lib.Server(ARGS.server)
        finally:
            signal.signal(signal.SIGHUP, previous)
        self.addCleanup(server.kill)
        server.wait_ready(self.health_pb, self.health_grpc).close()
        server.process.send_signal(signal.SIGHUP)
        channel = server.wait_ready(self.health_pb, self.health_grpc)  # still serving
        channel.close()
        self.assertIsNone(server.process.poll())
        self.assertNotIn("received SIGHUP", server.output())

    def test_a_crash_writes_its_signal_and_stack(self):
        server = lib.Server(ARGS.server)
        self.addCleanup(server.kill)
        server.wait_ready(self.health_pb, self.health_grpc).close()
        server.process.send_signal(signal.SIGSEGV)
        code = server.process.wait(timeout=60)
        output = server.output()
        self.assertEqual(code, -signal.SIGSEGV, output)
        self.assertRegex(output, r"\*\*\* SIGSEGV .*received by PID")

    def test_second_sigterm_during_the_drain_exits_at_once(self):
        server = lib.Server(ARGS.server, "--shutdown_grace_s=600")
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(channel.close)
        release = threading.Event()
        self.addCleanup(release.set)

        def requests():
            yield self.pb.EmbedStreamRequest(id="t", text="a cat")
            release.wait(120)  # the stream stays open through the drain

        replies = self.pb_grpc.ClipServiceStub(channel).EmbedStream(requests(), timeout=120)
        self.assertEqual(next(replies).id, "t")
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log(re.escape("draining for up to"))
        code, output = server.terminate(timeout_s=10)  # the second SIGTERM
        self.assertEqual(code, 128 + signal.SIGTERM, output)
        self.assertIn("received SIGTERM again while draining", output)

    def test_flag_mistakes_fail_before_the_model_load(self):
        # ViT-L-14 takes many seconds to build: each mistake must be caught first.
        for flags in (["--max_batch_size=0"], ["--max_queue_size=4", "--max_batch_size=8"],
                      ["--max_items_per_request=2000"], ["--port=70000"],
                      ["--port=50999", "--metrics_port=50999"], ["--max_text_bytes=0"],
                      ["--max_request_memory_mb=63"], ["--max_request_memory_mb=-1"],
                      ["--text_cache_mb=1e-9"], ["--max_connection_age_s=-1"],
                      ["--keepalive_timeout_s=0"], ["--keepalive_time_s=nan"],
                      ["--min_client_ping_interval_s=3e6"],
                      ["--max_connection_age_s=1e-10"], ["--max_concurrent_streams=-1"],
                      ["--exit_after_unhealthy_s=-1"],
                      ["--max_request_memory_per_client_mb=32"],
                      ["--max_request_memory_per_client_mb=512"],
                      ["--max_request_memory_per_client_mb=-1"],
                      ["--max_message_bytes=0"], ["--precision=fp16"],
                      ["--device=cuda", "--precision=int8"],
                      ["--max_queue_delay_ms=-1"], ["--max_queue_delay_ms=nan"],
                      ["--preprocess_threads=0"], ["--preprocess_threads=100000"],
                      ["--workers=-1"], ["--workers=1000"], ["--intra_op_threads=-1"],
                      ["--metrics_port=70000"], ["--metrics_port=-2"],
                      ["--max_image_pixels=1000000001"], ["--batch_watchdog_s=-1"],
                      # Flags that only tune another feature, given without it.
                      ["--max_connection_age_grace_s=60"],
                      ["--device_resize_buffer_mb=64"],
                      ["--keepalive_time_s=0", "--keepalive_timeout_s=5"],
                      ["--metrics_port=-1", "--metrics_host=::1"],
                      ["--max_items_per_request=0"], ["--max_image_pixels=0"],
                      ["--metrics_host="], ["--device=cuda:64"]):
            # A port of its own for the metrics endpoint, which starts before some checks.
            result = subprocess.run([ARGS.server, "--model=demo:ViT-L-14", *LOOPBACK_ANY_PORT,
                                     "--metrics_host=127.0.0.1", "--metrics_port=0", *flags],
                                    capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 1, flags)
            self.assertIn("clip_server failed: INVALID_ARGUMENT", result.stderr, flags)
            # The message names the flag that is wrong (the last one given), as spelled.
            self.assertIn(flags[-1].split("=")[0],
                          result.stderr.split("clip_server failed:")[1], flags)
            # Found before the model load starts. (Not a time bound: with 2 cores shared
            # by parallel tests, "under 4 s" failed.)
            self.assertNotIn("loading model", result.stderr, flags)

    def warnings_before_a_port_mistake(self, flag):
        """stderr of a start with `flag` that a port mistake ends before the model load:
        what the flag checks log, without a server to stop."""
        result = subprocess.run([ARGS.server, "--model=demo:ViT-L-14", "--host=127.0.0.1",
                                 "--port=50999", "--metrics_port=50999", flag],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1, result.stderr)
        return result.stderr

    def test_one_item_per_request_warns_that_classify_cannot_work(self):
        # Classify needs two labels, so such a server refuses every Classify call.
        self.assertIn("--max_items_per_request=1 refuses every Classify call",
                      self.warnings_before_a_port_mistake("--max_items_per_request=1"))
        self.assertNotIn("refuses every Classify call",
                         self.warnings_before_a_port_mistake("--max_items_per_request=2"))

    def test_more_intra_op_threads_than_usable_cpus_warns(self):
        # The CPUs this process may use: its affinity, or a smaller cgroup limit; one
        # more than the affinity is past either.
        too_many = len(os.sched_getaffinity(0)) + 1
        for threads, warned in ((too_many, True), (1, False)):
            stderr = self.warnings_before_a_port_mistake(f"--intra_op_threads={threads}")
            self.assertEqual(f"--intra_op_threads={threads} is more than the" in stderr,
                             warned, stderr)

    def test_a_message_limit_no_answer_fits_in_fails_after_the_load(self):
        # The demo ViT-B-32's 512-wide embeddings take 2 KiB and more in one response.
        result = subprocess.run([ARGS.server, "--model=demo:ViT-B-32", "--port=0",
                                 "--metrics_host=127.0.0.1", "--metrics_port=0",
                                 "--max_message_bytes=1000"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertRegex(result.stderr, r"clip_server failed: INVALID_ARGUMENT: "
                         r"--max_message_bytes \(1000\) is less than a one-item response "
                         r"of this model takes \(\d+ bytes\)")
        self.assertNotIn("serving on", result.stderr)

    def test_a_port_in_use_fails_before_the_model_load(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = subprocess.run([ARGS.server, "--model=demo:ViT-L-14",
                                     "--host=127.0.0.1", f"--port={port}",
                                     "--metrics_host=127.0.0.1", "--metrics_port=0"],
                                    capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"clip_server failed: UNAVAILABLE: --host and --port: cannot listen "
                      f"on 127.0.0.1:{port}: Address already in use", result.stderr)
        self.assertNotIn("loading model", result.stderr)

    def test_a_device_this_build_cannot_use_fails_before_the_model_load(self):
        # No machine here has 64 GPUs; a build without CUDA (CI's) has none at all.
        result = subprocess.run([ARGS.server, "--model=demo:ViT-L-14", "--device=cuda:63",
                                 *LOOPBACK_ANY_PORT, "--metrics_host=127.0.0.1",
                                 "--metrics_port=0"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1)
        self.assertIn("clip_server failed: UNAVAILABLE: cuda", result.stderr)
        self.assertNotIn("loading model", result.stderr)

    def test_a_grace_that_is_not_a_number_fails_at_once(self):
        for grace in ("nan", "-1", "inf"):
            result = subprocess.run([ARGS.server, *LOOPBACK_ANY_PORT,
                                     f"--shutdown_grace_s={grace}"],
                                    capture_output=True, text=True, timeout=30)
            self.assertEqual(result.returncode, 1, grace)
            self.assertIn("--shutdown_grace_s must be 0 to 3600 seconds", result.stderr)


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


class UnhealthyExitTest(unittest.TestCase):
    """--exit_after_unhealthy_s ends a server whose health stays NOT_SERVING."""

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)

    def test_a_batch_stuck_past_the_watchdog_ends_the_process(self):
        # One batch of 256 ViT-B/16 images in fp32 on one thread runs for a minute here,
        # and for many seconds on the fastest core; a watchdog of 0.1 s calls it stuck,
        # and one second of NOT_SERVING ends the process long before it would finish.
        server = lib.Server(ARGS.server, "--model=demo:ViT-B-16", "--precision=fp32",
                            "--batch_watchdog_s=0.1",
                            "--exit_after_unhealthy_s=1", "--intra_op_threads=1",
                            "--max_batch_size=256", "--max_queue_size=256",
                            "--max_queue_delay_ms=10000")
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(channel.close)
        gray = self.pb.Image(raw=self.pb.RawImage(width=224, height=224,
                                                  rgb8=bytes([128]) * (224 * 224 * 3)))
        call = self.pb_grpc.ClipServiceStub(channel).EmbedImage.future(
            self.pb.EmbedImageRequest(images=[gray] * 256), timeout=300)
        code = server.process.wait(timeout=120)
        output = server.output()
        self.assertEqual(code, 70, output)
        self.assertRegex(output, r"health is now NOT_SERVING(.|\n)*health has been "
                                 r"NOT_SERVING for .* \(--exit_after_unhealthy_s\): "
                                 r"exiting with status 70")
        with self.assertRaises(grpc.RpcError):
            call.result()


class ConnectionFlagsTest(unittest.TestCase):
    """The connection management flags reach gRPC."""

    @classmethod
    def setUpClass(cls):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        cls.health_pb, cls.health_grpc = lib.import_health()

    def test_max_connection_age_ends_a_call_after_the_grace(self):
        # A Health Watch never ends on its own; an old connection's does, with UNAVAILABLE.
        server = lib.Server(ARGS.server, "--max_connection_age_s=0.5",
                            "--max_connection_age_grace_s=0.5")
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(channel.close)
        watch = self.health_grpc.HealthStub(channel).Watch(
            self.health_pb.HealthCheckRequest(service=""), timeout=30)
        self.assertEqual(next(watch).status, self.health_pb.HealthCheckResponse.SERVING)
        with self.assertRaises(grpc.RpcError) as caught:
            next(watch)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         caught.exception.details())

    def test_max_concurrent_streams_makes_a_connections_next_call_wait(self):
        server = lib.Server(ARGS.server, "--max_concurrent_streams=1")
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(channel.close)
        stub = self.health_grpc.HealthStub(channel)
        watch = stub.Watch(self.health_pb.HealthCheckRequest(service=""), timeout=30)
        self.assertEqual(next(watch).status, self.health_pb.HealthCheckResponse.SERVING)
        request = self.health_pb.HealthCheckRequest(service="")
        with self.assertRaises(grpc.RpcError) as caught:
            stub.Check(request, timeout=0.5)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        watch.cancel()
        self.assertEqual(stub.Check(request, timeout=10).status,
                         self.health_pb.HealthCheckResponse.SERVING)

    def test_a_response_over_max_message_bytes_is_refused_and_counted_so(self):
        # 8 KiB: one 512-wide embedding (2 KiB) fits, eight (16 KiB) do not.
        server = lib.Server(ARGS.server, "--max_message_bytes=8192",
                            "--text_cache_mb=0")
        self.addCleanup(server.kill)
        channel = server.wait_ready(self.health_pb, self.health_grpc)
        self.addCleanup(channel.close)
        clip_pb, clip_grpc = lib.import_clipserve()
        stub = clip_grpc.ClipServiceStub(channel)
        one = stub.EmbedText(clip_pb.EmbedTextRequest(texts=["a cat"]), timeout=60)
        self.assertEqual(len(one.embeddings), 1)
        with self.assertRaises(grpc.RpcError) as caught:
            stub.EmbedText(clip_pb.EmbedTextRequest(texts=["a cat"] * 8), timeout=60)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Known from the request: refused before any model work.
        self.assertRegex(caught.exception.details(),
                         r"^the response would be at least \d+ bytes \(8 embeddings of "
                         r"512 floats\), over the largest message this server sends "
                         r"\(8192 bytes\)")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port()}/metrics",
                                    timeout=10) as reply:
            metrics = reply.read().decode()
        for code, count in (("OK", 1), ("RESOURCE_EXHAUSTED", 1)):
            self.assertRegex(metrics, rf'clipserve_requests_total{{[^}}]*code="{code}"'
                             rf'[^}}]*rpc="EmbedText"[^}}]*}} {count}\n')


class Int8Test(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)

    def test_int8_serves_within_cosine_999_of_fp32(self):
        if not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags():
            self.skipTest("no int8 dot products on this CPU: clip_server refuses int8")
        pb, pb_grpc = self.pb, self.pb_grpc
        rng = np.random.default_rng(5)
        # Smooth random colours, upscaled: closer to a photo than pixel noise. 12 images
        # of 50 tokens and 32 texts of 20: products of 600 and 640 rows, one batch each.
        small = rng.integers(0, 256, (12, 12, 12, 3), dtype=np.uint8)
        images = [pb.Image(raw=pb.RawImage(
            width=240, height=240, rgb8=np.kron(s, np.ones((20, 20, 1), np.uint8)).tobytes()))
            for s in small]
        words = ["cat", "dog", "red", "blue", "photo", "of", "a", "the", "on", "beach",
                 "small", "large", "diagram", "sunset", "two", "city"]
        texts = [" ".join(rng.choice(words, 18)) for _ in range(32)]
        results = {}
        for precision in ("fp32", "int8", "auto"):
            # A batch waits for every item of the request still being preprocessed (at
            # the 2 ms default, the first images preprocessed could run without the
            # rest): one batch per request, as the comparison of precisions assumes.
            server = lib.Server(ARGS.server, f"--precision={precision}", "--text_cache_mb=0",
                                "--max_queue_delay_ms=10000")
            self.addCleanup(server.kill)
            channel = server.wait_ready(self.health_pb, self.health_grpc)
            self.addCleanup(channel.close)
            stub = pb_grpc.ClipServiceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            if precision != "auto":
                self.assertEqual(info.precision, precision)
            image = stub.EmbedImage(pb.EmbedImageRequest(images=images), timeout=120)
            text = stub.EmbedText(pb.EmbedTextRequest(texts=texts), timeout=120)
            results[precision] = [np.array([e.values for e in r.embeddings])
                                  for r in (image, text)]
            if precision == "int8":
                # Alone, an item's products are quantized with scales of their own,
                # in its batch with the batch's (docs/API.md): it moves by int8's
                # rounding, no more.
                alone = [np.array([stub.EmbedImage(pb.EmbedImageRequest(images=[i]),
                                                   timeout=60).embeddings[0].values
                                   for i in images[:3]]),
                         np.array([stub.EmbedText(pb.EmbedTextRequest(texts=[t]),
                                                  timeout=60).embeddings[0].values
                                   for t in texts[:3]])]
                for one, batched in zip(alone, results[precision]):
                    cosines = (one * batched[:3]).sum(1)
                    self.assertGreaterEqual(cosines.min(), 0.999, cosines)
            server.terminate()
        for fp32, int8, auto in zip(results["fp32"], results["int8"], results["auto"]):
            # The rows are far apart, so a swapped or stale row fails the checks.
            apart = fp32 @ fp32.T - 2 * np.eye(len(fp32))
            self.assertLess(apart.max(), 0.99, apart)
            cosines = (fp32 * int8).sum(1)  # all L2-normalized
            self.assertGreaterEqual(cosines.min(), 0.999, cosines)
            # Not what fp32 or auto (bf16 or fp32) gives: the int8 kernel ran.
            self.assertGreater(np.abs(fp32 - int8).max(), 1e-4)
            self.assertGreater(np.abs(auto - int8).max(), 1e-4)


class ExifOrientationTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)

    def test_exif_orientation_turns_photos_upright_only_when_asked(self):
        import io
        from PIL import Image, ImageOps
        pb, pb_grpc = self.pb, self.pb_grpc
        rng = np.random.default_rng(9)
        # A photo stored sideways: its EXIF says to turn it 90 degrees clockwise (6).
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        stored = Image.fromarray(np.kron(small, np.ones((40, 40, 1), np.uint8)))
        exif = Image.Exif()
        exif[0x0112] = 6
        buffer = io.BytesIO()
        stored.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
        jpeg = buffer.getvalue()

        def raw(image):
            return pb.Image(raw=pb.RawImage(width=image.width, height=image.height,
                                            rgb8=image.convert("RGB").tobytes()))

        # The same pixels as Pillow decodes them, as stored and turned upright.
        as_stored = Image.open(io.BytesIO(jpeg))
        as_stored.load()
        upright = ImageOps.exif_transpose(as_stored)
        self.assertEqual((upright.width, upright.height), (as_stored.height, as_stored.width))
        for flag, expected in (("false", as_stored), ("true", upright)):
            server = lib.Server(ARGS.server, "--precision=fp32", "--text_cache_mb=0",
                                f"--exif_orientation={flag}")
            self.addCleanup(server.kill)
            channel = server.wait_ready(self.health_pb, self.health_grpc)
            self.addCleanup(channel.close)
            stub = pb_grpc.ClipServiceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            self.assertEqual(info.exif_orientation, flag == "true")
            reply = stub.EmbedImage(pb.EmbedImageRequest(
                images=[pb.Image(encoded=jpeg), raw(expected), raw(upright if flag ==
                                                                  "false" else as_stored)]),
                timeout=120)
            rows = np.array([e.values for e in reply.embeddings])
            np.testing.assert_allclose(rows[0], rows[1], atol=1e-5, err_msg=flag)
            self.assertGreater(np.abs(rows[0] - rows[2]).max(), 1e-3, flag)
            server.terminate()


class BlasKernelTest(unittest.TestCase):
    """OpenBLAS pinned to its 2004 kernel, as it is on CPUs it does not know."""

    def run_server(self, *flags):
        env = dict(os.environ, OPENBLAS_CORETYPE="Prescott")
        # A missing model makes the server exit right after the kernel choice.
        result = subprocess.run([ARGS.server, "--model=/nonexistent/model.pt",
                                 *LOOPBACK_ANY_PORT, *flags],
                                capture_output=True, text=True, timeout=60, env=env)
        self.assertNotEqual(result.returncode, 0)
        return result.stderr

    def test_auto_restarts_with_the_kernels_the_cpu_can_run(self):
        flags = cpu_flags()
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            expected = "SkylakeX"
        elif {"avx2", "fma"} <= flags:
            expected = "Haswell"
        else:
            self.skipTest("this CPU has nothing better than Prescott kernels")
        output = self.run_server()
        self.assertIn("restarting with OPENBLAS_CORETYPE=" + expected, output)
        self.assertIn(f"OpenBLAS fp32 kernels: {expected} (restarted from Prescott)", output)

    def test_keep_leaves_the_kernels_alone(self):
        output = self.run_server("--blas_kernel=keep")
        self.assertIn("OpenBLAS fp32 kernels: Prescott", output)
        self.assertNotIn("restart", output)


class OpenFilesLimitTest(unittest.TestCase):
    """Every connection takes a descriptor: the soft limit is raised to the hard one."""

    def test_the_soft_limit_is_raised_to_the_hard_one(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # (An unlimited hard limit is more than the kernel's nr_open allows as a soft one.)
        if hard == resource.RLIM_INFINITY or hard <= 256:
            self.skipTest(f"the hard limit ({hard}) is not one to raise to")

        def lower_soft_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

        # A missing model makes the server exit right after the start-up steps.
        result = subprocess.run([ARGS.server, "--model=/nonexistent/model.pt",
                                 *LOOPBACK_ANY_PORT, "--metrics_port=-1"],
                                capture_output=True, text=True, timeout=60,
                                preexec_fn=lower_soft_limit)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"open files limit raised from 256 to {hard}", result.stderr)


class ClientAgainstNoServerTest(unittest.TestCase):

    def test_health_without_server_fails_with_unavailable(self):
        port = lib.free_port()
        result = subprocess.run(
            [ARGS.client, "--target", f"127.0.0.1:{port}", "--deadline_ms", "2000", "health"],
            capture_output=True, text=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)
        self.assertRegex(result.stderr, r"^error: (UNAVAILABLE|DEADLINE_EXCEEDED): ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
