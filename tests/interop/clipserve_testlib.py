"""Helpers for interop tests: Python stubs compiled on the fly, a real clip_server.

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf). The stubs are
generated with the system protoc and grpc_python_plugin, exactly as a user of another
language would generate theirs from proto/.
"""

import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_stubs(proto_dir, googleapis_dir):
    """Generates Python modules for the clipserve, health and reflection protos.

    Returns the folder holding them, already on sys.path. The standard grpc.* protos
    are compiled under a `stdproto` prefix so their modules do not shadow the grpcio
    package named `grpc` (the proto packages, and so the wire names, are unchanged).
    """
    plugin = shutil.which("grpc_python_plugin")
    if plugin is None:
        raise RuntimeError("grpc_python_plugin not found (package protobuf-compiler-grpc)")
    out = tempfile.mkdtemp(prefix="clipserve_stubs_")
    std = os.path.join(out, "src")
    for root, rel in ((proto_dir, "grpc/health/v1/health.proto"),
                      (os.path.join(HERE, "protos"), "grpc/reflection/v1alpha/reflection.proto")):
        dest = os.path.join(std, "stdproto", rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(os.path.join(root, rel), dest)
    protos = [
        (proto_dir, "clipserve/v1/clip_service.proto"),
        (std, "stdproto/grpc/health/v1/health.proto"),
        (std, "stdproto/grpc/reflection/v1alpha/reflection.proto"),
        (googleapis_dir, "google/rpc/status.proto"),
        (googleapis_dir, "google/rpc/error_details.proto"),
    ]
    for root, rel in protos:
        subprocess.run(
            ["protoc", f"-I{root}", f"-I{googleapis_dir}", "-I/usr/include",
             f"--python_out={out}", f"--grpc_out={out}",
             f"--plugin=protoc-gen-grpc={plugin}", os.path.join(root, rel)],
            check=True)
    sys.path.insert(0, out)
    return out


def import_health():
    return (importlib.import_module("stdproto.grpc.health.v1.health_pb2"),
            importlib.import_module("stdproto.grpc.health.v1.health_pb2_grpc"))


def import_reflection():
    return (importlib.import_module("stdproto.grpc.reflection.v1alpha.reflection_pb2"),
            importlib.import_module("stdproto.grpc.reflection.v1alpha.reflection_pb2_grpc"))


def import_clipserve():
    return (importlib.import_module("clipserve.v1.clip_service_pb2"),
            importlib.import_module("clipserve.v1.clip_service_pb2_grpc"))


def set_up_stubs(cls, args):
    """Compiles the stubs and sets a test class's health_pb, health_grpc, pb and
    pb_grpc: the set-up most test classes share."""
    compile_stubs(args.proto_dir, args.googleapis_dir)
    cls.health_pb, cls.health_grpc = import_health()
    cls.pb, cls.pb_grpc = import_clipserve()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVING_ON = re.compile(r"clip_server serving on 127\.0\.0\.1:(\d+) ")


class Server:
    """A clip_server child process on a loopback port."""

    def __init__(self, binary, *flags):
        # The server binds port 0 and logs the port the kernel gave it (`port` reads it
        # back): a port found free here and passed on could be taken, by another test's
        # server or by an outgoing connection's ephemeral port, before the server binds.
        self._port = None
        # Tests run in parallel (and beside other servers): the HTTP endpoint takes a
        # free port rather than the default 9090, unless a test chooses one.
        if not any(f.startswith("--metrics_port") for f in flags):
            flags = ("--metrics_host=127.0.0.1", "--metrics_port=0", *flags)
        # The log goes to a file, not a pipe: nobody reads a pipe while the server runs,
        # and once its 64 KiB fill up (one line per failed call adds up under load)
        # every thread that logs blocks and the server stops answering.
        self.log = tempfile.TemporaryFile(mode="w+")
        self._final_output = None  # what the log held when it was closed
        self.process = subprocess.Popen(
            [binary, "--host=127.0.0.1", "--port=0", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, text=True)

    @property
    def port(self):
        """The server's gRPC port, once it logs that it serves (waits up to 60 s).

        Raises if the process exits first.
        """
        if self._port is None:
            self._port = int(self.wait_for_log(SERVING_ON).group(1))
        return self._port

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def wait_for_log(self, pattern, timeout_s=60):
        """The first match of `pattern` (a regex) in the log, once the server writes it.

        Raises if the process exits first, or after timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(pattern)
        while True:
            exited = self.process.poll() is not None  # before the read: its last lines
            m = pattern.search(self.output())
            if m:
                return m
            if exited:
                raise RuntimeError(f"clip_server exited with no {pattern.pattern!r} in its log:\n"
                                   + self.output())
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern.pattern!r} in clip_server's log after "
                                   f"{timeout_s}s:\n" + self.output())
            time.sleep(0.02)

    def output(self):
        """Everything the server has logged so far."""
        if self.log.closed:
            return self._final_output
        # pread leaves the file offset alone: the server's writes share it, and a seek
        # here would send a line it writes meanwhile over earlier ones.
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def wait_ready(self, health_pb, health_grpc, timeout_s=60):
        """Polls the health service until SERVING and returns a channel to the server.

        Each poll uses a fresh channel: a channel that failed to connect waits out
        gRPC's reconnect backoff (1 s and growing) before it tries again.
        Raises if the process exits first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("clip_server exited early:\n" + self.output())
            channel = grpc.insecure_channel(self.target)
            try:
                reply = health_grpc.HealthStub(channel).Check(
                    health_pb.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb.HealthCheckResponse.SERVING:
                    return channel
            except grpc.RpcError:
                pass
            channel.close()
            time.sleep(0.05)
        raise TimeoutError(f"clip_server not SERVING after {timeout_s}s")

    def metrics_port(self, timeout_s=60):
        """The port of the HTTP metrics endpoint, read from the start-up log line."""
        return int(self.wait_for_log(
            r"metrics, /healthz and /readyz on http://127\.0\.0\.1:(\d+)", timeout_s).group(1))

    def calls_in_flight(self, port):
        """clipserve_requests_in_flight from /metrics: calls whose handler has started
        and that have not finished."""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"^clipserve_requests_in_flight ([0-9.e+]+)$", text, re.M)
        if m is None:
            raise AssertionError("no clipserve_requests_in_flight in /metrics")
        return float(m.group(1))

    def terminate(self, timeout_s=60):
        """Sends SIGTERM and returns (exit code, output)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout_s)
        self._close_log()
        return self.process.returncode, self.output()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self):
        """Once the process has exited: keeps its log's text and closes the file."""
        if not self.log.closed:
            self._final_output = self.output()
            self.log.close()
