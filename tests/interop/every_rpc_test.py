"""A Python gRPC client (Debian python3-grpcio) calls every ClipService RPC and the
health service on a real clip_server, then stops it with SIGTERM under load.

Usage: /usr/bin/python3 every_rpc_test.py --server PATH --proto_dir DIR
           --googleapis_dir DIR --images DIR
"""

import argparse
import math
import os
import sys
import threading
import time
import unittest

import grpc

import clipserve_testlib as lib

ARGS = None


def read(name):
    with open(os.path.join(ARGS.images, name), "rb") as f:
        return f.read()


class EveryRpcTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)
        from google.rpc import error_details_pb2, status_pb2
        cls.error_details_pb2, cls.status_pb2 = error_details_pb2, status_pb2
        cls.server = lib.Server(ARGS.server, "--model=demo:ViT-B-32")
        cls.channel = cls.server.wait_ready(cls.health_pb, cls.health_grpc, timeout_s=120)
        cls.stub = cls.pb_grpc.ClipServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.kill()

    def test_health(self):
        stub = self.health_grpc.HealthStub(self.channel)
        for service in ("", "clipserve.v1.ClipService"):
            reply = stub.Check(self.health_pb.HealthCheckRequest(service=service), timeout=10)
            self.assertEqual(reply.status, self.health_pb.HealthCheckResponse.SERVING)

    def test_model_info(self):
        info = self.stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.name, "demo:ViT-B-32")
        self.assertEqual(info.embed_dim, 512)
        self.assertEqual(info.image_size, 224)
        self.assertEqual(info.context_length, 77)
        self.assertEqual(info.vision.architecture, "vit")
        self.assertEqual(info.vision.patch_size, 32)
        self.assertEqual(info.text.architecture, "transformer")
        self.assertTrue(info.random_weights)
        self.assertEqual(info.checkpoint_format, "demo")
        self.assertIn(info.precision, ("fp32", "bf16"))
        self.assertAlmostEqual(info.image_mean[0], 0.48145466, places=6)

    def test_embed_image_and_text(self):
        images = self.stub.EmbedImage(self.pb.EmbedImageRequest(images=[
            self.pb.Image(encoded=read("chelsea.png")),
            self.pb.Image(encoded=read("rocket.jpg"))]), timeout=60)
        self.assertEqual(len(images.embeddings), 2)
        self.assertEqual(images.dim, 512)
        for e in images.embeddings:
            self.assertAlmostEqual(math.sqrt(sum(v * v for v in e.values)), 1.0, places=4)
        texts = self.stub.EmbedText(self.pb.EmbedTextRequest(
            texts=["a cat", "a rocket"], normalize=False), timeout=60)
        self.assertEqual(len(texts.embeddings), 2)
        # The built-in CLIP vocabulary: start, "a</w>", "cat</w>" or "rocket</w>", end.
        self.assertEqual(list(texts.num_tokens), [4, 4])
        self.assertEqual(list(texts.truncated), [False, False])

    def test_similarity_paired(self):
        reply = self.stub.Similarity(self.pb.SimilarityRequest(
            images=self.pb.ImageSet(images=self.pb.ImageList(images=[
                self.pb.Image(encoded=read("chelsea.png")),
                self.pb.Image(encoded=read("coffee.png"))])),
            texts=self.pb.TextSet(texts=self.pb.TextList(texts=["a cat", "coffee"])),
            paired=True), timeout=60)
        self.assertEqual((reply.logits_per_image.rows, reply.logits_per_image.cols), (2, 2))
        for row in range(2):
            self.assertAlmostEqual(sum(reply.probs.values[row * 2:row * 2 + 2]), 1.0, places=5)
        loss = reply.loss
        self.assertAlmostEqual(loss.mean, (loss.image_to_text + loss.text_to_image) / 2,
                               places=5)

    def test_classify(self):
        reply = self.stub.Classify(self.pb.ClassifyRequest(
            images=[self.pb.Image(encoded=read("chelsea.png"))],
            labels=["cat", "dog", "rocket"], top_k=3), timeout=60)
        labels = reply.results[0].labels
        self.assertEqual(len(labels), 3)
        self.assertAlmostEqual(sum(l.probability for l in labels), 1.0, places=5)
        self.assertEqual(sorted(l.index for l in labels), [0, 1, 2])

    def test_tokenize(self):
        reply = self.stub.Tokenize(self.pb.TokenizeRequest(texts=["hello", "hi"]), timeout=10)
        self.assertEqual(reply.context_length, 77)
        hello, hi = list(reply.texts[0].ids), list(reply.texts[1].ids)
        # The built-in CLIP vocabulary: <|startoftext|>, one word token, <|endoftext|>.
        self.assertEqual(len(hello), 3)
        self.assertEqual(len(hi), 3)
        self.assertEqual((hello[0], hello[-1]), (49406, 49407))
        self.assertEqual((hi[0], hi[-1]), (49406, 49407))
        self.assertNotEqual(hello[1], hi[1])

    def test_embed_stream(self):
        items = [self.pb.EmbedStreamRequest(id="img", image=self.pb.Image(
                     encoded=read("chelsea.png"))),
                 self.pb.EmbedStreamRequest(id="txt", text="a cat"),
                 self.pb.EmbedStreamRequest(id="bad", image=self.pb.Image(
                     encoded=read("truncated.jpg")))]
        replies = {r.id: r for r in self.stub.EmbedStream(iter(items), timeout=60)}
        self.assertEqual(set(replies), {"img", "txt", "bad"})
        self.assertEqual(len(replies["img"].embedding.values), 512)
        self.assertEqual(len(replies["txt"].embedding.values), 512)
        self.assertEqual(replies["bad"].error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])

    def test_bad_request_names_the_item(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.EmbedImage(self.pb.EmbedImageRequest(images=[
                self.pb.Image(encoded=read("chelsea.png")),
                self.pb.Image(encoded=read("not_an_image.jpg"))]), timeout=60)
        error = caught.exception
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        details = dict(error.trailing_metadata()).get("grpc-status-details-bin")
        status = self.status_pb2.Status.FromString(details)
        bad = self.error_details_pb2.BadRequest()
        self.assertTrue(status.details[0].Unpack(bad))
        self.assertEqual(bad.field_violations[0].field, "images[1]")


class SigtermUnderLoadTest(unittest.TestCase):

    def test_in_flight_calls_finish_and_exit_is_zero(self):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        health_pb, health_grpc = lib.import_health()
        pb, pb_grpc = lib.import_clipserve()
        server = lib.Server(ARGS.server, "--model=demo:ViT-B-32", "--shutdown_grace_s=60")
        self.addCleanup(server.kill)
        channel = server.wait_ready(health_pb, health_grpc, timeout_s=120)
        stub = pb_grpc.ClipServiceStub(channel)
        request = pb.EmbedImageRequest(images=[pb.Image(encoded=read("coffee.png"))] * 8)
        stub.EmbedImage(request, timeout=60)  # warm
        calls = []  # (start, end, code)
        lock = threading.Lock()
        stop = threading.Event()

        def timed_call(req):
            start = time.monotonic()
            try:
                stub.EmbedImage(req, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                calls.append((start, time.monotonic(), code))

        def load():
            while not stop.is_set():
                timed_call(request)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        # One long call (64 images: at least two full batches after the load's), so a
        # call is surely in the server's hands at SIGTERM whatever the phase of the
        # load's calls.
        long_request = pb.EmbedImageRequest(images=[pb.Image(encoded=read("coffee.png"))] * 64)
        threads.append(threading.Thread(target=timed_call, args=(long_request,)))
        threads[-1].start()
        # A call the client has begun may still be on its way (a 64-image message takes
        # a while on a busy machine): if it reaches the server only after Shutdown
        # began, gRPC core cancels it (CANCELLED) or refuses it (UNAVAILABLE) before any
        # handler runs. So the signal waits until the server reports all five calls
        # (one per client thread, each thread has one at a time) in its handlers at
        # once: every call begun before that report was asked for has then either
        # finished or been in the server's hands, and all of those must finish OK.
        metrics = server.metrics_port()
        deadline = time.monotonic() + 60
        while True:
            asked_at = time.monotonic()
            if server.calls_in_flight(metrics) >= 5:
                break
            self.assertLess(asked_at, deadline, "the five calls were never in at once")
            time.sleep(0.005)
        sigterm_at = time.monotonic()
        exit_code, output = server.terminate(timeout_s=120)
        stop.set()
        for t in threads:
            t.join()
        channel.close()
        self.assertEqual(exit_code, 0, output)
        in_hand = [c for c in calls if c[0] < asked_at]
        self.assertTrue(any(end > sigterm_at for _, end, _ in in_hand),
                        "no call was in flight at SIGTERM")
        for start, end, code in calls:
            if start < asked_at:
                self.assertEqual(code, grpc.StatusCode.OK, (start - asked_at, end - sigterm_at))
            else:
                self.assertIn(code, (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.CANCELLED))

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    parser.add_argument("--images", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
