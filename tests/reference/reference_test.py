#!/usr/bin/python3
"""Tests of the reference CLIP implementation and of the fixtures it generates.

    /usr/bin/python3 tests/reference/reference_test.py [--fixtures DIR] [unittest args]

Without --fixtures (or $CLIPSERVE_MODEL_FIXTURES) the fixtures are generated into a
temporary directory first (about 10 s) and removed afterwards. With it, an existing
fixture directory written by generate_model_fixtures.py is checked as it is.
"""

import json
import math
import os
import pickle
import pickletools
import shutil
import struct
import sys
import tempfile
import unittest
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkpoints as ck  # noqa: E402
import clip_reference as cr  # noqa: E402
import generate_model_fixtures as gen  # noqa: E402

torch.set_num_threads(1)

FIXTURES = None        # set in main() / setUpModule
_TEMP_DIR = None
FULL_CASES = ["vit_transformer", "resnet_transformer", "vit_cbow", "vit_gelu"]
HF_CASES = ["vit_transformer", "vit_gelu"]


def setUpModule():
    global FIXTURES, _TEMP_DIR
    if FIXTURES is None:
        FIXTURES = os.environ.get("CLIPSERVE_MODEL_FIXTURES")
    if not FIXTURES:
        _TEMP_DIR = tempfile.mkdtemp(prefix="clip_fixtures_")
        FIXTURES = _TEMP_DIR
        gen.main(["--out", FIXTURES, "--quiet"])


def tearDownModule():
    if _TEMP_DIR:
        shutil.rmtree(_TEMP_DIR, ignore_errors=True)


# ------------------------------------------------------------------------- helpers


def case_path(case, *parts):
    return os.path.join(FIXTURES, case, *parts)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load_inputs(case):
    return torch.load(case_path(case, "inputs.pt"))


def load_expected(case, name="expected.pt"):
    return torch.load(case_path(case, name))


def strict_load(cfg, state_dict, ignore=()):
    """What a strict C++ loader does: exact key set, exact shapes, floating weights.
    Raises ValueError naming the offending key; returns the model in float32."""
    model = cr.build_model(cfg)
    want = model.state_dict()
    got = {k: v for k, v in state_dict.items() if k not in ignore}
    for k in want:
        if k not in got:
            raise ValueError("missing key %s" % k)
    for k in got:
        if k not in want:
            raise ValueError("unexpected key %s" % k)
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError("%s has shape %s, expected %s" % (k, list(v.shape),
                                                                list(want[k].shape)))
        if want[k].is_floating_point() and not v.is_floating_point():
            raise ValueError("%s has dtype %s, expected a floating type" % (k, v.dtype))
    model.load_state_dict(ck.as_float32(got), strict=True)
    return model.eval()


def run(model, inputs):
    return cr.compute_expected(model, inputs["images"], inputs["texts"])


def master(case):
    seed, cfg, options = gen.CASES[case]
    return gen.make_master(cfg, seed, options.get("logit_scale"))


class FixtureTestCase(unittest.TestCase):
    def assertTensorEqual(self, a, b, msg=""):
        self.assertEqual(a.dtype, b.dtype, msg)
        self.assertEqual(tuple(a.shape), tuple(b.shape), msg)
        self.assertTrue(torch.equal(a, b), "%s: max|diff| %g" % (
            msg, (a.double() - b.double()).abs().max().item() if a.numel() else 0))

    def assertClose(self, a, b, atol=1e-5, rtol=1e-5, msg=""):
        self.assertEqual(tuple(a.shape), tuple(b.shape), msg)
        diff = (a.double() - b.double()).abs()
        bound = atol + rtol * b.double().abs()
        self.assertTrue(bool((diff <= bound).all()), "%s: max|diff| %g" % (
            msg, diff.max().item()))

    def assertOutputsEqual(self, got, want, exact=True, atol=1e-5, rtol=1e-5, msg=""):
        self.assertEqual(set(got), set(want), msg)
        for k in want:
            if exact:
                self.assertTensorEqual(got[k], want[k], "%s %s" % (msg, k))
            else:
                self.assertClose(got[k], want[k], atol, rtol, "%s %s" % (msg, k))


