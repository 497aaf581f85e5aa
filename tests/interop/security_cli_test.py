"""TLS, mutual TLS and bearer tokens end to end, through the real binaries.

Certificates are made at test time with the `openssl` command line (a CA, a server
certificate for localhost and 127.0.0.1, a client certificate, and an unrelated CA
with its own client). Checks, each both ways (accepted with the right credentials,
refused without):
- clip_server's security flags: nonsense combinations and unreadable or wrong files
  stop it at start-up with a clear message and a non-zero exit, before the model
  loads;
- one clip_server with mutual TLS and a token file: clip_client with --tls_ca,
  --tls_cert/--tls_key and --token_file works; a missing or wrong token is
  UNAUTHENTICATED (the token never echoed); no client certificate, one from another
  CA, or the wrong server CA fails the handshake; health needs no token; server
  reflection needs no token (the documented choice); the start-up log names the mode
  and never a token.

Usage: /usr/bin/python3 security_cli_test.py --server PATH --client PATH
           --proto_dir DIR --googleapis_dir DIR
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

import clipserve_testlib as lib

ARGS = None
TOKENS = ["first-token-Zq9xW2", "second-token-Lm4kP7"]
WRONG_TOKEN = "guessed-token-Rt5vB1"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


SERIALS = iter(range(1000, 2000))


def make_leaf(folder, name, ca, san=None):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
            cwd=folder)
    ext = os.path.join(folder, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
        if san:
            f.write(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
            f"{ca}.key", "-set_serial", str(next(SERIALS)), "-days", "1",
            "-sha256", "-extfile", ext, "-out", f"{name}.pem", cwd=folder)


def read(path):
    with open(path, "rb") as f:
        return f.read()


class SecurityCliTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        cls.health_pb, cls.health_grpc = lib.import_health()
        cls.refl_pb, cls.refl_grpc = lib.import_reflection()
        cls.pb, cls.pb_grpc = lib.import_clipserve()
        cls.tmp = tempfile.mkdtemp(prefix="clipserve_security_test_")
        make_ca(cls.tmp, "ca")
        make_leaf(cls.tmp, "server", "ca", san="DNS:localhost,IP:127.0.0.1")
        make_leaf(cls.tmp, "client", "ca")
        make_ca(cls.tmp, "other_ca")
        make_leaf(cls.tmp, "other_client", "other_ca")
        cls.tokens = cls.path("tokens.txt")
        with open(cls.tokens, "w") as f:
            f.write(f"  {TOKENS[0]}\n\n{TOKENS[1]}\r\n")
        cls.token = cls.path("token")
        with open(cls.token, "w") as f:
            f.write(TOKENS[1] + "\n")
        cls.wrong_token = cls.path("wrong_token")
        with open(cls.wrong_token, "w") as f:
            f.write(WRONG_TOKEN + "\n")

        cls.server = lib.Server(
            ARGS.server, "--model=demo:ViT-B-32",
            f"--tls_cert={cls.path('server.pem')}", f"--tls_key={cls.path('server.key')}",
            f"--tls_client_ca={cls.path('ca.pem')}", f"--auth_token_file={cls.tokens}")
        cls.channel = cls.wait_ready(timeout_s=180)
        # The log up to the start-up line, which comes as the port opens.
        deadline = time.monotonic() + 60
        cls.startup_log = cls.server.output()
        while "serving on" not in cls.startup_log and time.monotonic() < deadline:
            time.sleep(0.05)
            cls.startup_log = cls.server.output()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None) is not None:
            cls.channel.close()
        if getattr(cls, "server", None) is not None:
            cls.server.kill()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp, name)

    @classmethod
    def credentials(cls, ca="ca", client="client"):
        return grpc.ssl_channel_credentials(
            root_certificates=read(cls.path(f"{ca}.pem")),
            private_key=read(cls.path(f"{client}.key")) if client else None,
            certificate_chain=read(cls.path(f"{client}.pem")) if client else None)

    @classmethod
    def wait_ready(cls, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if cls.server.process.poll() is not None:
                raise RuntimeError("clip_server exited early:\n" + cls.server.output())
            channel = grpc.secure_channel(cls.server.target, cls.credentials())
            try:
                reply = cls.health_grpc.HealthStub(channel).Check(
                    cls.health_pb.HealthCheckRequest(service=""), timeout=1)
                if reply.status == cls.health_pb.HealthCheckResponse.SERVING:
                    return channel
            except grpc.RpcError:
                pass
            channel.close()
            time.sleep(0.1)
        raise TimeoutError(f"clip_server not SERVING after {timeout_s}s")

    def client(self, *args, tls=True, cert=True, token=True):
        flags = ["--target", self.server.target]
        if tls:
            flags += ["--tls_ca", self.path("ca.pem")]
        if cert:
            flags += ["--tls_cert", self.path("client.pem"), "--tls_key",
                      self.path("client.key")]
        if token:
            flags += ["--token_file", self.token]
        return subprocess.run([ARGS.client, *flags, *args], capture_output=True,
                              text=True, timeout=120)

    # -- clip_client ---------------------------------------------------------------

    def test_client_with_every_credential_works(self):
        info = self.client("info")
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertIn("ViT-B-32", info.stdout)
        texts = self.client("embed-text", "a photo of a cat", "a dog")
        self.assertEqual(texts.returncode, 0, texts.stderr)
        self.assertEqual(len([l for l in texts.stdout.splitlines() if l.strip()]), 2)

    def test_client_without_or_with_wrong_token_is_unauthenticated(self):
        missing = self.client("info", token=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("error: UNAUTHENTICATED: missing bearer token", missing.stderr)
        wrong = self.client("--token_file", self.wrong_token, "info", token=False)
        self.assertNotEqual(wrong.returncode, 0)
        self.assertIn("error: UNAUTHENTICATED", wrong.stderr)
        self.assertNotIn(WRONG_TOKEN, wrong.stderr)
        # A refused stream fails every file alike: said once, not once per file.
        files = []
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            with open(self.path(name), "wb") as f:
                f.write(b"never looked at")
            files.append(self.path(name))
        images = self.client("embed-image", "--skip_errors", *files, token=False)
        self.assertNotEqual(images.returncode, 0)
        self.assertEqual(images.stderr.count("UNAUTHENTICATED"), 1, images.stderr)

    def test_health_needs_no_token(self):
        health = self.client("health", token=False)
        self.assertEqual(health.returncode, 0, health.stderr)
        self.assertIn("SERVING", health.stdout)

    def test_client_without_certificate_or_from_another_ca_is_refused(self):
        no_cert = self.client("health", cert=False)
        self.assertNotEqual(no_cert.returncode, 0)
        self.assertIn("UNAVAILABLE", no_cert.stderr)
        other = self.client("--tls_cert", self.path("other_client.pem"), "--tls_key",
                            self.path("other_client.key"), "health", cert=False)
        self.assertNotEqual(other.returncode, 0)
        self.assertIn("UNAVAILABLE", other.stderr)

    def test_client_trusting_another_ca_or_plaintext_is_refused(self):
        wrong_ca = self.client("--tls_ca", self.path("other_ca.pem"), "health", tls=False)
        self.assertNotEqual(wrong_ca.returncode, 0)
        self.assertIn("UNAVAILABLE", wrong_ca.stderr)
        plaintext = self.client("health", tls=False, cert=False)
        self.assertNotEqual(plaintext.returncode, 0)
        self.assertIn("UNAVAILABLE", plaintext.stderr)

    def test_client_flag_mistakes(self):
        half = self.client("--tls_cert", self.path("client.pem"), "health", cert=False)
        self.assertNotEqual(half.returncode, 0)
        self.assertIn("--tls_key", half.stderr)
        missing = self.client("--token_file", self.path("nope"), "health", token=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("NOT_FOUND", missing.stderr)

    # -- Python stubs ----------------------------------------------------------------

    def test_stub_needs_the_token_for_clip_service_only(self):
        stub = self.pb_grpc.ClipServiceStub(self.channel)
        with self.assertRaises(grpc.RpcError) as refused:
            stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        info = stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=30,
                                 metadata=[("authorization", f"Bearer {TOKENS[0]}")])
        self.assertEqual(info.embed_dim, 512)

    def test_reflection_needs_no_token(self):
        stub = self.refl_grpc.ServerReflectionStub(self.channel)
        replies = list(stub.ServerReflectionInfo(
            iter([self.refl_pb.ServerReflectionRequest(list_services="")]), timeout=30))
        names = [s.name for s in replies[0].list_services_response.service]
        self.assertIn("clipserve.v1.ClipService", names)

    def test_log_names_the_mode_and_no_token(self):
        self.assertIn("tls=mutual auth=bearer(2 tokens)", self.startup_log)
        for token in TOKENS:
            self.assertNotIn(token, self.startup_log)

    # -- clip_server start-up checks ------------------------------------------------

    def start_fails(self, *flags):
        result = subprocess.run([ARGS.server, "--host=127.0.0.1", "--port=0", *flags],
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertIn("clip_server failed", result.stderr)
        return result.stderr

    def test_server_refuses_nonsense_flags(self):
        cert, key, ca = self.path("server.pem"), self.path("server.key"), self.path("ca.pem")
        self.assertIn("--tls_cert needs --tls_key", self.start_fails(f"--tls_cert={cert}"))
        self.assertIn("--tls_key needs --tls_cert", self.start_fails(f"--tls_key={key}"))
        self.assertIn("--tls_client_ca needs TLS", self.start_fails(f"--tls_client_ca={ca}"))
        self.assertIn("No such file",
                      self.start_fails(f"--tls_cert={cert}", "--tls_key=/no/such.key"))
        self.assertIn("does not match", self.start_fails(
            f"--tls_cert={cert}", f"--tls_key={self.path('client.key')}"))
        empty = self.path("empty_tokens")
        open(empty, "w").close()
        # Every message names the flag and the file (docs/SECURITY.md).
        self.assertIn(f"(--auth_token_file) '{empty}': token file holds no token",
                      self.start_fails(f"--auth_token_file={empty}"))
        self.assertRegex(self.start_fails("--auth_token_file=/no/such/file"),
                         r"\(--auth_token_file\).*'/no/such/file'.*No such file")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
