"""DINOv2 + DPT (UniMatch V2's network), complementary channel dropout, Meta's key format.

The parity test compares the network with a re-statement of UniMatch V2's forward pass written here from its
description (plain tensor ops on one state dict in the release's key names: `backbone.*` as Meta's DINOv2 files,
`head.*` as UniMatch-V2's `model/semseg/dpt.py`), not with the release's code.

The key lists under tests/fixtures/dinov2_vit{s,b,l,g}14_keys.txt are generated from this project's modules with
`python tests/test_dinov2.py` (module keys renamed to Meta's with the `dinov2` / `dinov2_swiglu` key formats); they
are not read from Meta's files.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

pytest.importorskip("timm")  # the `dinov2` extra (in `dev`)

from sslseg.errors import UserError  # noqa: E402
from sslseg.models import build_segmentor  # noqa: E402
from sslseg.models.dinov2 import DINOv2ViT, swiglu_hidden  # noqa: E402
from sslseg.models.perturbations import ComplementaryChannelDropout, FeatureDropout  # noqa: E402
from sslseg.models.pretrained import _file_key, load_state  # noqa: E402
from tests.conftest import read_key_list  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = Path(__file__).parent / "fixtures"
SIZES = {"small": "s", "base": "b", "large": "l", "giant": "g"}


def _cfgs(backbone: str, model: str = "dpt", **backbone_overrides):
    b = OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")
    b.pretrained = None
    b.merge_with(backbone_overrides)
    m = OmegaConf.load(CONF / "model" / "dpt.yaml")
    if model != "dpt":
        m.merge_with(OmegaConf.load(CONF / "model" / f"{model}.yaml"))
        m.pop("defaults")
    return b, m


def _meta_keys(backbone: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {_file_key(k, backbone.weights_format): tuple(v.shape) for k, v in backbone.state_dict().items()}


def _meta_device_segmentor(size: str, num_classes: int = 21):
    b, m = _cfgs(f"dinov2_{size}")
    with torch.device("meta"):  # shapes only: ViT-G has 1.1B parameters
        return build_segmentor(b, m, num_classes)


# -- Meta's key format ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_meta_key_format_loads_strictly_for_every_size(size):
    backbone = _meta_device_segmentor(size).backbone
    fixture = read_key_list(FIXTURES / f"dinov2_vit{SIZES[size]}14_keys.txt")
    assert _meta_keys(backbone) == fixture
    state = {k: torch.empty(shape, device="meta") for k, shape in fixture.items()}
    load_state(backbone, state, f"dinov2_vit{SIZES[size]}14_pretrain.pth", backbone.weights_format)  # no error
    if size == "giant":
        assert "blocks.39.mlp.w12.weight" in fixture and fixture["blocks.39.mlp.w3.weight"] == (1536, 4096)
    broken = dict(state)
    bad = "blocks.39.mlp.w3.weight" if size == "giant" else "blocks.10.mlp.fc2.weight"
    del broken[bad]
    with pytest.raises(UserError, match=rf"missing keys for backbone: {bad}"):
        load_state(backbone, broken, "x.pth", backbone.weights_format)
    with pytest.raises(UserError, match=r"unexpected keys for backbone: register_tokens"):
        load_state(backbone, state | {"register_tokens": torch.empty(1, 4, 1, device="meta")}, "x.pth",
                   backbone.weights_format)


@pytest.mark.parametrize("size,total,encoder,decoder", [("small", 24.8, 22.1, 2.7), ("base", 97.5, 86.6, 10.9)])
def test_parameter_counts_match_unimatch_v2_logs(size, total, encoder, decoder):
    """UniMatch-V2 training-logs/table01-pascal_unimatch_v2_92labels_dinov2_{small,base}.log: "Total params",
    "Encoder params", "Decoder params" (21 classes); the release also counts the deepest fusion block's skip unit,
    which never runs and is not built here (sslseg/models/dpt.py)."""
    net = _meta_device_segmentor(size)
    features = net.decoder.feature_channels
    unused_unit = 2 * (features * features * 9 + features)
    enc = sum(p.numel() for p in net.backbone.parameters()) / 1e6
    dec = (sum(p.numel() for p in net.decoder.parameters()) + unused_unit) / 1e6
    assert (round(enc, 1), round(dec, 1), round(enc + dec, 1)) == (encoder, decoder, total)


# -- parity with UniMatch V2's forward pass, re-stated -------------------------------------------------------------
TINY = dict(embed_dim=32, depth=4, num_heads=2, layers=(0, 1, 2, 3), features=16, projections=(8, 16, 32, 32))


def _reference_vit(sd: dict, x: torch.Tensor, heads: int, layers, ffn: str) -> tuple[list[torch.Tensor], int, int]:
    """DINOv2's get_intermediate_layers(x, layers) with norm: the patch tokens of each listed block, normed."""
    batch, _, height, width = x.shape
    h0, w0 = height // 14, width // 14
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(batch, -1, -1), t], dim=1)
    dim = t.shape[-1]
    pos = sd["pos_embed"]
    n = pos.shape[1] - 1
    if not (t.shape[1] - 1 == n and height == width):  # DINOv2 keeps the embedding as is only at 518 x 518
        m = int(math.sqrt(n))
        grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic", antialias=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    t = t + pos
    ln = lambda y, p: F.layer_norm(y, (dim,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)
    lin = lambda y, p: F.linear(y, sd[p + ".weight"], sd[p + ".bias"])
    outputs = []
    for i in range(max(layers) + 1):
        p = f"blocks.{i}."
        qkv = lin(ln(t, p + "norm1"), p + "attn.qkv").reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1) @ v
        t = t + sd[p + "ls1.gamma"] * lin(attn.transpose(1, 2).reshape(batch, -1, dim), p + "attn.proj")
        y = ln(t, p + "norm2")
        if ffn == "mlp":
            y = lin(F.gelu(lin(y, p + "mlp.fc1")), p + "mlp.fc2")
        else:  # SwiGLU: silu(first half) x second half of the packed projection
            y1, y2 = lin(y, p + "mlp.w12").chunk(2, dim=-1)
            y = lin(F.silu(y1) * y2, p + "mlp.w3")
        t = t + sd[p + "ls2.gamma"] * y
        if i in layers:
            outputs.append(t)
    return [ln(o, "norm")[:, 1:] for o in outputs], h0, w0