# ------------------------------------------------------------------------- layouts


class LayoutTest(FixtureTestCase):
    """Every layout reloaded in Python gives the master weights and the expected outputs."""

    def _check_state_dict(self, case, sd, half=None, ignore=()):
        """Values equal to the master's; fp16 exactly on OpenAI's subset when `half`."""
        model, _ = master(case)
        want = cr.state_dict_plain(model)
        half_keys = cr.openai_half_keys(model)
        got = {k: v for k, v in sd.items() if k not in ignore}
        self.assertEqual(set(got), set(want), case)
        for k, v in want.items():
            g = got[k]
            if half is not None and v.is_floating_point():
                self.assertEqual(g.dtype, torch.float16 if k in half_keys else torch.float32,
                                 "%s %s" % (case, k))
            if v.is_floating_point():
                self.assertTensorEqual(g.float(), v, "%s %s" % (case, k))
            else:
                self.assertTensorEqual(g, v, "%s %s" % (case, k))
        out = run(strict_load(model.cfg, got), load_inputs(case))
        self.assertOutputsEqual(out, load_expected(case), msg=case)

    def test_manifest_lists_existing_files(self):
        for case in gen.CASES:
            manifest = load_json(case_path(case, "manifest.json"))
            self.assertEqual(manifest["case"], case)
            for e in manifest["checkpoints"]:
                self.assertTrue(os.path.isfile(case_path(case, e["path"])), e["path"])
                self.assertTrue(os.path.isfile(case_path(case, e["expected"])), e["expected"])
            self.assertEqual(load_json(case_path(case, "config.json")), gen.CASES[case][1])

    def test_expected_regenerates_exactly(self):
        for case in gen.CASES:
            model, inputs = master(case)
            saved = load_inputs(case)
            for k in ("images", "texts", "text_lengths"):
                self.assertTensorEqual(saved[k], inputs[k], "%s %s" % (case, k))
            self.assertOutputsEqual(run(model, inputs), load_expected(case), msg=case)

    def test_openai_archive(self):
        extra = ("input_resolution", "context_length", "vocab_size")
        for case in gen.CASES:
            archive = torch.jit.load(case_path(case, "openai.pt"))
            sd = archive.state_dict()
            cfg = load_json(case_path(case, "config.json"))
            self.assertEqual(int(sd["input_resolution"]), cfg["vision_cfg"]["image_size"])
            self.assertEqual(int(sd["context_length"]), cfg["text_cfg"]["context_length"])
            self.assertEqual(int(sd["vocab_size"]), cfg["text_cfg"]["vocab_size"])
            self._check_state_dict(case, sd, half=True, ignore=extra)
            # The archive's own traced code, in float32 again, reproduces expected.
            for _, p in archive.named_parameters():
                p.data = p.data.float()
            inputs = load_inputs(case)
            want = load_expected(case)
            with torch.no_grad():
                self.assertClose(archive.encode_image(inputs["images"]), want["image_features"],
                                 1e-6, 1e-6, case)
                self.assertClose(archive.encode_text(inputs["texts"]), want["text_features"],
                                 1e-6, 1e-6, case)

    def test_state_dict(self):
        for case in gen.CASES:
            path = case_path(case, "state_dict.pt")
            self.assertTrue(zipfile.is_zipfile(path))
            sd = torch.load(path)
            self.assertIsInstance(sd, dict)
            self._check_state_dict(case, sd, half=True)

    def test_wrapped_state_dict(self):
        for case in FULL_CASES:
            path = case_path(case, "state_dict_wrapped.pt")
            self.assertTrue(zipfile.is_zipfile(path))
            obj = torch.load(path)
            self.assertIn("state_dict", obj)
            self.assertTrue(all(k.startswith("module.") for k in obj["state_dict"]))
            self._check_state_dict(case, ck.unwrap_state_dict(obj), half=True)

    def test_safetensors_f32(self):
        for case in FULL_CASES:
            path = case_path(case, "model_f32.safetensors")
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            self.assertEqual(n % 8, 0, "header padded to 8 bytes")
            self.assertEqual(header["__metadata__"], {"format": "pt"})
            dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
            self.assertLessEqual(dtypes, {"F32", "I64"})
            sd, meta = ck.read_safetensors(path, with_metadata=True)
            self._check_state_dict(case, sd)

    def test_safetensors_f16_bf16(self):
        for case in FULL_CASES:
            model, inputs = master(case)
            want_sd = cr.state_dict_plain(model)
            for tag, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
                sd = ck.read_safetensors(case_path(case, "model_%s.safetensors" % tag))
                self.assertEqual(set(sd), set(want_sd))
                for k, v in want_sd.items():
                    self.assertTensorEqual(sd[k], v.to(dtype) if v.is_floating_point() else v,
                                           "%s %s %s" % (case, tag, k))
                out = run(strict_load(model.cfg, sd), inputs)
                self.assertOutputsEqual(out, load_expected(case, "expected_%s.pt" % tag),
                                        msg="%s %s" % (case, tag))
                # Sanity: rounding the weights moves the outputs only a little.
                full = load_expected(case)
                rel = (out["image_features"] - full["image_features"]).norm() / \
                    full["image_features"].norm()
                self.assertLess(rel.item(), 0.05 if tag == "bf16" else 0.01, (case, tag))

    def test_open_clip_dirs(self):
        for case in FULL_CASES:
            cfg = load_json(case_path(case, "config.json"))
            for sub, fname in (("open_clip", "open_clip_model.safetensors"),
                               ("open_clip_bin", "open_clip_pytorch_model.bin")):
                oc = load_json(case_path(case, sub, "open_clip_config.json"))
                self.assertEqual(oc["model_cfg"], cfg)
                self.assertEqual(tuple(oc["preprocess_cfg"]["mean"]), cr.OPENAI_MEAN)
                self.assertEqual(tuple(oc["preprocess_cfg"]["std"]), cr.OPENAI_STD)
                path = case_path(case, sub, fname)
                if fname.endswith(".bin"):
                    self.assertTrue(zipfile.is_zipfile(path))
                    sd = torch.load(path)
                else:
                    sd = ck.read_safetensors(path)
                self._check_state_dict(case, sd)

    def test_hf_dirs(self):
        for case in HF_CASES:
            cfg = cr.normalized_config(load_json(case_path(case, "config.json")))
            model, inputs = master(case)
            want_hf = ck.openai_to_hf(cr.state_dict_plain(model), cfg)
            for sub, fname in (("hf", "model.safetensors"), ("hf_bin", "pytorch_model.bin")):
                hcfg = load_json(case_path(case, sub, "config.json"))
                self.assertEqual(hcfg["model_type"], "clip")
                self.assertEqual(hcfg["vision_config"]["hidden_act"],
                                 "quick_gelu" if cfg["quick_gelu"] else "gelu")
                path = case_path(case, sub, fname)
                sd = torch.load(path) if fname.endswith(".bin") else ck.read_safetensors(path)
                self.assertEqual(set(sd), set(want_hf))
                for k in want_hf:
                    self.assertTensorEqual(sd[k], want_hf[k], "%s %s" % (case, k))
                self.assertEqual(sd["text_model.embeddings.position_ids"].dtype, torch.int64)
                # HF -> OpenAI names and back gives the master weights ...
                self._check_state_dict(case, ck.hf_to_openai(sd))
                # ... and an independent implementation of transformers' CLIPModel math on
                # the HF tensors (separate q/k/v, Linear projections) gives expected.
                out = hf_style_forward(sd, hcfg, inputs)
                self.assertOutputsEqual(out, load_expected(case), exact=False, atol=2e-5,
                                        rtol=2e-5, msg=case)


    def test_hf_sharded_dirs(self):
        # The shards together hold the one-file folder's tensors, each once, each in the
        # shard its index names.
        for case in HF_CASES:
            whole = ck.read_safetensors(case_path(case, "hf", "model.safetensors"))
            for sub, index_name in (("hf_sharded", "model.safetensors.index.json"),
                                    ("hf_sharded_bin", "pytorch_model.bin.index.json")):
                index = load_json(case_path(case, sub, index_name))
                merged = {}
                for name in sorted(set(index["weight_map"].values())):
                    path = case_path(case, sub, name)
                    part = torch.load(path) if name.endswith(".bin") else \
                        ck.read_safetensors(path)
                    self.assertTrue(set(part).isdisjoint(merged), name)
                    for k in part:
                        self.assertEqual(index["weight_map"][k], name)
                    merged.update(part)
                self.assertEqual(set(merged), set(whole))
                for k in whole:
                    self.assertTensorEqual(merged[k], whole[k], "%s %s %s" % (case, sub, k))


