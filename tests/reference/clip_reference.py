"""Reference CLIP networks (Radford et al. 2021) for clipserve's numerical tests.

This is the Python twin of server/model/: the C++ modules must reproduce what this file
computes, with the same parameter names, so one state dict serves both. It is written
for clarity, not speed, and runs on the CPU in float32.

Configuration (the open_clip schema, plus clipserve's `text_cfg.encoder_type`):

    {"embed_dim": E, "quick_gelu": bool,
     "vision_cfg": {"image_size", "width", "layers", "patch_size",
                    "head_width" (default 64), "mlp_ratio" (default 4.0)},
     "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers",
                  "mlp_ratio" (default 4.0),
                  "encoder_type": "transformer" (default) | "cbow"}}

`vision_cfg.layers` is an int for a Vision Transformer and a list of four ints for the
modified ResNet. Parameter names equal the OpenAI / open_clip state-dict keys:

    visual.*                      the image tower (ViT or ModifiedResNet)
    token_embedding.weight        [vocab, width]
    positional_embedding          [context_length, width]      (transformer text only)
    transformer.resblocks.N.*     the causal text transformer  (transformer text only)
    ln_final.{weight,bias}                                      (transformer text only)
    text_projection               [width, E]
    logit_scale                   scalar; exp(logit_scale) is 1/temperature

Tensors are sequence-first inside the transformers ((L, N, D), as OpenAI's code and
nn.MultiheadAttention with batch_first=False), batch-first everywhere else.
"""

import copy
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>, the highest id: text.argmax(-1) finds it
PAD_TOKEN = 0      # clipserve / OpenAI pad with 0 after the end token
LOGIT_SCALE_MAX = 100.0  # CLIP clamps exp(logit_scale) at 100
LAYER_NORM_EPS = 1e-5


def normalized_config(cfg):
    """A deep copy of `cfg` with every default filled in; raises ValueError on nonsense."""
    cfg = copy.deepcopy(cfg)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError("config lacks %r" % key)
    cfg.setdefault("quick_gelu", False)
    v = cfg["vision_cfg"]
    v.setdefault("head_width", 64)
    v.setdefault("mlp_ratio", 4.0)
    if v.get("patch_size") is None:
        v["patch_size"] = None
    t = cfg["text_cfg"]
    t.setdefault("mlp_ratio", 4.0)
    t.setdefault("encoder_type", "transformer")
    if t["encoder_type"] not in ("transformer", "cbow"):
        raise ValueError("unknown text encoder_type %r" % t["encoder_type"])
    if isinstance(v["layers"], (list, tuple)):
        if len(v["layers"]) != 4:
            raise ValueError("a ModifiedResNet needs 4 layer counts")
        if v["image_size"] % 32:
            raise ValueError("ModifiedResNet image_size must be a multiple of 32")
        if (v["width"] * 32) % v["head_width"]:
            raise ValueError("attnpool width %d not divisible by head_width" % (v["width"] * 32))
    else:
        if v["patch_size"] is None or v["image_size"] % v["patch_size"]:
            raise ValueError("ViT image_size must be a multiple of patch_size")
        if v["width"] % v["head_width"]:
            raise ValueError("vision width not divisible by head_width")
    if t["encoder_type"] == "transformer" and t["width"] % t["heads"]:
        raise ValueError("text width not divisible by heads")
    return cfg


def is_resnet_config(cfg):
    return isinstance(cfg["vision_cfg"]["layers"], (list, tuple))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI trained its models with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def make_activation(quick_gelu):
    return QuickGELU() if quick_gelu else nn.GELU()  # nn.GELU(): the exact erf form


# --------------------------------------------------------------------------- transformer


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += c_proj(act(c_fc(ln_2(x))))."""

    def __init__(self, width, heads, mlp_ratio, quick_gelu):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = nn.MultiheadAttention(width, heads)  # in_proj_weight [3W, W] = [q; k; v]
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", make_activation(quick_gelu)),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x, attn_mask=None):  # x: (L, N, W)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_ratio, quick_gelu):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)])

    def forward(self, x, attn_mask=None):
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


def causal_mask(length, dtype=torch.float32):
    """Additive mask: 0 on and below the diagonal, -inf above (position i sees j <= i)."""
    return torch.full((length, length), float("-inf"), dtype=dtype).triu(1)


# --------------------------------------------------------------------------- image towers


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, mlp_ratio, output_dim,
                 quick_gelu):
        super().__init__()
        grid = image_size // patch_size
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_post = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):  # x: (N, 3, S, S)
        x = self.conv1(x)                       # (N, W, g, g)
        x = x.flatten(2).transpose(1, 2)        # (N, g*g, W), patches in row-major order
        cls = self.class_embedding.expand(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_post(x[:, 0, :])            # the class token
        return x @ self.proj


class Bottleneck(nn.Module):
    """OpenAI's anti-aliased bottleneck: strided convs replaced by an avgpool."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token (plus position) queries all HW+1 tokens."""

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spacial_dim ** 2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x):  # x: (N, C, H, W)
        x = x.flatten(2).permute(2, 0, 1)                       # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1, N, C)
        x = x + self.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False)
        return out[0]                                           # (N, output_dim)