def _reference_dpt(sd: dict, tokens: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """UniMatch V2's DPTHead + the final upsampling, on the release's key names."""
    conv = lambda y, p, **kw: F.conv2d(y, sd[p + ".weight"], sd.get(p + ".bias"), **kw)

    def unit(y, p):
        return conv(F.relu(conv(F.relu(y), p + ".conv1", padding=1)), p + ".conv2", padding=1) + y

    def fusion(p, *xs, size=None):
        out = xs[0]
        if len(xs) == 2:
            out = out + unit(xs[1], p + ".resConfUnit1")
        out = unit(out, p + ".resConfUnit2")
        resize = {"scale_factor": 2} if size is None else {"size": size}
        return conv(F.interpolate(out, **resize, mode="bilinear", align_corners=True), p + ".out_conv")

    layers = []
    for i, t in enumerate(tokens):
        y = conv(t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], h, w), f"head.projects.{i}")
        r = f"head.resize_layers.{i}"
        if i in (0, 1):
            y = F.conv_transpose2d(y, sd[r + ".weight"], sd[r + ".bias"], stride=4 if i == 0 else 2)
        elif i == 3:
            y = conv(y, r, stride=2, padding=1)
        layers.append(conv(y, f"head.scratch.layer{i + 1}_rn", padding=1))
    s = "head.scratch."
    path = fusion(s + "refinenet4", layers[3], size=layers[2].shape[2:])
    path = fusion(s + "refinenet3", path, layers[2], size=layers[1].shape[2:])
    path = fusion(s + "refinenet2", path, layers[1], size=layers[0].shape[2:])
    path = fusion(s + "refinenet1", path, layers[0])
    out = conv(F.relu(conv(path, s + "output_conv.0", padding=1)), s + "output_conv.2")
    return F.interpolate(out, (h * 14, w * 14), mode="bilinear", align_corners=True)


