"""Xception-65 (UniMatch's COCO backbone): key layout, stage shapes, the shortcut, strict loading."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sslseg.errors import UserError
from sslseg.models import build_segmentor
from sslseg.models.xception import Block, Xception65
from tests.conftest import ROOT, read_key_list

KEY_FILE = Path(__file__).parent / "fixtures" / "xception65_keys.txt"


def _key_list() -> dict[str, tuple[int, ...]]:
    return read_key_list(KEY_FILE)


def _cfgs(pretrained=None):
    backbone = OmegaConf.load(ROOT / "conf" / "backbone" / "xception65.yaml")
    backbone.pretrained = pretrained
    return backbone, OmegaConf.load(ROOT / "conf" / "model" / "deeplabv3plus.yaml")


def test_state_dict_matches_unimatch_key_list():
    ours = {k: tuple(v.shape) for k, v in Xception65().state_dict().items()}
    assert ours == _key_list()
    assert len(ours) == 792  # 660 weights and BN buffers + 132 num_batches_tracked


@pytest.mark.parametrize("output_stride,c3_c4_side", [(16, 5), (8, 9)])
def test_stage_shapes(output_stride, c3_c4_side):
    # 65 -> conv1 s2: 33 -> block1 s2: 17 (stride 4) -> block2 s2: 9 -> block3 s2 (OS16 only): 5
    model = Xception65(output_stride=output_stride).eval()
    with torch.no_grad():
        c1, c2, c3, c4 = model(torch.randn(1, 3, 65, 65))
    assert c1.shape == (1, 256, 17, 17) and c2.shape == (1, 256, 9, 9)
    assert c3.shape == (1, 728, c3_c4_side, c3_c4_side) and c4.shape == (1, 2048, c3_c4_side, c3_c4_side)
    assert [c.shape[1] for c in (c1, c2, c3, c4)] == list(model.channels)


def test_identity_shortcut_adds_relu_of_the_input_as_the_reference():
    # With the last pointwise conv zeroed (eval BN: mean 0, var 1, affine 1/0), the residual branch is 0
    # and the block returns its shortcut: UniMatch's in-place ReLU makes that relu(x), not x.
    block = Block(4, 4).eval()
    with torch.no_grad():
        block.sepconv3.pointwise.weight.zero_()
        x = torch.tensor([-1.0, 2.0, -3.0, 4.0]).view(1, 4, 1, 1).expand(1, 4, 3, 3).clone()
        out, _ = block(x)
    assert out[0, :, 1, 1].tolist() == [0.0, 2.0, 0.0, 4.0]


def test_deeplab_on_xception_has_the_reference_parameter_count():
    net = build_segmentor(*_cfgs(), num_classes=81)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 54.7  # UniMatch COCO logs: 54.7M
    assert net.backbone.bn1.momentum == 0.0003
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 65, 65)).logits.shape == (1, 81, 65, 65)


def _key_file_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) if shape else torch.tensor(0) for k, shape in _key_list().items()}


def test_unimatch_xception_pth_loads_strictly(tmp_path):
    state = _key_file_state()
    torch.save(state, tmp_path / "xception.pth")
    net = build_segmentor(*_cfgs(str(tmp_path / "xception.pth")), num_classes=81)
    loaded = net.backbone.state_dict()
    for key in ("conv1.weight", "block2.skipbn.running_var", "block19.sepconv3.pointwise.weight", "conv5.bn2.bias"):
        torch.testing.assert_close(loaded[key], state[key])


def test_missing_xception_key_is_named(tmp_path):
    state = _key_file_state()
    del state["block7.sepconv2.depthwise.weight"]
    torch.save(state, tmp_path / "xception.pth")
    with pytest.raises(UserError, match=r"missing keys for backbone: block7\.sepconv2\.depthwise\.weight"):
        build_segmentor(*_cfgs(str(tmp_path / "xception.pth")), num_classes=81)
