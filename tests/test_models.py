
import pytest
import torch
from omegaconf import OmegaConf

from sslseg.errors import UserError
from sslseg.models import build_segmentor
from sslseg.models.perturbations import FeatureDropout
from sslseg.models.resnet import DeepStemResNet
from tests.conftest import ROOT, read_key_list

CONF = ROOT / "conf"


def _model_cfg(name: str):
    """conf/model/<name>.yaml over the config its defaults list names (the *_tiny ones)."""
    m = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    if "defaults" not in m:
        return m
    base = _model_cfg(m.defaults[0])
    m.pop("defaults")
    return OmegaConf.merge(base, m)


def _cfgs(backbone: str, model: str = "deeplabv3plus", **backbone_overrides):
    b = OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")
    b.pretrained = None
    b.merge_with(backbone_overrides)
    return b, _model_cfg(model)


@pytest.mark.parametrize("depth,layers", [(50, [3, 4, 6, 3]), (101, [3, 4, 23, 3])])
def test_state_dict_matches_the_seed_methods_weight_file(depth, layers):
    key_file = ROOT / "tests" / "fixtures" / f"seed_resnet{depth}_keys.txt"
    model = DeepStemResNet(layers=layers)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_key_list(key_file)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_feature_strides(output_stride):
    model = DeepStemResNet(layers=[1, 1, 1, 1], stem_width=8, base_width=8, output_stride=output_stride)
    c1, c2, c3, c4 = model(torch.randn(1, 3, 64, 64))
    assert c1.shape[-1] == 16 and c4.shape[-1] == 64 // output_stride
    assert [c.shape[1] for c in (c1, c2, c3, c4)] == [32, 64, 128, 256]


def test_resnet101_deeplab_has_reference_parameter_count():
    b, m = _cfgs("resnet101")
    net = build_segmentor(b, m, num_classes=21)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 59.5  # UniMatch logs: 59.5M


def test_segmentor_outputs_and_feature_perturbation():
    torch.manual_seed(0)
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(2, 3, 48, 48)
    out = net(x)
    assert out.logits.shape == (2, 6, 48, 48) and out.features.shape == (2, 64, 12, 12) and out.logits_fp == ()
    fp = net(x, perturbed_copies=[FeatureDropout(0.5)])
    torch.testing.assert_close(fp.logits, out.logits)  # eval-mode BN: the clean part is unchanged
    assert len(fp.logits_fp) == 1 and fp.logits_fp[0].shape == out.logits.shape
    assert not torch.allclose(fp.logits_fp[0], fp.logits)  # dropout stays active in eval mode


def test_each_perturbed_copy_has_its_own_dropout_masks():
    torch.manual_seed(0)
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(2, 3, 48, 48)
    calls = []
    net.decoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    out = net(x, perturbed_copies=[FeatureDropout(0.5)] * 2)
    assert calls == [6]  # clean + 2 perturbed copies of the batch of 2, in one decoder call
    torch.testing.assert_close(out.logits, net(x).logits)
    fp1, fp2 = out.logits_fp
    assert fp1.shape == fp2.shape == out.logits.shape and not torch.allclose(fp1, fp2)


@pytest.mark.parametrize("model", ["deeplabv3plus_tiny", "pspnet_tiny", "u2pl_deeplabv3plus_tiny"])
def test_decode_of_encode_is_the_forward_pass(model):
    """The public halves compose to forward, bit for bit, in training mode too (PSPNet's aux logits included; the same
    seed before each call for the decoders' own dropout)."""
    net = build_segmentor(*_cfgs("tiny", model), num_classes=6).train()
    x = torch.randn(2, 3, 48, 40)
    torch.manual_seed(1)
    whole = net(x)
    torch.manual_seed(1)
    halves = net.decode(net.encode(x), x.shape[-2:])
    assert halves.logits.shape == (2, 6, 48, 40) and halves.logits_fp == ()
    for got, expected in zip(halves, whole):
        if isinstance(got, torch.Tensor):
            assert torch.equal(got, expected)
    assert (whole.aux is None) == (model != "pspnet_tiny")