def _release_head_key(key: str) -> str:
    """This project's DPT key -> the release's (`model/semseg/dpt.py`, `model/util/blocks.py`)."""
    part, i, rest = key.split(".", 2)
    i = int(i)
    if part == "project":
        return f"head.projects.{i}.{rest}"
    if part == "resample":
        return f"head.resize_layers.{i}.{rest}"
    if part == "reduce":
        return f"head.scratch.layer{i + 1}_rn.{rest}"
    if part == "fusion":
        if rest.startswith(("skip_unit.", "unit.")):
            unit, rest = rest.split(".", 1)
            rest = f"resConfUnit{1 if unit == 'skip_unit' else 2}.{rest}"
        return f"head.scratch.refinenet{i + 1}.{rest}"
    if part == "head":
        return f"head.scratch.output_conv.{i}.{rest}"
    raise KeyError(key)


def _tiny_network(ffn: str):
    b = OmegaConf.create(dict(name="vit_tiny", embed_dim=TINY["embed_dim"],  # the registered ViT, resized
                              depth=TINY["depth"], num_heads=TINY["num_heads"], ffn=ffn, patch_size=14, img_size=518,
                              layers=list(TINY["layers"]), pretrained=None))
    m = OmegaConf.create(dict(_target_="sslseg.models.dpt.DPT", features=TINY["features"],
                              projections=list(TINY["projections"])))
    return build_segmentor(b, m, num_classes=5)


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_logits_equal_unimatch_v2_forward_on_one_state_dict(ffn):
    torch.manual_seed(0)
    net = _tiny_network(ffn).eval()
    gen = torch.Generator().manual_seed(1)

    def rand(shape, name=""):  # O(1) activations throughout: weights ~ 1/sqrt(fan-in), embeddings ~ 1
        fan_in = math.prod(shape[1:])
        std = 1.0 if name in ("pos_embed", "cls_token") or len(shape) == 1 else fan_in ** -0.5
        return std * torch.randn(shape, generator=gen)

    meta = {k: rand(shape, k) for k, shape in _meta_keys(net.backbone).items()}  # Meta's file, random values
    head = {_release_head_key(k): rand(v.shape) for k, v in net.decoder.state_dict().items()
            if not k.startswith("classifier.")}
    head |= {"head.scratch.output_conv.2.weight": rand((5, 16, 1, 1)), "head.scratch.output_conv.2.bias": rand((5,))}
    load_state(net.backbone, meta, "dinov2_tiny_pretrain.pth", net.backbone.weights_format)
    ours = {k: v for k, v in net.decoder.state_dict().items()}
    for k in ours:
        ours[k] = head["head.scratch.output_conv.2." + k.split(".", 1)[1]] if k.startswith("classifier.") \
            else head[_release_head_key(k)]
    net.decoder.load_state_dict(ours)
    release = {f"backbone.{k}": v for k, v in meta.items()} | head
    backbone_sd = {k.removeprefix("backbone."): v for k, v in release.items() if k.startswith("backbone.")}
    for height, width in [(70, 98), (518, 518), (42, 42)]:
        x = torch.randn(2 if height < 100 else 1, 3, height, width, generator=gen)
        with torch.no_grad():
            tokens, h, w = _reference_vit(backbone_sd, x, TINY["num_heads"], TINY["layers"], ffn)
            expected = _reference_dpt(release, tokens, h, w)
            got = net(x).logits
        assert got.shape == expected.shape == (x.shape[0], 5, height, width)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_position_embedding_offset_changes_the_values():
    """The (h + 0.1)/37 scale factor is not the size-based resize (timm's, or DINOv2's without the offset)."""
    torch.manual_seed(0)
    vit = DINOv2ViT(embed_dim=8, depth=4, num_heads=2, layers=(0, 1, 2, 3))
    grid = vit.pos_embed[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ours = vit.position_embedding(5, 7)[:, 1:]
    by_size = F.interpolate(grid, size=(5, 7), mode="bicubic", antialias=False).flatten(2).transpose(1, 2)
    assert ours.shape == by_size.shape and not torch.allclose(ours, by_size, atol=1e-4)
    torch.testing.assert_close(vit.position_embedding(37, 37), vit.pos_embed)  # 518 x 518: unchanged
    from timm.layers import resample_abs_pos_embed
    timm_pos = resample_abs_pos_embed(vit.pos_embed, (5, 7), num_prefix_tokens=1)[:, 1:]
    assert not torch.allclose(ours, timm_pos, atol=1e-4)


# -- complementary channel dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [2, 4, 8, 16])
def test_complementary_dropout_masks(batch):
    torch.manual_seed(batch)
    masks = ComplementaryChannelDropout().masks(batch, 64)
    first, second = masks.chunk(2)
    assert set(masks.unique().tolist()) <= {0.0, 1.0, 2.0}
    torch.testing.assert_close(first + second, torch.full_like(first, 2.0))  # complementary pairs, scale 2
    kept = (first == 1).all(dim=1)
    assert ((first == 1).any(dim=1) == kept).all()  # a pair is kept whole or dropped whole
    assert int(kept.sum()) == int(batch // 2 * 0.5)  # none at a batch of 2
    dropped = first[~kept]
    assert ((dropped == 0) | (dropped == 2)).all()


def test_complementary_dropout_shares_one_mask_across_features_and_positions():
    torch.manual_seed(0)
    feats = [torch.ones(8, 16, 3, 5) * (k + 1) for k in range(4)]
    out = ComplementaryChannelDropout()(feats)
    mask = out[0][:, :, :1, :1]
    assert (out[0] == mask).all()  # the same over all positions
    for k, o in enumerate(out):
        torch.testing.assert_close(o, mask.expand_as(o) * (k + 1))  # the same for all four features
    with pytest.raises(ValueError, match="even"):
        ComplementaryChannelDropout()([torch.ones(3, 4, 2, 2)])


def test_binomial_half_rate():
    torch.manual_seed(0)
    first, _ = ComplementaryChannelDropout(kept_fraction=0.0).masks(2000, 100).chunk(2)
    assert abs((first == 2).float().mean().item() - 0.5) < 0.01


# -- the segmentor pair, options -----------------------------------------------------------------------------------
def _toy_pair():
    return build_segmentor(*_cfgs("vit_tiny", "dpt_tiny"), num_classes=6)


def test_vit_tiny_dpt_segmentor_and_feature_perturbation():
    torch.manual_seed(0)
    net = _toy_pair().eval()
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out.logits.shape == (2, 6, 64, 96) and out.features.shape[1] == 32
    fp = net(x, perturbed_copies=[FeatureDropout(0.5)])
    torch.testing.assert_close(fp.logits, out.logits)  # no BN: the clean part is unchanged
    assert len(fp.logits_fp) == 1 and not torch.allclose(fp.logits_fp[0], out.logits)
    comp = net(torch.cat([x, x]), batch_perturbation=ComplementaryChannelDropout())
    assert comp.logits.shape == (4, 6, 64, 96) and not torch.allclose(comp.logits[:2], comp.logits[2:])
    with pytest.raises(UserError, match="multiples of its patch size 8, got 60x96"):
        net(torch.randn(1, 3, 60, 96))


def test_frozen_encoder_trains_only_the_head_and_unused_parameters_get_no_gradient():
    b, m = _cfgs("vit_tiny", "dpt_tiny", frozen=True)
    net = build_segmentor(b, m, num_classes=6)
    backbone, head = net.param_groups()
    assert backbone == [] and len(head) == len(list(net.decoder.parameters()))
    net = _toy_pair()
    net(torch.randn(2, 3, 32, 32)).logits.sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # DDP needs no find_unused_parameters
    assert not net.backbone.mask_token.requires_grad


def test_checkpointing_same_outputs_and_gradients():
    torch.manual_seed(0)
    net = _toy_pair().train()
    x = torch.randn(2, 3, 32, 32)
    net(x).logits.square().mean().backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    net.backbone.checkpointing = True
    net(x).logits.square().mean().backward()
    for n, p in net.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6)


def test_fused_attention_and_bf16_autocast():
    net = _toy_pair().eval()
    assert all(block.attn.fused_attn for block in net.backbone.blocks)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.logits.float()).all()


