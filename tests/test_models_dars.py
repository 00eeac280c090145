"""DARS's two networks on the Segmentor: PSPNet-50 (semseg) and DeepLabV2 (AdvSemiSeg's ResNet-101)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sslseg.errors import UserError
from sslseg.models import build_segmentor
from sslseg.models.deeplabv2 import DeepLabV2
from sslseg.models.pretrained import load_backbone_weights
from sslseg.models.pspnet import PyramidPooling
from sslseg.models.resnet import DeepStemResNet
from tests.conftest import compose_cfg

FIXTURES = Path(__file__).parent / "fixtures"
PSP = ("backbone=resnet50_psp", "model=pspnet")
DLV2 = ("backbone=resnet101_deeplabv2", "model=deeplabv2")


def _build(*overrides: str, num_classes: int = 21, pretrained: str | None = None):
    cfg = compose_cfg(list(overrides))
    if pretrained:
        cfg.backbone.pretrained = pretrained
    return build_segmentor(cfg.backbone, cfg.model, num_classes, load_pretrained=pretrained is not None)


@pytest.fixture(scope="module")
def psp50():
    torch.manual_seed(0)
    return _build(*PSP).eval()


@pytest.fixture(scope="module")
def deeplabv2():
    torch.manual_seed(0)
    return _build(*DLV2).eval()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- outputs -----------------------------------------------------------------------------------------

@torch.no_grad()
def test_pspnet50_outputs_at_input_size_and_aux_in_training_only(psp50):
    x = torch.randn(2, 3, 33, 33)  # batch 2: the 1x1 pooled branch's BN needs 2 values in train mode
    out = psp50(x)
    assert out.logits.shape == (2, 21, 33, 33) and out.aux is None
    assert out.features.shape == (2, 512, 5, 5)  # (33 - 1) / 8 + 1 = 5
    # Eval mode: no dropout, so the logits are the 1x1 classifier on `features`, upsampled.
    conv = psp50.decoder.classifier[1]
    torch.testing.assert_close(out.logits, F.interpolate(conv(out.features), size=(33, 33), mode="bilinear",
                                                         align_corners=True))
    try:
        psp50.train()
        out = psp50(x)
    finally:
        psp50.eval()
    assert out.logits.shape == out.aux.shape == (2, 21, 33, 33)


@torch.no_grad()
def test_pspnet_tiny_on_the_toy_backbone():
    torch.manual_seed(0)
    net = _build("model=pspnet_tiny", num_classes=6).train()  # the toy set's tiny deep-stem backbone
    for m in net.modules():  # dropout off, BN still on batch statistics, to compare two forwards
        if isinstance(m, nn.Dropout2d):
            m.eval()
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out.logits.shape == out.aux.shape == (2, 6, 64, 64) and out.features.shape == (2, 64, 8, 8)
    # The aux logits are the aux head on layer3, upsampled to the input.
    aux = net.decoder.aux_head(net.backbone(x)[2])
    torch.testing.assert_close(out.aux, F.interpolate(aux, size=(64, 64), mode="bilinear", align_corners=True))
    assert net.eval()(x).aux is None


def test_pyramid_pooling_by_hand():
    torch.manual_seed(0)
    ppm = PyramidPooling(4, 3, bins=(1, 2, 6)).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        out = ppm(x)
        assert out.shape == (1, 4 + 3 * 3, 6, 6)
        torch.testing.assert_close(out[:, :4], x)  # the input itself comes first
        head = lambda i, v: ppm.stages[i][1](v)  # conv-BN-ReLU of stage i, without its pooling
        # Bin 1: the global mean through conv-BN-ReLU, the same at every pixel.
        torch.testing.assert_close(out[:, 4:7], head(0, x.mean((2, 3), keepdim=True)).expand(1, 3, 6, 6))
        # Bin 2 on a 6x6 map: 3x3 quadrant means; align_corners=True keeps them at the corners.
        torch.testing.assert_close(out[:, 7:10, 0, 0], head(1, x[:, :, :3, :3].mean((2, 3), keepdim=True))[:, :, 0, 0])
        torch.testing.assert_close(out[:, 7:10, 5, 5], head(1, x[:, :, 3:, 3:].mean((2, 3), keepdim=True))[:, :, 0, 0])
        # Bin 6 on a 6x6 map: pooling and upsampling are the identity.
        torch.testing.assert_close(out[:, 10:], head(2, x))


@torch.no_grad()
def test_deeplabv2_outputs_at_input_size_without_aux(deeplabv2):
    x = torch.randn(1, 3, 33, 33)
    out = deeplabv2(x)
    assert out.logits.shape == (1, 21, 33, 33) and out.aux is None
    torch.testing.assert_close(out.features, deeplabv2.backbone(x)[3])  # the layer4 feature it classifies
    assert out.features.shape == (1, 2048, 5, 5)


# -- backbones ---------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("network", ["psp50", "deeplabv2"])
def test_backbones_have_output_stride_8(network, request):
    backbone = request.getfixturevalue(network).backbone
    stages = backbone(torch.randn(1, 3, 33, 33))
    # 33 -> stem 17 -> maxpool 9 (layer1, stride 4) -> layer2 5 (stride 8); layer3 and layer4 keep 5.
    assert [tuple(s.shape[1:]) for s in stages] == [(256, 9, 9), (512, 5, 5), (1024, 5, 5), (2048, 5, 5)]
    assert backbone.channels == (256, 512, 1024, 2048)


def test_maxpool_ceil_mode():
    x = torch.randn(1, 3, 40, 40)
    small = dict(layers=[1, 1, 1, 1], stem_width=8, base_width=8)
    # 40 -> stem 20 -> MaxPool2d(3, 2, 1): floor(19 / 2) + 1 = 10, with ceil_mode ceil(19 / 2) + 1 = 11.
    assert DeepStemResNet(**small)(x)[0].shape[-1] == 10
    assert DeepStemResNet(**small, maxpool_ceil_mode=True)(x)[0].shape[-1] == 11


def _conv2s(backbone: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in backbone.named_modules() if name.endswith(".conv2")}


def test_semseg_dilation_pattern_and_how_it_differs_from_torchvision(psp50):
    convs = _conv2s(psp50.backbone)
    for name, conv in convs.items():
        dilation = {"layer3": 2, "layer4": 4}.get(name.split(".")[0], 1)
        assert conv.dilation == conv.padding == (dilation, dilation), name
    for layer in (psp50.backbone.layer3, psp50.backbone.layer4):
        assert layer[0].downsample[0].stride == (1, 1) and all(b.conv2.stride == (1, 1) for b in layer)
    # torchvision's replace_stride_with_dilation (the default): the first block of a dilated stage keeps
    # the previous stage's dilation. Exactly two 3x3 convs differ.
    torchvision_os8 = DeepStemResNet(layers=[3, 4, 6, 3], output_stride=8)
    theirs = _conv2s(torchvision_os8)
    differ = {name: (theirs[name].dilation[0], conv.dilation[0]) for name, conv in convs.items()
              if theirs[name].dilation != conv.dilation}
    assert differ == {"layer3.0.conv2": (1, 2), "layer4.0.conv2": (2, 4)}
    # Defaults unchanged: floor-mode maxpool, every BN parameter trains.
    assert not torchvision_os8.maxpool.ceil_mode
    assert all(p.requires_grad for p in torchvision_os8.parameters())


def test_deeplabv2_backbone_strides_and_dilations(deeplabv2, psp50):
    strided = lambda b: sorted(n for n, m in b.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1))
    # Caffe-style: layer2's stride sits on the first 1x1 conv; semseg's (torchvision's) on the 3x3.
    assert strided(deeplabv2.backbone) == ["conv1", "layer2.0.conv1", "layer2.0.downsample.0"]
    assert strided(psp50.backbone) == ["conv1.0", "layer2.0.conv2", "layer2.0.downsample.0"]
    assert deeplabv2.backbone.maxpool.ceil_mode and deeplabv2.backbone.conv1.kernel_size == (7, 7)
    for name, conv in _conv2s(deeplabv2.backbone).items():
        dilation = {"layer3": 2, "layer4": 4}.get(name.split(".")[0], 1)
        assert conv.dilation == conv.padding == (dilation, dilation), name


def test_deeplabv2_bn_affine_frozen_running_stats_update():
    torch.manual_seed(0)
    net = _build(*DLV2).train()
    bns = [m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * (3 + 4 + 23 + 3) + 4  # stem, 3 per block, one per downsample
    assert not any(p.requires_grad for bn in bns for p in bn.parameters())
    before = [bn.running_mean.clone() for bn in (net.backbone.bn1, net.backbone.layer4[2].bn3)]
    weight_before = net.backbone.bn1.weight.clone()
    net(torch.randn(2, 3, 33, 33)).logits.square().mean().backward()
    after = [bn.running_mean for bn in (net.backbone.bn1, net.backbone.layer4[2].bn3)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for bn in bns for p in bn.parameters())
    assert net.backbone.conv1.weight.grad is not None and net.backbone.layer4[2].conv3.weight.grad is not None
    torch.testing.assert_close(net.backbone.bn1.weight, weight_before)
    # The optimizer's groups leave the 2 x 52,672 BN affine parameters out (ResNet-101: sum of BN widths
    # 64 + 3 x (64 + 64 + 256) + 256 + 4 x 768 + 512 + 23 x 1536 + 1024 + 3 x 3072 + 2048 = 52,672).
    backbone, head = net.param_groups()
    assert sum(p.numel() for p in backbone) == _n_params(net.backbone) - 2 * 52_672
    assert len(head) == 8  # 4 branches x (weight, bias)


# -- parameter counts --------------------------------------------------------------------------------
# Anchored on torchvision's published counts (fc included): ResNet-50 25,557,032; ResNet-101 44,549,160.
# The same totals came out of instantiating DARS's model/pspnet.py PSPNet(layers=50, classes=21) and
# model/deeplabv2.py Resnet101_deeplab(num_classes=21) (outside the test suite, reference not vendored),
# whose outputs also equal ours bit for bit with the state dict copied over.
FC = 2048 * 1000 + 1000
BN = 2  # affine parameters per channel


def test_pspnet50_parameter_count(psp50):
    # Deep stem: three 3x3 convs (3->64->64->128) and their BNs instead of the 7x7 conv and its BN; layer1.0's
    # conv1 and downsample then read 128 channels instead of 64.
    stem = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + BN * (64 + 64 + 128) - (3 * 64 * 49 + BN * 64)
    backbone = 25_557_032 - FC + stem + 64 * 64 + 64 * 256
    ppm = 4 * (2048 * 512 + BN * 512)
    head = 4096 * 512 * 9 + BN * 512 + 512 * 21 + 21
    aux = 1024 * 256 * 9 + BN * 256 + 256 * 21 + 21
    assert _n_params(psp50.backbone) == backbone == 23_631_808
    assert _n_params(psp50) == backbone + ppm + head + aux == 49_081_578


def test_deeplabv2_parameter_counts(deeplabv2):
    branch = 2048 * 21 * 9 + 21
    assert _n_params(deeplabv2.backbone) == 44_549_160 - FC
    assert _n_params(deeplabv2) == 44_549_160 - FC + 4 * branch == 44_048_532
    released = DeepLabV2(in_channels=deeplabv2.backbone.channels, num_classes=21, branches=2)
    assert _n_params(released) == 2 * branch  # only the two convs the release's forward uses


# -- classifier --------------------------------------------------------------------------------------

def _tap_classifier(branches: int) -> DeepLabV2:
    """1 input channel, 4 classes: branch k puts weight 1 on its top-left tap for class k only, and bias
    10^k on every class, so its output is the input shifted by (dilation, dilation) in class k."""
    clf = DeepLabV2(in_channels=(1, 1, 1, 1), num_classes=4, branches=branches)
    with torch.no_grad():
        for k, conv in enumerate(clf.branches):
            conv.weight.zero_()
            conv.weight[k, 0, 0, 0] = 1.0
            conv.bias.fill_(10.0 ** k)
    return clf


@pytest.mark.parametrize("branches", [4, 2])
def test_deeplabv2_classifier_is_the_sum_of_its_branches(branches):
    x = torch.randn(1, 1, 30, 30)
    with torch.no_grad():
        out = _tap_classifier(branches)(x)
    expected = torch.zeros(1, 4, 30, 30)
    for k, d in enumerate((6, 12, 18, 24)[:branches]):
        # A 3x3 conv with dilation d and padding d reads x[i - d, j - d] at its top-left tap (0 outside).
        expected[0, k, d:, d:] = x[0, 0, :-d, :-d]
    expected += sum(10.0 ** k for k in range(branches))  # every branch adds its bias to every class
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.features, x)


def test_deeplabv2_classifier_init():
    torch.manual_seed(0)
    clf = DeepLabV2(in_channels=(256, 512, 1024, 2048), num_classes=21)
    assert [conv.dilation[0] for conv in clf.branches] == [6, 12, 18, 24]
    weights = torch.cat([conv.weight.flatten() for conv in clf.branches])  # 4 x 387,072 draws of N(0, 0.01)
    assert abs(weights.std().item() - 0.01) < 1e-4 and abs(weights.mean().item()) < 1e-4


# -- pretrained files --------------------------------------------------------------------------------

def _fixture_state(name: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        state[key] = torch.randn(tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), generator=gen)
    return state


def test_fixture_matches_torchvision_resnet101():
    ours = {k: tuple(v.shape) for k, v in _fixture_state("torchvision_resnet101_keys.txt").items()}
    theirs = {k: tuple(v.shape) for k, v in torchvision.models.resnet101().state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert ours == theirs


def test_semseg_resnet50_v2_loads_strictly(tmp_path):
    state = _fixture_state("semseg_resnet50_v2_keys.txt")
    # A file saved by PyTorch >= 0.4.1 also has the BN counters, under the file's names.
    state |= {k.replace("running_var", "num_batches_tracked"): torch.tensor(7)
              for k in state if k.endswith("running_var")}
    torch.save(state, tmp_path / "resnet50_v2.pth")
    net = _build(*PSP, pretrained=str(tmp_path / "resnet50_v2.pth"))
    loaded = net.backbone.state_dict()
    for ours, theirs in [("conv1.0.weight", "conv1.weight"), ("conv1.1.running_var", "bn1.running_var"),
                         ("conv1.3.weight", "conv2.weight"), ("conv1.4.bias", "bn2.bias"),
                         ("conv1.6.weight", "conv3.weight"), ("bn1.weight", "bn3.weight"),
                         ("bn1.num_batches_tracked", "bn3.num_batches_tracked"),
                         ("layer4.2.conv3.weight", "layer4.2.conv3.weight")]:
        torch.testing.assert_close(loaded[ours], state[theirs])

    def fails_with(bad_state, message):
        torch.save(bad_state, tmp_path / "bad.pth")
        with pytest.raises(UserError, match=message):
            load_backbone_weights(net.backbone, tmp_path / "bad.pth")

    # Errors name the keys as the file does.
    fails_with({k: v for k, v in state.items() if k != "bn2.running_var"},
               r"missing keys for backbone: bn2\.running_var \(semseg key format\)")
    fails_with(state | {"conv1.0.weight": state["conv1.weight"]},  # a native key in a semseg file
               r"unexpected keys for backbone: conv1\.0\.weight \(semseg key format\)")
    fails_with(state | {"bn3.weight": torch.ones(64)},
               r"shape mismatch for bn3\.weight \(semseg key format\): file \(64,\), model \(128,\)")


def test_torchvision_resnet101_loads_strictly_into_deeplabv2(tmp_path):
    state = _fixture_state("torchvision_resnet101_keys.txt")
    torch.save(state, tmp_path / "resnet101-5d3b4d8f.pth")
    net = _build(*DLV2, pretrained=str(tmp_path / "resnet101-5d3b4d8f.pth"))
    loaded = net.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer3.22.bn3.weight", "layer4.0.downsample.0.weight"):
        torch.testing.assert_close(loaded[key], state[key])
    assert not net.backbone.bn1.weight.requires_grad  # loading keeps the BN parameters frozen
    del state["layer3.7.conv2.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"missing keys for backbone: layer3\.7\.conv2\.weight$"):
        load_backbone_weights(net.backbone, tmp_path / "bad.pth")
