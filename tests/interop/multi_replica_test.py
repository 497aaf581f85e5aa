"""Three clip_server replicas on loopback; one is killed with SIGKILL under load.

Eight clip_client processes embed 200 texts each through one comma-separated
target (round-robin over the three servers, streaming with retries). About a
second into the load one server gets SIGKILL. Every client must still write all of
its rows, equal to what an untouched server answers, and the two survivors must
still report SERVING.

Usage: /usr/bin/python3 multi_replica_test.py --server PATH --client PATH
           --proto_dir DIR --googleapis_dir DIR
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

import clipserve_testlib as lib

ARGS = None
CLIENTS = 8
TEXTS_PER_CLIENT = 200
# Fixed demo weights (the same seed in every replica): any replica gives the same row
# up to bf16 batching differences.
ATOL = 2e-2


class MultiReplicaTest(unittest.TestCase):

    def test_sigkill_of_one_replica_loses_no_request(self):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        health_pb, health_grpc = lib.import_health()
        servers = [lib.Server(ARGS.server, "--model=demo:RN50") for _ in range(3)]
        for s in servers:
            self.addCleanup(s.kill)
        channels = [s.wait_ready(health_pb, health_grpc, timeout_s=180) for s in servers]
        tmp = tempfile.mkdtemp(prefix="multi_replica_test_")
        self.addCleanup(shutil.rmtree, tmp, True)
        target = ",".join(s.target for s in servers)

        inputs, clients = [], []
        for c in range(CLIENTS):
            path = os.path.join(tmp, f"texts_{c}.txt")
            texts = [f"photo number {c * TEXTS_PER_CLIENT + i} of a replica test"
                     for i in range(TEXTS_PER_CLIENT)]
            with open(path, "w") as f:
                f.write("\n".join(texts) + "\n")
            out = os.path.join(tmp, f"out_{c}.jsonl")
            inputs.append((texts, out))
            clients.append(subprocess.Popen(
                [ARGS.client, "--target", target, "--deadline_ms", "120000",
                 "embed-text", "-f", path, "-o", out],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        # Killed while it is answering: calls on it are in flight.
        victim = servers[0]
        port = victim.metrics_port()
        deadline = time.monotonic() + 120
        while victim.calls_in_flight(port) == 0:
            self.assertLess(time.monotonic(), deadline, "no call reached the victim")
            self.assertTrue(any(p.poll() is None for p in clients), "clients done")
            time.sleep(0.01)
        self.assertIsNone(victim.process.poll(), "the victim ended before the kill")
        victim.process.kill()  # SIGKILL: no drain, connections reset mid-call
        victim.process.wait()

        for c, proc in enumerate(clients):
            _, err = proc.communicate(timeout=300)
            self.assertEqual(proc.returncode, 0, f"client {c} failed: {err}")

        # Every row, checked against a survivor answering the same text directly.
        check = os.path.join(tmp, "check.jsonl")
        some = [inputs[c][0][i] for c in range(CLIENTS) for i in (0, TEXTS_PER_CLIENT - 1)]
        subprocess.run([ARGS.client, "--target", servers[1].target, "embed-text",
                        *some, "-o", check], check=True, timeout=120)
        with open(check) as f:
            expected_rows = [np.array(json.loads(line)["embedding"]) for line in f]
        expected = dict(zip(some, expected_rows))
        for texts, out in inputs:
            with open(out) as f:
                rows = [json.loads(line) for line in f]
            self.assertEqual(len(rows), TEXTS_PER_CLIENT, out)
            self.assertEqual([r["input"] for r in rows], texts, out)
            for i in (0, TEXTS_PER_CLIENT - 1):
                np.testing.assert_allclose(np.array(rows[i]["embedding"]),
                                           expected[texts[i]], atol=ATOL)

        for s, channel in zip(servers[1:], channels[1:]):
            reply = health_grpc.HealthStub(channel).Check(
                health_pb.HealthCheckRequest(service=""), timeout=10)
            self.assertEqual(reply.status, health_pb.HealthCheckResponse.SERVING)
        for channel in channels:
            channel.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