def test_meta_format_file_loads_through_build_segmentor(tmp_path):
    torch.manual_seed(0)
    net = _toy_pair()
    meta = {k: torch.randn(shape) for k, shape in _meta_keys(net.backbone).items()}
    torch.save(meta, tmp_path / "vit_tiny.pth")
    b, m = _cfgs("vit_tiny", "dpt_tiny", ffn="mlp")
    b.pretrained = str(tmp_path / "vit_tiny.pth")
    loaded = build_segmentor(b, m, num_classes=6).backbone.state_dict()
    torch.testing.assert_close(loaded["blocks.3.ls2.gamma"], meta["blocks.3.ls2.gamma"])
    torch.save({k: v for k, v in meta.items() if k != "norm.bias"}, tmp_path / "bad.pth")
    b.pretrained = str(tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"missing keys for backbone: norm\.bias \(dinov2 key format\)"):
        build_segmentor(b, m, num_classes=6)


def test_timm_weights_by_name_without_downloading(monkeypatch):
    """`pretrained: timm:<name>` asks timm for its published weights (here a stand-in: tests never download)."""
    import timm

    source = _toy_pair().backbone
    timm_state = {k: torch.randn(v.shape) for k, v in source.state_dict().items() if k != "mask_token"}
    calls = []

    class Published(torch.nn.Module):
        def state_dict(self):
            return dict(timm_state)

    monkeypatch.setattr(timm, "create_model", lambda name, **kw: calls.append((name, kw)) or Published())
    b, m = _cfgs("vit_tiny", "dpt_tiny")
    b.pretrained = "timm:vit_small_patch14_dinov2.lvd142m"
    net = build_segmentor(b, m, num_classes=6)
    assert calls == [("vit_small_patch14_dinov2.lvd142m", {"pretrained": True, "num_classes": 0})]
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(net.backbone.state_dict()[key], timm_state[key])


