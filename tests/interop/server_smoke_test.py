"""A Python gRPC client finds a real clip_server SERVING, reflected, and stoppable.

Usage: /usr/bin/python3 server_smoke_test.py --server PATH --client PATH
           --proto_dir DIR --googleapis_dir DIR
"""

import argparse
import os
import subprocess
import sys
import unittest

import grpc

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


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


class BlasKernelTest(unittest.TestCase):
    """OpenBLAS pinned to its 2004 kernel, as it is on CPUs it does not know."""

    def run_server(self, *flags):
        env = dict(os.environ, OPENBLAS_CORETYPE="Prescott")
        # A missing model makes the server exit right after the kernel choice.
        result = subprocess.run([ARGS.server, "--model=/nonexistent/model.pt", *flags],
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
