"""clip_client end to end against one real clip_server on loopback.

Every subcommand's output is checked against the same RPC made with the Python stubs:
.npy files load in numpy with the right shape and equal the JSONL rows and EmbedImage,
folders are walked in a stable order, similarity --json matches Similarity, bench
counts add up; and failures (no server, a missing file, an undecodable image in a
folder) give a clear message naming the culprit and a non-zero exit.

Usage: /usr/bin/python3 client_cli_test.py --server PATH --client PATH
           --proto_dir DIR --googleapis_dir DIR --images DIR
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from concurrent import futures

import grpc
import numpy as np

import clipserve_testlib as lib

ARGS = None

GOOD = ["rocket.jpg", "chelsea.png", "coffee.png"]  # sorted: chelsea, coffee, rocket
# The server computes in fp32, where a row does not depend on the batch it ran in
# beyond rounding; unary and streamed calls batch differently. Rows are unit vectors
# of 512 values about 0.04 each: a wrong or swapped row misses by far more.
ATOL = 1e-5
# Logits are cosines times exp(logit_scale) = 100.
LOGITS_ATOL = 1e-3


def read(path):
    with open(path, "rb") as f:
        return f.read()


class ClientCliTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)
        cls.server = lib.Server(ARGS.server, "--model=demo:ViT-B-32", "--precision=fp32")
        cls.channel = cls.server.wait_ready(cls.health_pb, cls.health_grpc, timeout_s=120)
        cls.stub = cls.pb_grpc.ClipServiceStub(cls.channel)
        cls.tmp = tempfile.mkdtemp(prefix="clip_client_cli_test_")
        # good/: three photos and a subfolder; bad/: the same plus a non-image.
        cls.good = os.path.join(cls.tmp, "good")
        cls.bad = os.path.join(cls.tmp, "bad")
        for folder in (cls.good, cls.bad):
            os.makedirs(os.path.join(folder, "sub"))
            for name in GOOD:
                shutil.copy(os.path.join(ARGS.images, name), folder)
            shutil.copy(os.path.join(ARGS.images, "chelsea_q75.jpg"),
                        os.path.join(folder, "sub"))
        shutil.copy(os.path.join(ARGS.images, "not_an_image.jpg"), cls.bad)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.kill()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def client(self, *args, target=None, check=True, user=None, cwd=None, stdin=None):
        result = subprocess.run(
            [ARGS.client, "--target", target or self.server.target, *args],
            capture_output=True, text=True, timeout=120, user=user, cwd=cwd, stdin=stdin)
        if check:
            self.assertEqual(result.returncode, 0,
                             f"clip_client {' '.join(args)}\nstderr: {result.stderr}")
        return result

    def out(self, name):
        return os.path.join(self.tmp, f"{self._testMethodName}_{name}")

    def rpc_images(self, paths, normalize=True):
        reply = self.stub.EmbedImage(self.pb.EmbedImageRequest(
            images=[self.pb.Image(encoded=read(p)) for p in paths], normalize=normalize),
            timeout=60)
        return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)

    def rpc_texts(self, texts):
        reply = self.stub.EmbedText(self.pb.EmbedTextRequest(texts=texts), timeout=60)
        return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)

    @staticmethod
    def jsonl(text):
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # -- embed-image -------------------------------------------------------------

    def test_embed_image_npy_equals_jsonl_and_rpc(self):
        npy = self.out("x.npy")
        self.client("embed-image", "--output", npy, self.good)
        array = np.load(npy)
        self.assertEqual(array.dtype, np.float32)
        self.assertEqual(array.shape, (3, 512))
        expected_paths = [os.path.join(self.good, n) for n in sorted(GOOD)]

        rows = self.jsonl(self.client("embed-image", self.good).stdout)
        self.assertEqual([r["index"] for r in rows], [0, 1, 2])
        self.assertEqual([r["input"] for r in rows], expected_paths)
        lines = np.array([r["embedding"] for r in rows], dtype=np.float32)
        np.testing.assert_allclose(array, lines, atol=ATOL)

        jsonl_file = self.out("x.jsonl")
        self.client("embed-image", "--output", jsonl_file, self.good)
        with open(jsonl_file) as f:
            self.assertEqual([r["input"] for r in self.jsonl(f.read())], expected_paths)

        np.testing.assert_allclose(array, self.rpc_images(expected_paths), atol=ATOL)
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3)

    def test_embed_image_folders_walked_in_stable_order(self):
        flat = [r["input"] for r in self.jsonl(self.client("embed-image", self.good).stdout)]
        self.assertEqual(flat, [os.path.join(self.good, n) for n in sorted(GOOD)])
        deep = [r["input"] for r in
                self.jsonl(self.client("embed-image", "--recursive", self.good).stdout)]
        self.assertEqual(deep, flat + [os.path.join(self.good, "sub", "chelsea_q75.jpg")])
        again = [r["input"] for r in
                 self.jsonl(self.client("embed-image", "--recursive", self.good).stdout)]
        self.assertEqual(again, deep)
        # Files are taken in argument order, before or after folders.
        mixed = [r["input"] for r in self.jsonl(self.client(
            "embed-image", os.path.join(self.good, "rocket.jpg"), self.good).stdout)]
        self.assertEqual(mixed, [os.path.join(self.good, "rocket.jpg")] + flat)

    def test_embed_image_normalize_false_matches_rpc(self):
        npy = self.out("raw.npy")
        path = os.path.join(self.good, "chelsea.png")
        self.client("embed-image", "--normalize=false", "-o", npy, path)
        raw = np.load(npy)
        np.testing.assert_allclose(raw, self.rpc_images([path], normalize=False),
                                   atol=ATOL, rtol=1e-5)
        self.assertGreater(abs(np.linalg.norm(raw) - 1.0), 1e-3)

    def test_embed_image_bad_file_in_folder_fails_naming_it(self):
        npy = self.out("x.npy")
        result = self.client("embed-image", "--output", npy, self.bad, check=False)
        self.assertNotEqual(result.returncode, 0)
        bad = os.path.join(self.bad, "not_an_image.jpg")
        self.assertIn(f"error: INVALID_ARGUMENT: {bad}: ", result.stderr)
        self.assertFalse(os.path.exists(npy), "nothing is written")

    def test_embed_image_skip_errors_writes_the_rest(self):
        npy = self.out("x.npy")
        result = self.client("embed-image", "--skip_errors", "--output", npy, self.bad)
        self.assertIn(os.path.join(self.bad, "not_an_image.jpg"), result.stderr)
        self.assertIn("INVALID_ARGUMENT", result.stderr)
        array = np.load(npy)
        self.assertEqual(array.shape, (3, 512))
        paths = [os.path.join(self.bad, n) for n in sorted(GOOD)]
        np.testing.assert_allclose(array, self.rpc_images(paths), atol=ATOL)
        # stdout names the file of each row of the array.
        self.assertEqual(self.jsonl(result.stdout),
                         [{"index": i, "input": p} for i, p in enumerate(paths)])
        rows = self.jsonl(self.client("embed-image", "--skip_errors", self.bad).stdout)
        self.assertEqual([r["input"] for r in rows], paths)

    def test_usage_mistakes_read_as_every_other_failure(self):
        for args in (["--tls_cert=x.pem", "health"], ["--deadline_ms=0", "health"],
                     ["no-such-command"], ["embed-text", "--no_such_flag", "a cat"]):
            refused = self.client(*args, check=False)
            self.assertEqual(refused.returncode, 1, args)
            self.assertRegex(refused.stderr, r"^error: INVALID_ARGUMENT: .*\(see --help\)\n$",
                             args)
        self.assertEqual(self.client("--help", check=False).returncode, 0)
        # CLI11 would say only that a subcommand is required.
        mistyped = self.client("embed-txt", "a cat", check=False)
        self.assertEqual(mistyped.returncode, 1)
        self.assertRegex(mistyped.stderr, r"^error: INVALID_ARGUMENT: unknown subcommand "
                         r"'embed-txt': give one of .*embed-text.* \(see --help\)\n$")

    def test_a_flag_value_after_a_space_is_refused(self):
        # CLI11 would take "--normalize false" as the flag and a text "false".
        for args in (["embed-text", "--normalize", "false", "a cat"],
                     ["tokenize", "--truncate", "0", "a cat"]):
            refused = self.client(*args, check=False)
            self.assertNotEqual(refused.returncode, 0, args)
            self.assertIn(f"{args[1]}={args[2]}", refused.stderr)
        # After --, such a word is an input.
        rows = self.jsonl(self.client("embed-text", "--normalize", "--", "false").stdout)
        self.assertEqual([r["input"] for r in rows], ["false"])

    def test_a_text_that_reads_as_joined_short_options_is_refused(self):
        # CLI11 would take "-hi there" as -h (help, exit 0, nothing written) and
        # "-of course" as -o "f course" (a file of that name).
        for text in ("-hi there", "-of course"):
            refused = self.client("embed-text", "-o", self.out("x.npy"), "a cat", text,
                                  check=False, cwd=self.tmp)
            self.assertEqual(refused.returncode, 1, refused.stdout)
            self.assertIn(f"'{text}' reads as the option {text[:2]} joined to more",
                          refused.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "f course")))
        self.assertFalse(os.path.exists(self.out("x.npy")))
        # After --, such a word is a text.
        rows = self.jsonl(self.client("embed-text", "--", "-hi there").stdout)
        self.assertEqual([r["input"] for r in rows], ["-hi there"])

    def test_a_file_named_like_the_start_of_the_servers_message_is_named(self):
        # The server's message starts "image: ..."; files named "im" or "image" kept
        # their names out of the warnings.
        folder = self.out("prefix")
        os.makedirs(folder)
        for name in ("im", "image"):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"not an image")
        result = self.client("embed-image", "--skip_errors", "im", "image",
                             os.path.join(self.bad, GOOD[0]), cwd=folder)
        self.assertIn("warning: INVALID_ARGUMENT: im: image", result.stderr)
        self.assertIn("warning: INVALID_ARGUMENT: image: image", result.stderr)

    def test_embed_image_skip_errors_names_a_missing_path_and_embeds_the_rest(self):
        missing = os.path.join(self.tmp, "no_such_photo.jpg")
        npy = self.out("missing.npy")
        result = self.client("embed-image", "--skip_errors", "--output", npy, missing,
                             self.bad)
        self.assertRegex(result.stderr, r"(?m)^warning: NOT_FOUND: .*no_such_photo\.jpg")
        # not_an_image.jpg of the 4 files found; the missing path is no file.
        self.assertIn("warning: skipped 1 of 4 files and 1 path that could not be read",
                      result.stderr)
        self.assertEqual(np.load(npy).shape, (3, 512))
        # With nothing left to embed it is still an error, said once.
        result = self.client("embed-image", "--skip_errors", missing, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr,
                         f"warning: NOT_FOUND: {missing}: No such file or directory\n"
                         "error: NOT_FOUND: no image file found: 1 path could not be read "
                         "(see above)\n")
        # Every file read and failed: an error like any other.
        not_an_image = os.path.join(self.bad, "not_an_image.jpg")
        result = self.client("embed-image", "--skip_errors", not_an_image, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertTrue(result.stderr.endswith(
            "error: INVALID_ARGUMENT: every one of the 1 files failed (see above)\n"),
            result.stderr)

    def test_skip_errors_npy_stays_as_it_was_when_stdout_fails(self):
        npy = self.out("kept.npy")
        np.save(npy, np.zeros((1, 2), np.float32))
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [ARGS.client, "--target", self.server.target, "embed-image",
                 "--skip_errors", "-o", npy, self.bad],
                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("error: DATA_LOSS: stdout: write failed", result.stderr)
        self.assertEqual(np.load(npy).shape, (1, 2))

    def test_embed_image_missing_file_fails_naming_it(self):
        missing = os.path.join(self.tmp, "no_such_photo.jpg")
        result = self.client("embed-image", missing, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertRegex(result.stderr, r"^error: NOT_FOUND: .*no_such_photo\.jpg")

    def test_embed_image_unreadable_file_fails_naming_it(self):
        # A path that exists but cannot be read as a file (root reads any mode bits).
        unreadable = os.path.join(self.tmp, "a_folder.jpg")
        os.makedirs(unreadable, exist_ok=True)
        os.makedirs(os.path.join(unreadable, "x"), exist_ok=True)
        result = self.client("similarity", "--images", unreadable, "--texts", "a cat",
                             check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertRegex(result.stderr, r"^error: [A-Z_]+: .*a_folder\.jpg")

    def test_embed_image_permission_denied_names_the_file(self):
        # Root reads files whatever their mode: as root, the client runs as nobody, in
        # a folder it may enter.
        folder = tempfile.mkdtemp(prefix="clip_client_cli_locked_")
        self.addCleanup(shutil.rmtree, folder)
        os.chmod(folder, 0o755)
        locked = os.path.join(folder, "locked.jpg")
        shutil.copy(os.path.join(ARGS.images, "rocket.jpg"), locked)
        os.chmod(locked, 0)
        try:
            result = self.client("embed-image", locked, check=False,
                                 user=65534 if os.geteuid() == 0 else None)
        except PermissionError:  # a checkout nobody may enter
            self.skipTest("nobody cannot run the client from this checkout")
        self.assertNotEqual(result.returncode, 0)
        self.assertRegex(result.stderr, r"^error: PERMISSION_DENIED: .*locked\.jpg")

    def test_a_file_in_a_sticky_folder_another_user_owns_is_written_in_place(self):
        # A sticky folder (/tmp) lets only the owner of a file, or of the folder,
        # rename over it; a shell's `>` may still write it. Needs root, to own the
        # file while the client runs as nobody.
        if os.geteuid() != 0:
            self.skipTest("needs root, to make a file nobody may write but not own")
        folder = tempfile.mkdtemp(prefix="clip_client_cli_sticky_")
        self.addCleanup(shutil.rmtree, folder)
        os.chmod(folder, 0o1777)
        output = os.path.join(folder, "texts.jsonl")
        with open(output, "w") as f:
            f.write("old\n")
        os.chmod(output, 0o666)
        try:
            result = self.client("embed-text", "-o", output, "a cat", check=False,
                                 user=65534)
        except PermissionError:  # a checkout nobody may enter
            self.skipTest("nobody cannot run the client from this checkout")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(output) as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual([r["input"] for r in rows], ["a cat"])
        self.assertEqual(os.stat(output).st_uid, 0)  # the same file, written in place
        self.assertEqual(sorted(os.listdir(folder)), ["texts.jsonl"])

    def test_a_failed_call_names_the_request_id_the_server_logged(self):
        bad = os.path.join(self.bad, "not_an_image.jpg")
        result = self.client("similarity", "--images", bad, "--texts", "a cat",
                             check=False)
        self.assertNotEqual(result.returncode, 0)
        match = re.search(r"^error: INVALID_ARGUMENT: .*\(request id ([0-9a-f]{16})\)$",
                          result.stderr, re.MULTILINE)
        self.assertIsNotNone(match, result.stderr)
        # The server's "request failed" line names the same id (written as the call
        # ends, so possibly a moment after the client has its answer).
        line = None
        for _ in range(100):
            line = next((l for l in self.server.output().splitlines()
                         if match.group(1) in l), None)
            if line is not None:
                break
            time.sleep(0.1)
        self.assertIsNotNone(line, f"request id {match.group(1)} not in the server log")
        self.assertIn("request failed", line)
        self.assertIn("rpc=Similarity", line)

    # -- embed-text --------------------------------------------------------------

    def test_texts_that_are_not_utf8_are_refused_before_any_call(self):
        latin1 = self.out("latin1.txt")
        with open(latin1, "wb") as f:
            f.write(b"a cat\n\ncaf\xe9 au lait\n")
        refused = self.client("embed-text", "--file", latin1, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stderr, f"error: INVALID_ARGUMENT: {latin1}: line 3 is not "
                         "valid UTF-8 (texts must be UTF-8)\n")
        refused = self.client("embed-text", "a cat", b"caf\xe9", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stderr, "error: INVALID_ARGUMENT: text argument 2 is not "
                         "valid UTF-8 (texts must be UTF-8)\n")

    def test_similarity_texts_and_classify_templates_are_checked_for_utf8_too(self):
        path = os.path.join(self.good, "rocket.jpg")
        refused = self.client("similarity", "--images", path, "--texts", "a cat", b"caf\xe9",
                              check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stderr, "error: INVALID_ARGUMENT: text argument 2 is not "
                         "valid UTF-8 (texts must be UTF-8)\n")
        refused = self.client("classify", path, "--labels", "cat,dog",
                              "--templates", b"a photo of a {} \xe9", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stderr, "error: INVALID_ARGUMENT: template argument 1 is "
                         "not valid UTF-8 (templates must be UTF-8)\n")

    def test_labels_are_trimmed_and_their_errors_name_where_they_came_from(self):
        path = os.path.join(self.good, "chelsea.png")
        got = json.loads(self.client("classify", path, "--labels", " cat , dog,,",
                                     "--json").stdout)
        self.assertEqual(sorted(r["label"] for r in got[0]["labels"]), ["cat", "dog"])
        refused = self.client("classify", path, "--labels", b"cat,\xff", check=False)
        self.assertEqual(refused.stderr, "error: INVALID_ARGUMENT: label 2 of --labels is "
                         "not valid UTF-8 (labels must be UTF-8)\n")
        labels = self.out("labels.txt")
        with open(labels, "wb") as f:
            f.write(b"cat\n\xff\n")
        refused = self.client("classify", path, "--labels_file", labels, check=False)
        self.assertEqual(refused.stderr, f"error: INVALID_ARGUMENT: {labels}: line 2 is "
                         "not valid UTF-8 (labels must be UTF-8)\n")

    def test_an_empty_or_unreadable_texts_file_is_named(self):
        blank = self.out("blank.txt")
        with open(blank, "w") as f:
            f.write("\n  \n")
        refused = self.client("embed-text", "--file", blank, check=False)
        self.assertEqual(refused.stderr, f"error: INVALID_ARGUMENT: {blank}: no texts "
                         "(blank lines are skipped)\n")
        with open(blank) as stdin:
            refused = self.client("embed-text", "--file", "-", check=False, stdin=stdin)
        self.assertEqual(refused.stderr, "error: INVALID_ARGUMENT: standard input: no texts "
                         "(blank lines are skipped)\n")
        # A read that fails is an error, not the end of the texts.
        folder = os.open(self.tmp, os.O_RDONLY)
        try:
            refused = self.client("embed-text", "--file", "-", check=False, stdin=folder)
        finally:
            os.close(folder)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stderr, "error: DATA_LOSS: standard input: read error: "
                         "Is a directory\n")

    def test_embed_text_args_and_file(self):
        texts_file = self.out("texts.txt")
        with open(texts_file, "w") as f:
            f.write("a photo of a dog\n\na rocket on the launch pad\n")
        npy = self.out("t.npy")
        self.client("embed-text", "--file", texts_file, "-o", npy, "--", "a cat", "-x-")
        array = np.load(npy)
        texts = ["a cat", "-x-", "a photo of a dog", "a rocket on the launch pad"]
        self.assertEqual(array.shape, (4, 512))
        np.testing.assert_allclose(array, self.rpc_texts(texts), atol=ATOL)
        rows = self.jsonl(self.client("embed-text", "--file", texts_file, "a cat").stdout)
        self.assertEqual([r["input"] for r in rows],
                         ["a cat", "a photo of a dog", "a rocket on the launch pad"])
        # One text per request (for a server with a low --max_items_per_request): the
        # same rows.
        one_by_one = self.out("one_by_one.npy")
        self.client("embed-text", "--texts_per_request", "1", "--file", texts_file, "-o",
                    one_by_one, "--", "a cat", "-x-")
        np.testing.assert_allclose(np.load(one_by_one), array, atol=ATOL)
        # An error names the text's place in the whole list, not in its request.
        long_text = " ".join(["word"] * 100)
        refused = self.client("embed-text", "--texts_per_request", "2", "--truncate=false",
                              "a", "b", "c", long_text, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(": texts[3]: ", refused.stderr)

    # -- similarity, classify, tokenize, info, health ------------------------------

    def test_similarity_json_paired_matches_rpc(self):
        paths = [os.path.join(self.good, n) for n in ("chelsea.png", "rocket.jpg")]
        texts = ["a cat", "a rocket"]
        result = self.client("similarity", "--paired", "--json", "--images", *paths,
                             "--texts", *texts)
        got = json.loads(result.stdout)
        reply = self.stub.Similarity(self.pb.SimilarityRequest(
            images=self.pb.ImageSet(images=self.pb.ImageList(
                images=[self.pb.Image(encoded=read(p)) for p in paths])),
            texts=self.pb.TextSet(texts=self.pb.TextList(texts=texts)),
            paired=True), timeout=60)

        def matrix(m):
            return np.array(m.values, dtype=np.float32).reshape(m.rows, m.cols)

        for key in ("logits_per_image", "logits_per_text", "probs"):
            np.testing.assert_allclose(np.array(got[key], dtype=np.float32),
                                       matrix(getattr(reply, key)), atol=LOGITS_ATOL,
                                       err_msg=key)
        self.assertAlmostEqual(got["logit_scale"], reply.logit_scale, places=4)
        for key in ("image_to_text", "text_to_image", "mean"):
            self.assertAlmostEqual(got["loss"][key], getattr(reply.loss, key), delta=1e-4)
        self.assertAlmostEqual(got["loss"]["mean"],
                               (got["loss"]["image_to_text"] + got["loss"]["text_to_image"]) / 2,
                               places=5)
        unpaired = json.loads(self.client("similarity", "--json", "--images", *paths,
                                          "--texts", "x").stdout)
        self.assertNotIn("loss", unpaired)
        self.assertEqual(np.array(unpaired["probs"]).shape, (2, 1))

    def test_similarity_table_and_temperature(self):
        path = os.path.join(self.good, "chelsea.png")
        table = self.client("similarity", "--images", path, "--texts", "a cat", "a dog").stdout
        self.assertIn("chelsea.png", table)
        self.assertIn("a dog", table)
        got = json.loads(self.client("similarity", "--json", "--temperature", "0.5",
                                     "--images", path, "--texts", "a cat").stdout)
        self.assertAlmostEqual(got["logit_scale"], 2.0, places=5)

    def test_classify_json(self):
        paths = [os.path.join(self.good, n) for n in ("chelsea.png", "rocket.jpg")]
        got = json.loads(self.client("classify", *paths, "--labels", "cat,dog,rocket",
                                     "--top_k", "2", "--json").stdout)
        self.assertEqual([r["image"] for r in got], paths)
        for r in got:
            self.assertEqual(len(r["labels"]), 2)
            self.assertGreaterEqual(r["labels"][0]["probability"],
                                    r["labels"][1]["probability"])
            self.assertIn(r["labels"][0]["label"], ("cat", "dog", "rocket"))

    def test_classify_a_folder_in_several_requests(self):
        got = json.loads(self.client("classify", "--labels", "cat,dog", "--recursive",
                                     "--images_per_request", "2", self.good,
                                     "--json").stdout)
        rows = self.jsonl(self.client("embed-image", "--recursive", self.good).stdout)
        paths = [r["input"] for r in rows]
        self.assertGreater(len(paths), 2)  # more than one request
        self.assertEqual([r["image"] for r in got], paths)
        # The same as one request of all the images (bf16 rounds by batch a little).
        one = json.loads(self.client("classify", "--labels", "cat,dog", *paths,
                                     "--json").stdout)
        for a, b in zip(got, one):
            self.assertEqual([s["label"] for s in a["labels"]],
                             [s["label"] for s in b["labels"]])
            for x, y in zip(a["labels"], b["labels"]):
                self.assertAlmostEqual(x["logit"], y["logit"], delta=1e-3)
        # An item's error names its file, wherever it stands in the list.
        bad = os.path.join(self.bad, "not_an_image.jpg")
        refused = self.client("classify", "--labels", "cat,dog", "--images_per_request",
                              "2", *paths, bad, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(f"error: INVALID_ARGUMENT: {bad}: images[{len(paths)}]",
                      refused.stderr)

    def test_classify_options_before_the_images_take_one_argument_each(self):
        paths = [os.path.join(self.good, n) for n in ("chelsea.png", "rocket.jpg")]

        def classify(*args):
            got = json.loads(self.client("classify", *args, "--json").stdout)
            self.assertEqual([r["image"] for r in got], paths)
            for r in got:
                self.assertEqual(sorted(s["label"] for s in r["labels"]), ["cat", "dog"])
            return [{s["label"]: s["logit"] for s in r["labels"]} for r in got]

        def close(a, b):  # batches of other sizes round bf16 a little differently
            return all(abs(x[k] - y[k]) < 1e-3 for x, y in zip(a, b) for k in x)

        one = classify("--labels", "cat,dog", "--templates", "a photo of a {}.", *paths)
        self.assertTrue(close(one, classify(*paths, "--labels", "cat,dog")))
        # Repeated, each adds one: two templates average two prompts per label.
        two = classify("--labels", "cat", "--labels", "dog",
                       "--templates", "a photo of a {}.", "--templates", "a drawing of a {}.",
                       *paths)
        self.assertFalse(close(one, two), (one, two))

    def test_classify_labels_file_keeps_commas(self):
        path = os.path.join(self.good, "chelsea.png")
        labels = self.out("labels.txt")
        with open(labels, "w") as f:
            f.write("\ufeffWashington, D.C.\r\n\nParis\n")
        got = json.loads(self.client("classify", path, "--labels", "a cat",
                                     "--labels_file", labels, "--json").stdout)
        self.assertEqual(sorted(r["label"] for r in got[0]["labels"]),
                         ["Paris", "Washington, D.C.", "a cat"])
        none = self.client("classify", path, check=False)
        self.assertNotEqual(none.returncode, 0)
        self.assertIn("no labels: give --labels or --labels_file", none.stderr)

    def test_tokenize_json_matches_rpc(self):
        texts = ["a photo of a cat", "x " * 100]
        got = json.loads(self.client("tokenize", "--json", "--", *texts).stdout)
        reply = self.stub.Tokenize(self.pb.TokenizeRequest(texts=texts), timeout=30)
        self.assertEqual([g["text"] for g in got], texts)
        self.assertEqual([g["ids"] for g in got], [list(t.ids) for t in reply.texts])
        self.assertEqual([g["truncated"] for g in got], [False, True])
        self.assertEqual(len(got[1]["ids"]), reply.context_length)

    def test_info_json_snake_case(self):
        got = json.loads(self.client("info", "--json").stdout)
        info = self.stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(got["embed_dim"], info.embed_dim)
        self.assertEqual(got["image_size"], info.image_size)
        self.assertEqual(got["context_length"], info.context_length)
        self.assertEqual(got["name"], info.name)
        self.assertEqual(got["vision"]["patch_size"], info.vision.patch_size)
        self.assertIs(got["random_weights"], True)
        self.assertNotIn("embedDim", got)

    def test_output_that_cannot_be_written_fails(self):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [ARGS.client, "--target", self.server.target, "info", "--json"],
                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("error: DATA_LOSS: cannot write to standard output", result.stderr)

    def test_health(self):
        self.assertEqual(self.client("health").stdout.strip(), "SERVING")
        unknown = self.client("health", "--service", "no.such.Service", check=False)
        self.assertEqual(unknown.returncode, 1)
        self.assertRegex(unknown.stderr, r"^error: NOT_FOUND: --service 'no\.such\.Service': "
                         r"unknown service")

    def test_global_options_may_follow_the_subcommand(self):
        result = subprocess.run([ARGS.client, "info", "--json", "--target",
                                 self.server.target, "--deadline_ms", "60000"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["embed_dim"], 512)

    # -- bench -------------------------------------------------------------------

    def test_bench_json_counts_add_up(self):
        for modality, k in (("image", 2), ("text", 3)):
            got = json.loads(self.client(
                "bench", "--modality", modality, "--requests", "20", "--concurrency", "4",
                "--items_per_request", str(k), "--json").stdout)
            self.assertEqual(got["requests"], 20, modality)
            self.assertEqual(got["items"], got["requests"] * k, modality)
            self.assertEqual(got["errors"], {}, modality)
            latency = got["latency_ms"]
            self.assertGreater(latency["p50"], 0)
            self.assertLessEqual(latency["p50"], latency["p90"])
            self.assertLessEqual(latency["p90"], latency["p99"])
            self.assertLessEqual(latency["p99"], latency["max"])
            self.assertGreater(got["qps"], 0)
            self.assertAlmostEqual(got["items_per_s"], got["qps"] * k, places=6)

    def test_bench_with_own_images_and_texts(self):
        texts_file = self.out("captions.txt")
        with open(texts_file, "w") as f:
            f.write("a red car\na blue boat\n")
        got = json.loads(self.client("bench", "--modality", "text", "--texts_file",
                                     texts_file, "--requests", "5", "--json").stdout)
        self.assertEqual(got["requests"], 5)
        got = json.loads(self.client("bench", "--modality", "image", "--images", self.good,
                                     "--requests", "4", "--concurrency", "2",
                                     "--json").stdout)
        self.assertEqual(got["requests"], 4)
        self.assertEqual(got["errors"], {})

    def test_output_to_dev_stdout_appends_where_the_shell_appends(self):
        path = self.out("all.jsonl")
        for text in ("a red car", "a blue boat"):
            with open(path, "ab") as appended:  # the shell's >>
                result = subprocess.run(
                    [ARGS.client, "--target", self.server.target, "embed-text", "-o",
                     "/dev/stdout", text], stdout=appended, stderr=subprocess.PIPE,
                    timeout=120)
            self.assertEqual(result.returncode, 0, result.stderr)
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual([r["input"] for r in rows], ["a red car", "a blue boat"])

    def test_output_to_another_descriptor_appends_to_what_it_holds(self):
        path = self.out("log.txt")
        with open(path, "w") as f:
            f.write("before\n")
        with open(path, "ab") as appended:  # 2>>log, or 3>>log
            fd = appended.fileno()
            for output, stderr in (("/dev/stderr", appended),
                                   (f"/dev/fd/{fd}", subprocess.PIPE),
                                   (f"/proc/self/fd/{fd}", subprocess.PIPE)):
                result = subprocess.run(
                    [ARGS.client, "--target", self.server.target, "embed-text", "-o", output,
                     output], stderr=stderr, pass_fds=(fd,), timeout=120)
                self.assertEqual(result.returncode, 0, result.stderr)
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "before")
        self.assertEqual([json.loads(line)["input"] for line in lines[1:]],
                         ["/dev/stderr", f"/dev/fd/{fd}", f"/proc/self/fd/{fd}"])
        closed = self.client("embed-text", "-o", "/dev/fd/9", "x", check=False)
        self.assertNotEqual(closed.returncode, 0)
        self.assertIn("/dev/fd/9: cannot write", closed.stderr)

    def test_bench_refuses_inputs_of_the_other_modality_or_none(self):
        texts_file = self.out("captions.txt")
        with open(texts_file, "w") as f:
            f.write("a red car\n")
        for args, flag in ((("--modality", "text", "--images", self.good), "--images"),
                           (("--modality", "text", "--recursive"), "--recursive"),
                           (("--modality", "image", "--texts_file", texts_file),
                            "--texts_file"),
                           (("--modality", "image", "--recursive"), "--recursive")):
            result = self.client("bench", *args, "--requests", "1", check=False)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn("INVALID_ARGUMENT", result.stderr)
            self.assertIn(flag, result.stderr)

    def test_bench_takes_the_images_of_subfolders_with_recursive(self):
        folder = self.out("nested")
        os.makedirs(os.path.join(folder, "sub"))
        shutil.copy(os.path.join(ARGS.images, "chelsea_q75.jpg"),
                    os.path.join(folder, "sub", "a.jpg"))
        refused = self.client("bench", "--modality", "image", "--images", folder,
                              "--requests", "1", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("use --recursive", refused.stderr)
        got = json.loads(self.client("bench", "--modality", "image", "--images", folder,
                                     "--recursive", "--requests", "2", "--json").stdout)
        self.assertEqual(got["succeeded"], 2)

    def test_bench_reads_only_the_images_it_can_send(self):
        # 32 requests are prepared: with one image each, a 33rd file is never read, so
        # one too big to send does not matter.
        folder = self.out("many")
        os.makedirs(folder)
        for i in range(32):
            shutil.copy(os.path.join(ARGS.images, "chelsea_q75.jpg"),
                        os.path.join(folder, f"img{i:02d}.jpg"))
        with open(os.path.join(folder, "zz_too_big.jpg"), "wb") as f:
            f.write(b"\0" * 70000)
        got = json.loads(self.client("--max_message_bytes", "65536", "bench", "--modality",
                                     "image", "--images", folder, "--requests", "2",
                                     "--json").stdout)
        self.assertEqual(got["succeeded"], 2)


class ClientWithoutServerTest(unittest.TestCase):

    def test_server_down_is_a_clear_error(self):
        target = f"127.0.0.1:{lib.free_port()}"
        image = os.path.join(ARGS.images, "chelsea.png")
        for args in (["info"], ["embed-text", "a cat"], ["embed-image", image],
                     ["bench", "--modality", "text", "--requests", "3"]):
            result = subprocess.run([ARGS.client, "--target", target, "--deadline_ms", "3000",
                                     *args], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertRegex(result.stderr, r"(?m)^error: UNAVAILABLE: cannot reach the "
                             r"server at " + target.replace(".", r"\."), args)
            self.assertEqual(len(re.findall(r"(?m)^error:", result.stderr)), 1,
                             result.stderr)

    def test_an_output_that_cannot_be_written_fails_before_any_call(self):
        target = f"127.0.0.1:{lib.free_port()}"
        image = os.path.join(ARGS.images, "chelsea.png")
        output = os.path.join(tempfile.gettempdir(), "no_such_folder_for_clip_client",
                              "x.npy")
        for args in (["embed-image", "-o", output, image],
                     ["embed-text", "-o", output, "a cat"]):
            result = subprocess.run([ARGS.client, "--target", target, *args],
                                    capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0, args)
            # The path, not the server nobody listens on.
            self.assertRegex(result.stderr, r"^error: NOT_FOUND: " + re.escape(output) +
                             ": cannot write", args)

    def test_numbers_out_of_range_say_what_is_wanted(self):
        image = os.path.join(ARGS.images, "chelsea.png")
        for args, message in (
                (["--deadline_ms", "0", "health"],
                 "--deadline_ms: must be a positive number, got 0"),
                (["--deadline_ms", "abc", "health"], "--deadline_ms: 'abc' is not a number"),
                (["similarity", "--temperature", "nan", "--images", image, "--texts", "a"],
                 "--temperature: 'nan' is not a number"),
                (["classify", "--temperature", "inf", image, "--labels", "a,b"],
                 "--temperature: must be from 1e-06 to 3.40282e+38 (a float), got inf"),
                # A float: 1e-50 would reach the server as 0, 1e39 as inf.
                (["similarity", "--temperature", "1e-50", "--images", image, "--texts", "a"],
                 "--temperature: must be from 1e-06 to 3.40282e+38 (a float), got 1e-50"),
                (["classify", "--temperature", "1e39", image, "--labels", "a,b"],
                 "--temperature: must be from 1e-06 to 3.40282e+38 (a float), got 1e39"),
                (["classify", "--top_k", "-1", image, "--labels", "a,b"],
                 "--top_k: must be 0 or more, got -1"),
                (["bench", "--concurrency", "0"],
                 "--concurrency: must be a positive number, got 0")):
            result = subprocess.run([ARGS.client, *args], capture_output=True, text=True,
                                    timeout=60)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn(message, result.stderr, args)
            self.assertNotIn("not in range", result.stderr, args)


class ClientAgainstAFakeServerTest(unittest.TestCase):
    """clip_client against a fake ClipService that fails in chosen ways.

    Its EmbedStream answers the first image and fails the others with INTERNAL (as a
    model failing its batches would), or a BMP with CANCELLED (as a server that
    dropped the item); its EmbedText refuses more than one text a request (as a server
    with --max_items_per_request=1 does).
    """

    @classmethod
    def setUpClass(cls):
        lib.compile_stubs(ARGS.proto_dir, ARGS.googleapis_dir)
        pb, pb_grpc = lib.import_clipserve()

        class FailingAfterTheFirst(pb_grpc.ClipServiceServicer):
            def EmbedStream(self, request_iterator, context):
                for request in request_iterator:
                    response = pb.EmbedStreamResponse(id=request.id)
                    if request.id == "0":
                        response.embedding.values.extend([0.6, 0.8])
                    elif request.image.encoded.startswith(b"GIF"):
                        # As a server lost partway through a stream.
                        context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
                    elif request.image.encoded.startswith(b"BM"):
                        response.error.code = 1  # CANCELLED
                        response.error.message = "dropped"
                    else:
                        response.error.code = 13  # INTERNAL
                        response.error.message = "model failed on a batch of 1"
                    yield response

            def EmbedText(self, request, context):
                if len(request.texts) > 1:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  "texts: at most 1 item per request")
                # As a server lost partway through a job answers every retry.
                if request.texts[0] == "gone":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
                # As two replicas serving different models would answer.
                if request.texts[0] == "wide":
                    return pb.EmbedTextResponse(
                        embeddings=[pb.Embedding(values=[0.6, 0.8, 0.0])], model="m")
                model = "other" if request.texts[0] == "other" else "m"
                return pb.EmbedTextResponse(embeddings=[pb.Embedding(values=[0.6, 0.8])],
                                            model=model)

        cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_ClipServiceServicer_to_server(FailingAfterTheFirst(), cls.server)
        cls.target = f"127.0.0.1:{cls.server.add_insecure_port('127.0.0.1:0')}"
        cls.server.start()
        cls.tmp = tempfile.mkdtemp(prefix="clip_client_failing_server_")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_texts_per_request_fits_a_servers_item_limit(self):
        texts = ["a cat", "a dog", "a rocket"]
        refused = subprocess.run(
            [ARGS.client, "--target", self.target, "embed-text", *texts],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("INVALID_ARGUMENT", refused.stderr)
        fitted = subprocess.run(
            [ARGS.client, "--target", self.target, "embed-text", "--texts_per_request",
             "1", *texts], capture_output=True, text=True, timeout=60)
        self.assertEqual(fitted.returncode, 0, fitted.stderr)
        rows = [json.loads(line) for line in fitted.stdout.splitlines()]
        self.assertEqual([r["input"] for r in rows], texts)

    def test_a_server_lost_partway_is_not_one_never_reached(self):
        result = subprocess.run(
            [ARGS.client, "--target", self.target, "embed-text", "--texts_per_request",
             "1", "a cat", "a dog", "gone"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, "")
        self.assertRegex(result.stderr, r"^error: UNAVAILABLE: lost the server at " +
                         re.escape(self.target) + r" after 2 of 3 texts: connection reset"
                         r" \(request id [0-9a-f]+\)\n$")

    def test_a_server_lost_partway_counts_only_what_it_answered(self):
        # The file too big to send fails here, and was never the server's to answer.
        files = [os.path.join(self.tmp, n) for n in ("first.png", "big.png", "last.gif")]
        shutil.copy(os.path.join(ARGS.images, "one_pixel.png"), files[0])
        with open(files[1], "wb") as f:
            f.write(b"\0" * 70000)
        with open(files[2], "wb") as f:
            f.write(b"GIF89a")  # what the fake server looks at
        try:
            result = subprocess.run(
                [ARGS.client, "--target", self.target, "--max_message_bytes", "65536",
                 "embed-image", "--skip_errors", "--max_in_flight", "1", *files],
                capture_output=True, text=True, timeout=60)
        finally:
            for f in files:
                os.remove(f)
        self.assertNotEqual(result.returncode, 0)
        self.assertRegex(result.stderr, r"(?m)^error: UNAVAILABLE: lost the server at " +
                         re.escape(self.target) + r" after 1 of 3 images: connection reset")

    def test_rows_of_other_widths_or_models_across_requests_are_refused(self):
        for texts, message in ((["a cat", "wide"], "an embedding of 3 floats among ones of 2"),
                               (["a cat", "other"], 'texts from 2 on were embedded by '
                                'model "other", those before by "m"')):
            result = subprocess.run(
                [ARGS.client, "--target", self.target, "embed-text", "--texts_per_request",
                 "1", *texts], capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0, texts)
            self.assertEqual(result.stdout, "", texts)
            self.assertEqual(result.stderr, "error: INTERNAL: the server's reply is "
                             f"malformed: {message}\n")

    def test_skip_errors_fails_the_job_and_an_earlier_output_stays(self):
        files = []
        for name in ("a.png", "b.png", "c.png"):
            files.append(os.path.join(self.tmp, name))
            shutil.copy(os.path.join(ARGS.images, "chelsea.png"), files[-1])
        npy = os.path.join(self.tmp, "x.npy")
        with open(npy, "wb") as f:
            f.write(b"an earlier run")
        result = subprocess.run(
            [ARGS.client, "--target", self.target, "embed-image", "--skip_errors",
             "--max_in_flight", "1", "-o", npy, *files],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            len(re.findall(r"(?m)^error: INTERNAL: model failed", result.stderr)), 1,
            result.stderr)
        self.assertNotIn("warning:", result.stderr)
        self.assertIn("nothing written: 2 of 3 files failed for a reason not their own",
                      result.stderr)
        with open(npy, "rb") as f:
            self.assertEqual(f.read(), b"an earlier run")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["a.png", "b.png", "c.png", "x.npy"])

    def test_a_cancelled_item_from_the_server_is_said(self):
        files = [os.path.join(self.tmp, "first.png"), os.path.join(self.tmp, "second.bmp")]
        shutil.copy(os.path.join(ARGS.images, "chelsea.png"), files[0])
        shutil.copy(os.path.join(ARGS.images, "chelsea.bmp"), files[1])
        try:
            result = subprocess.run(
                [ARGS.client, "--target", self.target, "embed-image", "--max_in_flight",
                 "1", *files], capture_output=True, text=True, timeout=60)
        finally:
            for f in files:
                os.remove(f)
        self.assertNotEqual(result.returncode, 0, result.stderr)
        # Only the client's own "not processed" items go unsaid.
        self.assertRegex(result.stderr, r"(?m)^error: CANCELLED: dropped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    parser.add_argument("--images", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