@pytest.mark.parametrize("size", SIZES)
def test_timm_dinov2_models_have_our_keys_but_the_mask_token(size):
    """What `pretrained: timm:vit_<size>_patch14_dinov2.lvd142m` loads: timm's model of that name (built here
    without weights, on the meta device) holds this backbone's keys and shapes, less `mask_token`."""
    import timm

    with torch.device("meta"):
        published = timm.create_model(f"vit_{size}_patch14_dinov2", pretrained=False, num_classes=0)
    ours = {k: tuple(v.shape) for k, v in _meta_device_segmentor(size).backbone.state_dict().items()}
    del ours["mask_token"]
    assert {k: tuple(v.shape) for k, v in published.state_dict().items()} == ours


@pytest.mark.parametrize("method", ["daw", "unimatch"])
def test_methods_train_the_vit_dpt_pair_with_their_feature_perturbation(method):
    """`method=daw backbone=vit_tiny model=dpt_tiny`: one training step, UniMatch's FP stream on the four ViT
    features (a FeatureDropout copy, `method.feature_dropout`); every trainable parameter gets a gradient (DDP
    without find_unused_parameters)."""
    from sslseg.methods import method_class
    from sslseg.perf.bench import synthetic_batch
    from tests.conftest import compose_cfg

    torch.manual_seed(0)
    cfg = compose_cfg([f"method={method}", "dataset=toy", "backbone=vit_tiny", "model=dpt_tiny"])
    module = method_class(cfg)(cfg)
    batch = synthetic_batch(module.data_streams(cfg.method), 2, 32, 6, torch.device("cpu"))
    module.train()
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["supervised", "fixmatch", "unimatch", "daw", "dssn", "dars", "pct"])
def test_every_method_but_ddfp_trains_on_the_vit_dpt_pair(method, data_dir):
    """Two real training steps (the first stage of DARS and PCT) on `backbone=vit_tiny model=dpt_tiny`: finite
    losses, and a gradient on every trainable parameter of the student."""
    from tests.fingerprint_steps import Losses, fit_steps

    losses = Losses()
    module, _ = fit_steps(method, data_dir, 2, overrides=("backbone=vit_tiny", "model=dpt_tiny"), callbacks=(losses,))
    assert len(losses.losses) == 2 and all(math.isfinite(v) for v in losses.losses)
    assert module.model.backbone.patch_size == 8 and type(module.model.decoder).__name__ == "DPT"