def hf_style_forward(hf, hcfg, inputs):
    """transformers' CLIPModel forward, re-derived from HF key names (batch-first, q
    scaled before the product, eos pooled at its first occurrence)."""
    hf = {k: (v.float() if v.is_floating_point() else v) for k, v in hf.items()}

    def act(name):
        return (lambda x: x * torch.sigmoid(1.702 * x)) if name == "quick_gelu" else F.gelu

    def ln(x, p, eps):
        return F.layer_norm(x, (x.shape[-1],), hf[p + ".weight"], hf[p + ".bias"], eps)

    def encoder(x, prefix, c, mask):
        heads, n_layers, eps = c["num_attention_heads"], c["num_hidden_layers"], \
            c["layer_norm_eps"]
        n, length, d = x.shape
        hd = d // heads
        for i in range(n_layers):
            p = "%s.layers.%d." % (prefix, i)
            h = ln(x, p + "layer_norm1", eps)
            q = F.linear(h, hf[p + "self_attn.q_proj.weight"], hf[p + "self_attn.q_proj.bias"])
            k = F.linear(h, hf[p + "self_attn.k_proj.weight"], hf[p + "self_attn.k_proj.bias"])
            v = F.linear(h, hf[p + "self_attn.v_proj.weight"], hf[p + "self_attn.v_proj.bias"])
            q, k, v = (t.reshape(n, length, heads, hd).transpose(1, 2) for t in (q, k, v))
            scores = (q * hd ** -0.5) @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores + mask
            a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
            x = x + F.linear(a, hf[p + "self_attn.out_proj.weight"],
                             hf[p + "self_attn.out_proj.bias"])
            h = ln(x, p + "layer_norm2", eps)
            h = F.linear(h, hf[p + "mlp.fc1.weight"], hf[p + "mlp.fc1.bias"])
            x = x + F.linear(act(c["hidden_act"])(h), hf[p + "mlp.fc2.weight"],
                             hf[p + "mlp.fc2.bias"])
        return x

    vc, tc = hcfg["vision_config"], hcfg["text_config"]
    images, ids = inputs["images"], inputs["texts"]
    with torch.no_grad():
        x = F.conv2d(images, hf["vision_model.embeddings.patch_embedding.weight"],
                     stride=vc["patch_size"])
        x = x.flatten(2).transpose(1, 2)
        cls = hf["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1)
        x = x + hf["vision_model.embeddings.position_embedding.weight"][
            hf["vision_model.embeddings.position_ids"][0]]
        x = ln(x, "vision_model.pre_layrnorm", vc["layer_norm_eps"])
        x = encoder(x, "vision_model.encoder", vc, None)
        pooled = ln(x[:, 0], "vision_model.post_layernorm", vc["layer_norm_eps"])
        image_features = F.linear(pooled, hf["visual_projection.weight"])

        x = hf["text_model.embeddings.token_embedding.weight"][ids]
        x = x + hf["text_model.embeddings.position_embedding.weight"][
            hf["text_model.embeddings.position_ids"][0, :ids.shape[1]]]
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
        x = encoder(x, "text_model.encoder", tc, mask)
        x = ln(x, "text_model.final_layer_norm", tc["layer_norm_eps"])
        eos = (ids == tc["eos_token_id"]).int().argmax(-1)
        text_features = F.linear(x[torch.arange(x.shape[0]), eos], hf["text_projection.weight"])
        out = cr.clip_outputs(image_features, text_features, hf["logit_scale"])
    return out


# ------------------------------------------------------------------------- the math


class ReferenceMathTest(FixtureTestCase):

    def test_inputs_format(self):
        for case in gen.CASES:
            inputs = load_inputs(case)
            texts, lengths = inputs["texts"], inputs["text_lengths"]
            self.assertEqual(texts.dtype, torch.int64)
            self.assertEqual(inputs["images"].dtype, torch.float32)
            self.assertEqual(tuple(texts.shape), (gen.BATCH, 77))
            self.assertEqual(lengths.tolist(), [b + 2 for b in gen.TEXT_BODY_LENGTHS])
            self.assertIn(77, lengths.tolist())
            for row, n in zip(texts, lengths.tolist()):
                self.assertEqual(row[0].item(), cr.SOT_TOKEN)
                self.assertEqual(row[n - 1].item(), cr.EOT_TOKEN)
                self.assertTrue(bool(((row[1:n - 1] >= 1) & (row[1:n - 1] <= 49405)).all()))
                self.assertTrue(bool((row[n:] == 0).all()))
                self.assertEqual(int((row != 0).sum()), n)
                self.assertEqual(int(row.argmax()), n - 1)

    def test_saved_dicts_are_libtorch_readable(self):
        """inputs.pt / expected*.pt: zip format, a plain dict of tensors, pickled with
        SETITEMS only (LibTorch 1.13's unpickler lacks SETITEM and OrderedDict)."""
        for case in gen.CASES:
            for name in sorted(os.listdir(case_path(case))):
                if not (name.startswith("expected") or name == "inputs.pt"):
                    continue
                path = case_path(case, name)
                self.assertTrue(zipfile.is_zipfile(path), path)
                with zipfile.ZipFile(path) as z:
                    pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
                ops = [op.name for op, _, _ in pickletools.genops(pkl)]
                self.assertNotIn("SETITEM", ops, path)
                self.assertEqual(ops[1:3], ["EMPTY_DICT", "BINPUT"], path)  # top: dict
                obj = torch.load(path)
                self.assertIs(type(obj), dict)
                self.assertTrue(all(isinstance(v, torch.Tensor) for v in obj.values()))
                for k, v in obj.items():
                    if v.is_floating_point():
                        self.assertEqual(v.dtype, torch.float32, (path, k))

    def test_expected_keys_and_shapes(self):
        for case in gen.CASES:
            e = load_expected(case)
            embed = gen.CASES[case][1]["embed_dim"]
            self.assertEqual(tuple(e["image_features"].shape), (8, embed))
            self.assertEqual(tuple(e["text_features"].shape), (8, embed))
            self.assertEqual(tuple(e["logits_per_image"].shape), (8, 8))
            self.assertTensorEqual(e["logits_per_text"], e["logits_per_image"].t().contiguous())
            for k in ("loss_image_to_text", "loss_text_to_image", "loss", "logit_scale"):
                self.assertEqual(e[k].dim(), 0, k)
            # Features are unnormalized (the norms vary) and not degenerate.
            self.assertGreater(e["image_features"].norm(dim=-1).std().item(), 1e-3)
            self.assertGreater(e["logits_per_image"].std().item(), 0.1)

    def test_loss_by_hand(self):
        for case in gen.CASES:
            e = load_expected(case)
            model, _ = master(case)
            img = e["image_features"].double().numpy()
            txt = e["text_features"].double().numpy()
            img = img / np.linalg.norm(img, axis=1, keepdims=True)
            txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
            scale = min(math.exp(float(model.logit_scale)), 100.0)
            logits = scale * img @ txt.T
            self.assertAlmostEqual(float(e["logit_scale"]), scale, places=4)
            np.testing.assert_allclose(e["logits_per_image"].numpy(), logits, atol=1e-4)

            def ce(lg):
                lg = lg - lg.max(axis=1, keepdims=True)
                logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
                return -np.mean(np.diag(logp))
            li, lt = ce(logits), ce(logits.T)
            self.assertAlmostEqual(float(e["loss_image_to_text"]), li, places=4)
            self.assertAlmostEqual(float(e["loss_text_to_image"]), lt, places=4)
            self.assertAlmostEqual(float(e["loss"]), (li + lt) / 2, places=4)

    def test_logit_scale_clamped_at_100(self):
        model, _ = master("vit_gelu")
        self.assertGreater(math.exp(float(model.logit_scale)), 100.0)
        e = load_expected("vit_gelu")
        self.assertEqual(float(e["logit_scale"]), 100.0)
        for case in ("vit_transformer", "resnet_transformer", "vit_cbow"):
            scale = float(load_expected(case)["logit_scale"])
            self.assertLess(scale, 100.0)
            self.assertNotAlmostEqual(scale, 1 / 0.07, places=2)  # randomized

    def test_batch_equals_single_rows(self):
        for case in FULL_CASES:
            model, inputs = master(case)
            e = load_expected(case)
            with torch.no_grad():
                for i in range(gen.BATCH):
                    img = model.encode_image(inputs["images"][i:i + 1])
                    txt = model.encode_text(inputs["texts"][i:i + 1])
                    self.assertClose(img[0], e["image_features"][i], msg="%s image %d" % (case, i))
                    self.assertClose(txt[0], e["text_features"][i], msg="%s text %d" % (case, i))

    def test_traced_fp32_reproduces_expected(self):
        for case in FULL_CASES:
            model, inputs = master(case)
            traced = ck.trace_fp32(model, inputs["images"], inputs["texts"])
            e = load_expected(case)
            with torch.no_grad():
                self.assertTensorEqual(traced.encode_image(inputs["images"]),
                                       e["image_features"], case)
                self.assertTensorEqual(traced.encode_text(inputs["texts"]),
                                       e["text_features"], case)

    def test_causal_mask(self):
        for case in ("vit_transformer", "resnet_transformer", "vit_gelu"):
            model, inputs = master(case)
            texts = inputs["texts"].clone()
            n = int(inputs["text_lengths"][0])       # row 0: 19 tokens, then padding
            self.assertLess(n, 77)
            with torch.no_grad():
                base = model.encode_text(texts)
                after = texts.clone()
                after[0, n] = 1234                    # a token after EOT
                after[0, 76] = 49000
                self.assertTensorEqual(model.encode_text(after)[0], base[0], case)
                before = texts.clone()
                before[0, n - 2] = 4321               # a token before EOT
                self.assertGreater((model.encode_text(before)[0] - base[0]).abs().max(), 1e-4)
                # The EOT output equals a run on the prefix alone (no later position seen).
                prefix = texts[:1, :n]
                x = model.token_embedding(prefix) + model.positional_embedding[:n]
                x = model.transformer(x.permute(1, 0, 2), cr.causal_mask(n)).permute(1, 0, 2)
                y = model.ln_final(x)[0, n - 1] @ model.text_projection
                self.assertClose(y, base[0], 1e-5, 1e-5, case)

    def test_cbow_is_mean_of_real_tokens(self):
        model, inputs = master("vit_cbow")
        e = load_expected("vit_cbow")
        with torch.no_grad():
            emb = model.token_embedding.weight
            for i, n in enumerate(inputs["text_lengths"].tolist()):
                mean = emb[inputs["texts"][i, :n]].double().mean(0)
                want = (mean @ model.text_projection.double()).float()
                self.assertClose(e["text_features"][i], want, 1e-5, 1e-5, "row %d" % i)
            self.assertEqual(set(k for k in model.state_dict() if not k.startswith("visual.")),
                             {"token_embedding.weight", "text_projection", "logit_scale"})

    def test_attention_pool_by_hand(self):
        model, inputs = master("resnet_transformer")
        pool = model.visual.attnpool
        torch.manual_seed(0)
        x = torch.randn(3, pool.q_proj.in_features, 2, 2)
        with torch.no_grad():
            got = pool(x)
            n, c = x.shape[:2]
            t = x.flatten(2).permute(0, 2, 1)                  # (N, HW, C)
            t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding
            h = pool.num_heads
            hd = c // h
            q = pool.q_proj(t[:, :1]).reshape(n, 1, h, hd).transpose(1, 2)
            k = pool.k_proj(t).reshape(n, -1, h, hd).transpose(1, 2)
            v = pool.v_proj(t).reshape(n, -1, h, hd).transpose(1, 2)
            a = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1) @ v
            want = pool.c_proj(a.transpose(1, 2).reshape(n, c))
        self.assertEqual(h, 512 // 16)
        self.assertClose(got, want, 1e-5, 1e-5)

    def test_parameter_names(self):
        model, _ = master("resnet_transformer")
        keys = set(model.state_dict())
        for k in ("visual.conv1.weight", "visual.bn3.running_var",
                  "visual.layer1.0.downsample.0.weight",
                  "visual.layer4.0.downsample.1.num_batches_tracked",
                  "visual.attnpool.c_proj.bias",
                  "visual.layer2.0.bn3.running_mean", "ln_final.weight", "logit_scale"):
            self.assertIn(k, keys)
        model, _ = master("vit_transformer")
        keys = set(model.state_dict())
        for k in ("visual.class_embedding", "visual.proj", "visual.ln_pre.bias",
                  "visual.transformer.resblocks.1.attn.in_proj_weight",
                  "visual.transformer.resblocks.1.mlp.c_proj.bias",
                  "transformer.resblocks.0.attn.out_proj.weight", "text_projection",
                  "positional_embedding", "token_embedding.weight"):
            self.assertIn(k, keys)
        self.assertEqual(tuple(model.state_dict()["visual.proj"].shape), (64, 32))
        self.assertEqual(tuple(model.state_dict()["visual.positional_embedding"].shape), (17, 64))
        self.assertEqual(model.visual.transformer.resblocks[0].attn.num_heads, 4)


# ------------------------------------------------------------------------- corrupt


class CorruptTest(FixtureTestCase):
    STRUCTURAL = ("missing_key", "unexpected_key", "misshapen_key", "integer_weight_i8")

    def test_every_corrupt_file_is_rejected(self):
        entries = load_json(os.path.join(FIXTURES, "corrupt", "manifest.json"))
        self.assertGreaterEqual(len(entries), 16)
        cfg = load_json(os.path.join(FIXTURES, "corrupt", entries[0]["config"]))
        for e in entries:
            path = os.path.join(FIXTURES, "corrupt", e["file"])
            self.assertTrue(os.path.isfile(path), path)
            with self.subTest(file=e["file"]):
                if e["format"] == "safetensors":
                    if e["file"].split(".")[0] in self.STRUCTURAL:
                        sd = ck.read_safetensors(path)   # a well-formed file ...
                        with self.assertRaises(ValueError) as cm:
                            strict_load(cfg, sd)           # ... with the wrong tensors
                    else:
                        with self.assertRaises(ck.SafetensorsError) as cm:
                            ck.read_safetensors(path)
                    if e["key"]:
                        self.assertIn(e["key"], str(cm.exception))
                elif e["file"].startswith("deflated_"):
                    # torch.load would inflate it (an unused record): clipserve refuses
                    # what inflates to more than 4x the file before inflating anything.
                    with zipfile.ZipFile(path) as z:
                        inflated = sum(i.file_size for i in z.infolist()
                                       if i.compress_type != zipfile.ZIP_STORED)
                    self.assertGreater(inflated, 4 * os.path.getsize(path))
                elif e["file"].startswith("torchscript_"):
                    # torch.jit.load crashes the interpreter on these bytes (the reason
                    # clipserve no longer calls it); Python's own unpickler refuses them.
                    with zipfile.ZipFile(path) as z:
                        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
                        with self.assertRaises(pickle.UnpicklingError):
                            pickle.loads(z.read(name))
                else:
                    with self.assertRaises(Exception):
                        torch.load(path)
                    with self.assertRaises(Exception):
                        torch.jit.load(path)


def main():
    global FIXTURES
    argv = list(sys.argv)
    if "--fixtures" in argv:
        i = argv.index("--fixtures")
        FIXTURES = argv[i + 1]
        del argv[i:i + 2]
    unittest.main(argv=argv)


if __name__ == "__main__":
    main()
