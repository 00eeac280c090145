"""The backbone registry (sslseg/models/backbones.py): every config names a registered backbone, each entry's
metadata (key format, normalisation, stride) holds for the network it builds, and a wrong name or option is one line.
Networks are built on the meta device (shapes only, no memory: ViT-g has 1.1B parameters); no weights are read."""

import pytest
import torch
from omegaconf import OmegaConf

from sslseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslseg.errors import UserError
from sslseg.models import build_segmentor
from sslseg.models.backbones import (
    BACKBONES,
    BackboneEntry,
    build_backbone,
    build_backbone_from_config,
    register_backbone,
)
from sslseg.models.pretrained import KEY_FORMATS, _file_key
from tests.conftest import ROOT, read_key_list

CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"
# The key lists of the published weight files that tests/fixtures holds, by registered backbone.
KEY_LISTS = {"dinov2_small": "dinov2_vits14_keys.txt", "dinov2_base": "dinov2_vitb14_keys.txt",
             "dinov2_large": "dinov2_vitl14_keys.txt", "dinov2_giant": "dinov2_vitg14_keys.txt",
             "resnet50_psp": "semseg_resnet50_v2_keys.txt", "resnet101_deeplabv2": "torchvision_resnet101_keys.txt",
             "xception65": "xception65_keys.txt"}


def _on_meta(name: str, **options) -> torch.nn.Module:
    with torch.device("meta"):
        return build_backbone(name, **options)


def _weights(state: dict) -> dict:
    """{key: shape} less the BN counters (files saved before PyTorch 0.4.1 lack them; the loader tolerates both)."""
    return {k: tuple(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("config", sorted(p.stem for p in (CONF / "backbone").glob("*.yaml")))
def test_every_backbone_config_names_a_registered_backbone_and_builds(config):
    cfg = OmegaConf.load(CONF / "backbone" / f"{config}.yaml")
    assert cfg.name == config and "_target_" not in cfg
    with torch.device("meta"):
        backbone = build_backbone_from_config(cfg)
    shapes = lambda module: {k: v.shape for k, v in module.state_dict().items()}
    assert shapes(backbone) == shapes(_on_meta(config))  # the config's options are the entry's defaults
    if "output_stride" in cfg:
        assert cfg.output_stride == BACKBONES[config].output_stride


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_metadata_holds_for_the_built_network(name):
    entry = BACKBONES[name]
    assert (entry.mean, entry.std) == (IMAGENET_MEAN, IMAGENET_STD)  # what the methods normalise with
    assert (entry.output_stride is None) != (entry.patch_size is None)
    backbone = _on_meta(name)
    side = 224 if entry.patch_size is None else entry.patch_size * 16
    features = backbone(torch.empty(1, 3, side, side, device="meta"))
    assert [f.shape[1] for f in features] == list(backbone.channels)
    # round: a ceil-mode max pool (resnet101_deeplabv2) keeps one position more
    assert round(side / features[-1].shape[-1]) == (entry.output_stride or entry.patch_size)
    if entry.weights is not None:
        assert entry.weights.key_format in KEY_FORMATS
        assert getattr(backbone, "weights_format", "native") == entry.weights.key_format  # what the loader uses


@pytest.mark.parametrize("name", sorted(KEY_LISTS))
def test_key_format_names_the_published_files_keys(name):
    """The module's keys, renamed by the entry's key format, are the published file's (its key list), less the
    ImageNet classifier `fc.*` that the loader ignores."""
    entry = BACKBONES[name]
    ours = {_file_key(k, entry.weights.key_format): v.shape for k, v in _on_meta(name).state_dict().items()}
    published = {k: v for k, v in read_key_list(FIXTURES / KEY_LISTS[name]).items() if not k.startswith("fc.")}
    assert _weights(ours) == _weights(published)


def test_an_unknown_backbone_name_is_one_line_listing_the_registered_ones():
    cfg = OmegaConf.create({"name": "resnet102", "output_stride": 16, "pretrained": None})
    model = OmegaConf.load(CONF / "model" / "deeplabv3plus.yaml")
    with pytest.raises(UserError) as caught:
        build_segmentor(cfg, model, num_classes=6)
    assert str(caught.value) == ("backbone.name=resnet102 is not a registered backbone; registered: "
                                 f"{', '.join(sorted(BACKBONES))} (sslseg/models/backbones.py)")
    assert "\n" not in str(caught.value) and "resnet101, resnet101_deeplabv2" in str(caught.value)


def test_an_option_the_backbone_does_not_take_is_one_line():
    with pytest.raises(UserError, match=r"^backbone=tiny: got an unexpected keyword argument 'patch_size' "
                                        r"\(the options of DeepStemResNet\)$"):
        build_backbone("tiny", patch_size=14)


def test_options_go_over_the_architecture_and_old_configs_still_build():
    assert _on_meta("tiny").layer3[0].conv2.stride == (1, 1)  # the entry's output stride 8: layer3 dilated
    assert _on_meta("tiny", output_stride=16).layer3[0].conv2.stride == (2, 2)
    # A config saved in an older checkpoint: the class path and every constructor argument spelled out.
    saved = {"name": "tiny", "_target_": "sslseg.models.resnet.DeepStemResNet", "layers": [1, 1, 1, 1],
             "stem_width": 16, "base_width": 16, "output_stride": 8, "stem": "deep", "pretrained": None}
    torch.manual_seed(0)
    old = build_backbone_from_config(OmegaConf.create(saved)).state_dict()
    torch.manual_seed(0)
    new = build_backbone_from_config(OmegaConf.load(CONF / "backbone" / "tiny.yaml")).state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_a_registered_callable_builds_from_a_config():
    entry = BackboneEntry("test_conv", lambda width=4: torch.nn.Conv2d(3, width, 1), "a 1x1 conv", output_stride=1)
    register_backbone(entry)
    try:
        assert build_backbone_from_config({"name": "test_conv", "width": 5, "pretrained": None}).out_channels == 5
        with pytest.raises(ValueError, match="registered already"):
            register_backbone(entry)
    finally:
        del BACKBONES["test_conv"]


def test_reading_the_registry_imports_no_torch():
    """`python -m sslseg list` shows the registry's metadata without paying for torch."""
    import subprocess
    import sys

    code = "import sys, sslseg.catalog as c; c.format_catalog(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