def test_ddfp_on_a_vit_is_one_line():
    """DDFP perturbs the features inside U2PL's DeepLabV3+ (its `method.network.decoder`), which reads a CNN's
    stride-4 and stride-16 maps: no DPT, no ViT."""
    from sslseg.methods import method_class
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["method=ddfp", "backbone=dinov2_small", "model=dpt", "backbone.pretrained=null"])
    with pytest.raises(UserError) as caught:
        method_class(cfg)(cfg)
    assert str(caught.value) == (
        "method.network.decoder=u2pl_deeplabv3plus: this method trains its own decoder, a DeepLabV3+ that reads a "
        "CNN's stride-4 and stride-16 features; backbone=dinov2_small is a ViT (patch 14): use a CNN backbone "
        "(backbone=resnet101)")


def test_daw_runs_on_dinov2_small_on_the_toy_set(data_dir):
    """`python train.py method=daw backbone=dinov2_small model=dpt dataset=toy backbone.pretrained=null`, in this
    process: the toy's 64 crop becomes 70 for 14-pixel patches (28 here, a smaller multiple, for the CPU), a few
    steps train, and a 96 x 96 validation image is evaluated at 98 x 98 (dataset.eval.multiplier: auto)."""
    from sslseg.run.cli import compose_config
    from tests.fingerprint_steps import Losses, fit_steps

    assert compose_config(["method=daw", "backbone=dinov2_small", "model=dpt"]).dataset.crop_size == 70
    losses = Losses()
    module, _ = fit_steps("daw", data_dir, 2, callbacks=(losses,), overrides=(
        "backbone=dinov2_small", "model=dpt", "backbone.pretrained=null", "dataset.crop_size=28",
        "data.batch_size=2"))
    assert all(math.isfinite(v) for v in losses.losses)
    seen = []
    module.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        scores = module.eval().predict_scores(torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8))
    assert scores.shape == (1, 6, 96, 96) and seen == [(98, 98)]


def test_swiglu_width_is_dinov2s():
    assert swiglu_hidden(1536) == 4096


def _write_fixtures() -> None:
    """Regenerate tests/fixtures/dinov2_vit{s,b,l,g}14_keys.txt from the modules (Meta's names, shapes)."""
    for size, letter in SIZES.items():
        keys = _meta_keys(_meta_device_segmentor(size).backbone)
        lines = [f"{k} {tuple(shape)}" for k, shape in keys.items()]
        (FIXTURES / f"dinov2_vit{letter}14_keys.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(_write_fixtures())