class ModifiedResNet(nn.Module):
    """ResNet with a 3-conv stem, avgpool downsampling and attention pooling."""

    def __init__(self, layers, output_dim, heads, image_size, width):
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32
        self.attnpool = AttentionPool2d(image_size // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self._inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


# --------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg = normalized_config(cfg)
        self.cfg = cfg
        v, t, embed_dim = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
        if is_resnet_config(cfg):
            self.visual = ModifiedResNet(
                layers=list(v["layers"]), output_dim=embed_dim,
                heads=v["width"] * 32 // v["head_width"],
                image_size=v["image_size"], width=v["width"])
        else:
            self.visual = VisionTransformer(
                image_size=v["image_size"], patch_size=v["patch_size"], width=v["width"],
                layers=v["layers"], heads=v["width"] // v["head_width"],
                mlp_ratio=v["mlp_ratio"], output_dim=embed_dim, quick_gelu=cfg["quick_gelu"])
        self.text_encoder_type = t["encoder_type"]
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        if self.text_encoder_type == "transformer":
            self.positional_embedding = nn.Parameter(torch.zeros(t["context_length"], t["width"]))
            self.transformer = Transformer(t["width"], t["layers"], t["heads"], t["mlp_ratio"],
                                           cfg["quick_gelu"])
            self.ln_final = nn.LayerNorm(t["width"], eps=LAYER_NORM_EPS)
        self.text_projection = nn.Parameter(torch.zeros(t["width"], embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images):
        """images float [N, 3, S, S] -> unnormalized features [N, E]."""
        return self.visual(images)

    def encode_text(self, text):
        """text int64 [N, context_length] -> unnormalized features [N, E]."""
        if self.text_encoder_type == "cbow":
            return self._encode_text_cbow(text)
        x = self.token_embedding(text) + self.positional_embedding   # (N, L, W)
        mask = causal_mask(text.shape[1], x.dtype)
        x = self.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
        x = self.ln_final(x)
        eot = text.argmax(dim=-1)                                    # EOT has the highest id
        x = x[torch.arange(x.shape[0]), eot]
        return x @ self.text_projection

    def _encode_text_cbow(self, text):
        # Mean of the embeddings at positions 0..L-1, L = index of EOT + 1 (start and end
        # tokens included). With padding id 0 only after EOT this is the number of
        # non-padding tokens.
        emb = self.token_embedding(text)                             # (N, L, W)
        length = text.argmax(dim=-1) + 1                             # (N,)
        positions = torch.arange(text.shape[1])
        keep = (positions[None, :] < length[:, None]).to(emb.dtype)  # (N, L)
        x = (emb * keep[:, :, None]).sum(dim=1) / length[:, None].to(emb.dtype)
        return x @ self.text_projection

    def forward(self, images, text):
        return self.encode_image(images), self.encode_text(text)


def build_model(cfg):
    """A CLIP with zero/default-initialized weights; eval() mode (BatchNorm uses stats)."""
    return CLIP(cfg).eval()


# --------------------------------------------------------------------------- similarity/loss


def clip_outputs(image_features, text_features, logit_scale):
    """Everything CLIP computes from unnormalized features (float32 in, float32 out).

    logits_per_image = min(exp(logit_scale), 100) * normalize(I) @ normalize(T)^T;
    loss = (CE(logits_per_image, arange(n)) + CE(logits_per_text, arange(n))) / 2.
    """
    scale = torch.exp(logit_scale).clamp(max=LOGIT_SCALE_MAX)
    image_n = F.normalize(image_features, dim=-1)
    text_n = F.normalize(text_features, dim=-1)
    logits_per_image = scale * (image_n @ text_n.t())
    logits_per_text = logits_per_image.t().contiguous()
    out = {
        "image_features": image_features,
        "text_features": text_features,
        "logits_per_image": logits_per_image,
        "logits_per_text": logits_per_text,
        "logit_scale": scale,
    }
    if image_features.shape[0] == text_features.shape[0]:
        labels = torch.arange(image_features.shape[0])
        li = F.cross_entropy(logits_per_image, labels)
        lt = F.cross_entropy(logits_per_text, labels)
        out["loss_image_to_text"] = li
        out["loss_text_to_image"] = lt
        out["loss"] = (li + lt) / 2
    return out


@torch.no_grad()
def compute_expected(model, images, texts):
    """Plain dict of float32 tensors: features, logits, losses, clamped exp(logit_scale)."""
    model = model.float().eval()
    out = clip_outputs(model.encode_image(images.float()), model.encode_text(texts),
                       model.logit_scale.float())
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


# --------------------------------------------------------------------------- random init


def _randn(gen, shape, std, mean=0.0):
    return torch.randn(shape, generator=gen) * std + mean


@torch.no_grad()
def init_random_(model, gen):
    """Fills every parameter and buffer with seeded random values of a sane scale.

    Unlike training init, biases, LayerNorm/BatchNorm affine parameters and BatchNorm
    running statistics are all random (nonzero, non-one), so a swapped, transposed,
    dropped or misnamed tensor changes the outputs.
    """
    done = set()
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())

    def setp(name, value):
        tensor = tensors[name]
        assert tensor.shape == value.shape, (name, tensor.shape, value.shape)
        tensor.copy_(value)
        done.add(name)

    for mname, m in model.named_modules():
        p = mname + "." if mname else ""
        if isinstance(m, nn.LayerNorm):
            setp(p + "weight", _randn(gen, m.weight.shape, 0.1, 1.0))
            setp(p + "bias", _randn(gen, m.bias.shape, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            setp(p + "weight", _randn(gen, (c,), 0.1, 1.0))
            setp(p + "bias", _randn(gen, (c,), 0.1))
            setp(p + "running_mean", _randn(gen, (c,), 0.1))
            setp(p + "running_var", torch.rand((c,), generator=gen) + 0.5)
            setp(p + "num_batches_tracked", torch.tensor(1000 + int(torch.randint(
                0, 1000, (1,), generator=gen)), dtype=torch.long))
        elif isinstance(m, nn.MultiheadAttention):
            w = m.embed_dim
            setp(p + "in_proj_weight", _randn(gen, (3 * w, w), w ** -0.5))
            setp(p + "in_proj_bias", _randn(gen, (3 * w,), 0.05))
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
            std = fan_in ** -0.5
            if mname.endswith("out_proj") or mname.endswith("mlp.c_proj"):
                std *= 0.5  # residual branches a bit smaller, as in CLIP's init
            setp(p + "weight", _randn(gen, m.weight.shape, std))
            setp(p + "bias", _randn(gen, m.bias.shape, 0.05))
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            gain = 2.0 if isinstance(model.visual, ModifiedResNet) else 1.0  # ReLU nets
            setp(p + "weight", _randn(gen, m.weight.shape, (gain / fan_in) ** 0.5))
        elif isinstance(m, nn.Embedding):
            # CBOW features are a plain mean of embeddings: give them unit scale so the
            # outputs are O(1) rather than O(0.005) and absolute tolerances stay meaningful.
            std = 1.0 if model.text_encoder_type == "cbow" else 0.02
            setp(p + "weight", _randn(gen, m.weight.shape, std))

    v = model.visual
    if isinstance(v, VisionTransformer):
        width = v.class_embedding.shape[0]
        setp("visual.class_embedding", _randn(gen, v.class_embedding.shape, width ** -0.5))
        setp("visual.positional_embedding", _randn(gen, v.positional_embedding.shape,
                                                   width ** -0.5))
        setp("visual.proj", _randn(gen, v.proj.shape, width ** -0.5))
    else:
        pe = v.attnpool.positional_embedding
        setp("visual.attnpool.positional_embedding", _randn(gen, pe.shape, pe.shape[1] ** -0.5))
    if model.text_encoder_type == "transformer":
        setp("positional_embedding", _randn(gen, model.positional_embedding.shape, 0.01))
    tp = model.text_projection
    setp("text_projection", _randn(gen, tp.shape, tp.shape[0] ** -0.5))
    setp("logit_scale", torch.tensor(math.log(1 / 0.07)) + _randn(gen, (), 0.1))

    missing = set(model.state_dict().keys()) - done
    assert not missing, "init_random_ left %s" % sorted(missing)
    return model


# --------------------------------------------------------------------------- precision


def openai_half_keys(model):
    """State-dict keys OpenAI stores in fp16 (its `convert_weights`).

    Conv and Linear weights and biases (MultiheadAttention's in_proj and out_proj, MLPs,
    ResNet convs, attnpool q/k/v/c_proj), `visual.proj` and `text_projection`. Everything
    else stays fp32: LayerNorm, BatchNorm (with its running stats), token/positional/
    class embeddings, logit_scale.
    """
    keys = set()
    for mname, m in model.named_modules():
        p = mname + "." if mname else ""
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            keys.add(p + "weight")
            if m.bias is not None:
                keys.add(p + "bias")
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight",
                         "v_proj_weight", "bias_k", "bias_v"):
                if getattr(m, name, None) is not None:
                    keys.add(p + name)
    for name in ("text_projection", "visual.proj"):
        if name in model.state_dict():
            keys.add(name)
    return keys


@torch.no_grad()
def round_half_subset_(model):
    """Rounds OpenAI's fp16 subset to fp16 and back, in place: the master weights then
    hold exactly the values every checkpoint layout stores."""
    params = dict(model.named_parameters())
    for key in openai_half_keys(model):
        params[key].copy_(params[key].half().float())
    return model


def state_dict_plain(model):
    """The state dict as a plain dict of detached, contiguous tensors (model order)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