def test_perturbed_copies_are_one_decoder_batch_drawn_feature_by_feature_copy_by_copy():
    """[clean | copy 1 | copy 2] in one decode; copy k's masks drawn after copy k-1's, c1's before c4's within one."""
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    out = net(x, perturbed_copies=[FeatureDropout(0.5), FeatureDropout(0.25)])
    torch.manual_seed(3)
    c1, c4 = net.encode(x)
    copies = [[torch.nn.functional.dropout2d(f, p, training=True) for f in (c1, c4)] for p in (0.5, 0.25)]
    batch = [torch.cat([f, copies[0][k], copies[1][k]]) for k, f in enumerate((c1, c4))]
    expected = net.decode(batch, x.shape[-2:])
    clean, fp1, fp2 = expected.logits.chunk(3)
    assert torch.equal(out.logits, clean) and torch.equal(out.features, expected.features[:2])
    assert torch.equal(out.logits_fp[0], fp1) and torch.equal(out.logits_fp[1], fp2)


def test_the_batch_perturbation_acts_before_the_copies_are_made():
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = []
    halve = lambda features: [f / 2 for f in features]
    record = lambda features: seen.append([f.clone() for f in features]) or list(features)
    out = net(x, perturbed_copies=[record], batch_perturbation=halve)
    assert all(torch.equal(s, f / 2) for s, f in zip(seen[0], net.encode(x)))
    halved = halve(net.encode(x))  # decoded beside its (unchanged) copy, as the forward pass decodes it
    expected = net.decode([torch.cat([f, f]) for f in halved], x.shape[-2:]).logits.chunk(2)[0]
    assert torch.equal(out.logits, expected)
    torch.testing.assert_close(out.logits_fp[0], out.logits)


def test_a_model_config_saved_with_the_retired_fp_dropout_still_builds():
    """Checkpoints written before the rate moved to `method.feature_dropout` hold `model.fp_dropout`."""
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    m.fp_dropout = 0.5
    assert build_segmentor(b, m, num_classes=6).eval()(torch.randn(1, 3, 32, 32)).logits.shape == (1, 6, 32, 32)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_feature_dropout_keeps_a_channel_whole_or_zeroes_it(p):
    torch.manual_seed(0)
    features = [torch.rand(8, 32, 5, 7) + 1, torch.rand(8, 16, 3, 3) + 1]
    dropout = FeatureDropout(p).eval()  # eval mode: still active
    out = dropout(features)
    assert len(out) == 2
    for f, o in zip(features, out):
        zeroed = (o == 0).flatten(2).all(-1)
        kept = torch.isclose(o, f / (1 - p)).flatten(2).all(-1)
        assert torch.all(zeroed ^ kept)  # per (sample, channel): all zero, or all the input scaled by 1/(1-p)
        assert 0 < zeroed.float().mean() < 1
    assert not torch.equal((out[0] == 0).flatten(2).all(-1)[:, :16], (out[1] == 0).flatten(2).all(-1))  # own masks
    assert all(torch.equal(o, f) for o, f in zip(FeatureDropout(0.0)(features), features))
    with pytest.raises(ValueError, match="feature dropout rate must be in"):
        FeatureDropout(1.5)


def test_decoder_parts_compose_to_the_forward_pass():
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(1, 3, 32, 32)
    c1, c4 = net.encode(x)
    fused = net.decoder.fused_features(c1, c4)
    assert tuple(fused.shape) == (1, 16 + 64, 8, 8)  # low-level 16 + ASPP 512/8, at stride 4
    logits, features = net.decoder.classify(fused)
    out = net(x)
    torch.testing.assert_close(out.logits, torch.nn.functional.interpolate(
        logits, size=(32, 32), mode="bilinear", align_corners=True))
    torch.testing.assert_close(out.features, features)
    assert out.aux is None
    # An all-zero fused feature: every pixel gets the same logits.
    flat, _ = net.decoder.classify(torch.zeros_like(fused))
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat), atol=1e-5)


