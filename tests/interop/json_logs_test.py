"""The real clip_server with --log_format=json: every stderr line is one JSON object,
a failed call logs its details as fields, and the HTTP endpoint answers.

Usage: /usr/bin/python3 json_logs_test.py --server PATH
"""

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import grpc

ARGS = None
BASE_KEYS = ["time", "severity", "source", "thread", "message"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class JsonLogsTest(unittest.TestCase):

    def start_server(self, *flags):
        """Starts clip_server with --log_format=json; returns it and a queue of its
        stderr lines."""
        process = subprocess.Popen(
            [ARGS.server, "--host=127.0.0.1", "--port=0", "--metrics_host=127.0.0.1",
             "--metrics_port=0", "--log_format=json", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(process.stderr.close)
        self.addCleanup(process.stdout.close)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in process.stderr],
                         daemon=True).start()
        return process, lines

    def test_every_line_is_json_and_failures_carry_fields(self):
        process, lines = self.start_server("--slow_request_ms=0")
        records = []

        def next_record(timeout_s=120):
            line = lines.get(timeout=timeout_s)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.fail(f"not a JSON line: {line!r}")
            self.assertEqual(list(record)[:5], BASE_KEYS, line)
            self.assertRegex(record["time"], TIME_RE)
            self.assertIn(record["severity"], ("INFO", "WARNING", "ERROR"))
            self.assertRegex(record["source"], r"^[\w.]+\.cc:\d+$")
            self.assertIsInstance(record["thread"], int)
            records.append(record)
            return record

        metrics_port = grpc_port = None
        deadline = time.monotonic() + 120
        while grpc_port is None and time.monotonic() < deadline:
            message = next_record()["message"]
            m = re.match(r"metrics, /healthz and /readyz on http://127\.0\.0\.1:(\d+)$",
                         message)
            if m:
                metrics_port = int(m.group(1))
            m = re.match(r"clip_server serving on 127\.0\.0\.1:(\d+) ", message)
            if m:
                grpc_port = int(m.group(1))
        self.assertIsNotNone(metrics_port)
        self.assertIsNotNone(grpc_port)

        self.assertEqual(http_get(metrics_port, "/healthz")[0], 200)
        self.assertEqual(http_get(metrics_port, "/readyz")[0], 200)

        # An EmbedTextRequest without texts (empty bytes): INVALID_ARGUMENT.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            embed_text = channel.unary_unary("/clipserve.v1.ClipService/EmbedText")
            with self.assertRaises(grpc.RpcError) as caught:
                embed_text(b"", timeout=30, metadata=[("x-request-id", "req-42/a")])
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            # The id comes back to the client, as the id the log line names.
            self.assertIn(("x-request-id", "req-42/a"),
                          list(caught.exception.trailing_metadata()))
            # texts[0] is not UTF-8: Protobuf's parser logs that itself, as JSON too.
            with self.assertRaises(grpc.RpcError) as caught:
                embed_text(b"\x0a\x01\xff", timeout=30)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

        status, body = http_get(metrics_port, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn('clipserve_requests_total{code="INVALID_ARGUMENT",rpc="EmbedText"} 2',
                      body)
        self.assertRegex(body, r'clipserve_model_info\{[^}]*model="demo:ViT-B-32"[^}]*\} 1')

        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(timeout=120), 0)
        self.assertEqual(process.stdout.read(), "")
        while True:
            try:
                next_record(timeout_s=5)
            except queue.Empty:
                break

        failed = [r for r in records if r["message"] == "request failed"]
        self.assertEqual(len(failed), 2, records)
        self.assertIn("texts[0]", failed[1]["error"])
        protobuf = [r for r in records if "invalid UTF-8" in r["message"]
                    and r["message"] != "request failed"]
        self.assertEqual(len(protobuf), 1, records)
        # A client's bytes: not an ERROR of the server's.
        self.assertEqual(protobuf[0]["severity"], "WARNING")
        self.assertEqual(failed[0]["severity"], "WARNING")
        self.assertEqual(failed[0]["rpc"], "EmbedText")
        self.assertEqual(failed[0]["code"], "INVALID_ARGUMENT")
        self.assertIn("texts", failed[0]["error"])
        self.assertTrue(failed[0]["peer"].startswith("ipv4:127.0.0.1:"), failed[0])
        self.assertEqual(failed[0]["request_id"], "req-42/a")
        self.assertIsInstance(failed[0]["duration_ms"], (int, float))
        messages = [r["message"] for r in records]
        self.assertTrue(any(m.startswith("received SIGTERM") for m in messages), messages)
        self.assertTrue(messages[-1].startswith("clip_server stopped"), messages)

    def test_grpc_core_errors_are_json_too(self):
        # gRPC core logs a failed TLS handshake itself (gpr_log), not through
        # clipserve's code: a plaintext client on a TLS port makes it do so.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "1", "-subj", "/CN=localhost"],
                check=True, capture_output=True)
            process, lines = self.start_server(f"--tls_cert={cert}", f"--tls_key={key}")
            raw_lines = []
            grpc_port = None
            deadline = time.monotonic() + 120
            while grpc_port is None and time.monotonic() < deadline:
                raw_lines.append(lines.get(timeout=120))
                m = re.match(r".*clip_server serving on 127\.0\.0\.1:(\d+) ",
                             raw_lines[-1])
                if m:
                    grpc_port = int(m.group(1))
            self.assertIsNotNone(grpc_port)

            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                with self.assertRaises(grpc.FutureTimeoutError):
                    grpc.channel_ready_future(channel).result(timeout=3)
            process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(timeout=120), 0)

        records = []
        while True:
            try:
                raw_lines.append(lines.get(timeout=5))
            except queue.Empty:
                break
        for line in raw_lines:  # start-up lines included
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                self.fail(f"not a JSON line: {line!r}")
        handshakes = [r for r in records if "andshake" in r["message"]]
        self.assertTrue(handshakes, records)
        # The peer's doing, not a server fault: a WARNING.
        self.assertEqual(handshakes[0]["severity"], "WARNING")
        self.assertRegex(handshakes[0]["source"], r"^[\w.]+\.cc:\d+$")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])