def _key_file_state(depth: int) -> dict[str, torch.Tensor]:
    key_file = ROOT / "tests" / "fixtures" / f"seed_resnet{depth}_keys.txt"
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0)
             for k, shape in read_key_list(key_file).items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def test_seed_method_pth_loads_strictly(tmp_path):
    state = _key_file_state(101)
    torch.save(state, tmp_path / "resnet101.pth")
    b, m = _cfgs("resnet101")
    b.pretrained = str(tmp_path / "resnet101.pth")
    net = build_segmentor(b, m, num_classes=21)
    loaded = net.backbone.state_dict()
    for key in ("conv1.0.weight", "layer3.22.bn3.running_var", "layer4.2.conv3.weight"):
        torch.testing.assert_close(loaded[key], state[key])


def test_missing_key_is_named(tmp_path):
    state = _key_file_state(101)
    del state["layer3.7.conv2.weight"]
    torch.save(state, tmp_path / "r101.pth")
    b, m = _cfgs("resnet101")
    b.pretrained = str(tmp_path / "r101.pth")
    with pytest.raises(UserError, match=r"missing keys for backbone: layer3\.7\.conv2\.weight"):
        build_segmentor(b, m, num_classes=21)


def test_unexpected_and_misshaped_keys_are_named(tmp_path):
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    state = DeepStemResNet(layers=[1, 1, 1, 1], stem_width=16, base_width=16).state_dict()
    torch.save(state | {"head.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    b.pretrained = str(tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"unexpected keys for backbone: head\.weight"):
        build_segmentor(b, m, num_classes=6)
    state["conv1.0.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    b.pretrained = str(tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"shape mismatch for conv1\.0\.weight"):
        build_segmentor(b, m, num_classes=6)


def test_missing_pretrained_file_says_how_to_fix(tmp_path):
    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    b.pretrained = str(tmp_path / "nope.pth")
    with pytest.raises(UserError, match=r"pretrained weights not found: .*nope.pth \(set backbone.pretrained"):
        build_segmentor(b, m, num_classes=6)


# Learning-Pseudo-Label's DeepLabV3+ options (lib/net/operators/ASPP.py; conf/model/deeplabv3plus_lpl.yaml).

def _lpl_tiny():
    """The tiny backbone with the LPL decoder, as a method picks it (method.network): the toy set's
    decoder sizes, LPL's options, output stride 8."""
    from sslseg.models.segmentor import method_network

    b, m = _cfgs("tiny", "deeplabv3plus_tiny")
    network = OmegaConf.create({"decoder": "deeplabv3plus_lpl", "backbone": {"output_stride": 8}})
    return method_network(b, m, network)


def _conv_keys(prefix: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": shape}


def _bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def _decoder_keys(reduce_kernel: int) -> dict[str, tuple[int, ...]]:
    """UniMatch's decoder on (c1, c4) = (8, 64) channels, ASPP 16, low-level 4, decoder 6, 3 classes."""
    keys = _conv_keys("aspp.branches.0.0", (16, 64, 1, 1)) | _bn_keys("aspp.branches.0.1", 16)
    for i in (1, 2, 3):
        keys |= _conv_keys(f"aspp.branches.{i}.0", (16, 64, 3, 3)) | _bn_keys(f"aspp.branches.{i}.1", 16)
    keys |= _conv_keys("aspp.branches.4.conv.0", (16, 64, 1, 1)) | _bn_keys("aspp.branches.4.conv.1", 16)
    keys |= _conv_keys("aspp.project.0", (16, 80, 1, 1)) | _bn_keys("aspp.project.1", 16)
    keys |= _conv_keys("reduce.0", (4, 8, reduce_kernel, reduce_kernel)) | _bn_keys("reduce.1", 4)
    keys |= _conv_keys("fuse.0.0", (6, 20, 3, 3)) | _bn_keys("fuse.0.1", 6)
    keys |= _conv_keys("fuse.1.0", (6, 6, 3, 3)) | _bn_keys("fuse.1.1", 6)
    return keys | {"classifier.weight": (3, 6, 1, 1), "classifier.bias": (3,)}


def test_deeplabv3plus_defaults_keep_unimatch_network_and_keys():
    from sslseg.models.deeplabv3plus import DeepLabV3Plus

    sizes = dict(in_channels=(8, 16, 32, 64), num_classes=3, aspp_channels=16, low_level_channels=4,
                 decoder_channels=6)
    net = DeepLabV3Plus(**sizes)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _decoder_keys(1)
    assert not any(isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d) for m in net.modules())
    assert len(net.aspp.project) == 3 and net.reduce[0].padding == (0, 0)
    lpl = DeepLabV3Plus(**sizes, aspp_dropout=0.5, low_level_kernel=3)
    assert {k: tuple(v.shape) for k, v in lpl.state_dict().items()} == _decoder_keys(3)  # same keys
    # Train mode without dropout: two passes over the same input agree.
    c1, c4 = torch.randn(2, 8, 8, 8), torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(net(c1, c4).logits, net(c1, c4).logits)


def test_lpl_aspp_dropout_is_elementwise_and_only_in_train_mode():
    torch.manual_seed(0)
    b, m = _lpl_tiny()
    aspp = build_segmentor(b, m, num_classes=6).decoder.aspp
    dropout = aspp.project[3]
    assert type(dropout) is torch.nn.Dropout and dropout.p == 0.5
    x = torch.randn(2, 512, 6, 6)
    aspp.eval()
    clean = aspp(x)
    torch.testing.assert_close(aspp(x), clean)  # eval: no dropout
    dropout.train()  # BN stays in eval mode, so only the dropout differs
    dropped = aspp(x)
    kept = dropped != 0
    positive = clean > 0
    # Kept elements are scaled by 1 / (1 - 0.5); the others are zeroed.
    torch.testing.assert_close(dropped[kept], 2 * clean[kept])
    # Element-wise, not per channel (Dropout2d): channels with both kept and dropped positive elements.
    mixed = ((kept & positive).flatten(2).any(-1) & (~kept & positive).flatten(2).any(-1)).float().mean()
    assert mixed > 0.9
    assert 0.4 < (kept & positive).sum() / positive.sum() < 0.6


def test_lpl_low_level_reduction_is_3x3():
    b, m = _lpl_tiny()
    net = build_segmentor(b, m, num_classes=6)
    conv = net.decoder.reduce[0]
    assert tuple(conv.weight.shape) == (16, 64, 3, 3) and conv.padding == (1, 1)
    # One active input pixel reaches its 3x3 neighbourhood (a 1x1 conv would reach that pixel only).
    with torch.no_grad():
        conv.weight.fill_(1.0)
        x = torch.zeros(1, 64, 8, 8)
        x[0, :, 4, 4] = 1.0
        reached = conv(x)[0, 0] != 0
    assert reached.nonzero().tolist() == [[r, c] for r in (3, 4, 5) for c in (3, 4, 5)]


def test_lpl_segmentor_shapes_at_output_stride_8():
    b, m = _lpl_tiny()
    assert (m.name, m.aspp_dilations, m.low_level_channels) == ("deeplabv3plus_lpl", [2, 4, 6], 16)  # toy sizes kept
    net = build_segmentor(b, m, num_classes=6).eval()
    x = torch.randn(2, 3, 48, 48)
    c1, c4 = net.encode(x)
    assert tuple(c1.shape) == (2, 64, 12, 12) and tuple(c4.shape) == (2, 512, 6, 6)  # strides 4 and 8
    out = net(x)
    assert tuple(out.logits.shape) == (2, 6, 48, 48) and tuple(out.features.shape) == (2, 64, 12, 12)


def test_output_stride_8_dilations_match_learning_pseudo_label_resnet():
    # The reference's dilated ResNet-S: layer3 at stride 1 with dilation 2 except its first block (1),
    # layer4 with dilation 4 except its first block (2); the strides of layer3 and layer4 removed.
    net = DeepStemResNet(layers=[1, 1, 3, 2], stem_width=8, base_width=8, output_stride=8)
    got = [(blk.conv2.dilation[0], blk.conv2.padding[0], blk.conv2.stride[0]) for blk in [*net.layer3, *net.layer4]]
    assert got == [(1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 1), (4, 4, 1)]
    assert net.layer3[0].downsample[0].stride == (1, 1) and net.layer4[0].downsample[0].stride == (1, 1)
