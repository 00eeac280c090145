"""The backbone registry: every network a backbone config can name, and what is known about it before it is built.

A backbone config (conf/backbone/<file>.yaml) is `name:` (a registered backbone) plus its options (`output_stride`,
`stem`, `frozen`, ...) and `pretrained:` (the weight file, or null); `build_backbone_from_config` builds it. An entry:

- `builder`: the class, by import path (imported when the backbone is built, so that reading the registry imports no
  torch: `python -m sslseg list` shows it), or any callable; `architecture`: the keyword arguments that make this
  network of it (ResNet-101's block counts, ViT-B's width and depth). The config's options go on top of them.
- `weights`: the ImageNet file the configs load, where it comes from, and how it names its keys (a key format of
  sslseg.models.pretrained: `native` for the module's own names, `semseg`, `dinov2`, `dinov2_swiglu`).
- `mean`, `std`: the per-channel normalisation of the images its weights were trained on (0..1 RGB). Every entry here
  uses ImageNet's, which the methods apply (sslseg.data.transforms).
- `output_stride` (a CNN: of its deepest feature, at the default options) or `patch_size` (a ViT).

A backbone module returns its stage features (a tuple or list; the decoder picks by index, `in_features`) and has
`channels`, their widths. To add one: its module, an entry below (or `register_backbone` from code that runs before
the network is built), and a conf/backbone/<name>.yaml naming it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sslseg.errors import UserError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys of a backbone config that are not options of the network. `_target_`: the class path that configs named
# before the registry, still in the configs saved with older checkpoints (their `name` is a registered one).
NOT_OPTIONS = ("name", "pretrained", "_target_")


@dataclass(frozen=True)
class Weights:
    """A backbone's ImageNet weight file."""

    file: str  # its name in paths.pretrained_dir, as the configs read it
    key_format: str  # how it names the keys (sslseg.models.pretrained.KEY_FORMATS)
    source: str  # where to get it


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    builder: str | Callable[..., nn.Module]  # "package.module.Class", or the callable itself
    summary: str
    architecture: Mapping[str, Any] = field(default_factory=dict)
    weights: Weights | None = None
    output_stride: int | None = None
    patch_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def builder_callable(self) -> Callable[..., nn.Module]:
        if callable(self.builder):
            return self.builder
        module, _, attribute = self.builder.rpartition(".")
        return getattr(importlib.import_module(module), attribute)

    def build(self, **options: Any) -> nn.Module:
        """The network, `options` over the entry's architecture. An option the builder does not take is one
        UserError line."""
        builder = self.builder_callable()
        kwargs = {**self.architecture, **options}
        try:
            inspect.signature(builder).bind(**kwargs)
        except TypeError as exc:
            raise UserError(f"backbone={self.name}: {exc} (the options of {builder.__name__})") from None
        return builder(**kwargs)

    def describe(self) -> str:
        """One line: the summary, the stride, the weight file and its key format."""
        stride = f"patch {self.patch_size}" if self.patch_size else f"output stride {self.output_stride}"
        weights = (f"weights {self.weights.file} ({self.weights.key_format} keys) from {self.weights.source}"
                   if self.weights else "no pretrained weights")
        normalisation = "" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD) else \
            f"; inputs normalised by mean {self.mean}, std {self.std}"
        return f"{self.summary}; {stride}; {weights}{normalisation}"


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in BACKBONES:
        raise ValueError(f"a backbone named {entry.name!r} is registered already")
    BACKBONES[entry.name] = entry
    return entry


def backbone_entry(name: str) -> BackboneEntry:
    """The registered backbone `name`; an unknown name is one UserError line listing the registered ones."""
    if name not in BACKBONES:
        raise UserError(f"backbone.name={name} is not a registered backbone; registered: {', '.join(sorted(BACKBONES))}"
                        " (sslseg/models/backbones.py)")
    return BACKBONES[name]


def patch_size_of(name: str | None) -> int | None:
    """The patch size of a registered ViT backbone; None for a CNN or a name not registered."""
    entry = BACKBONES.get(str(name)) if name else None
    return entry.patch_size if entry is not None else None


def nearest_multiple(size: int, multiple: int) -> int:
    """`size` rounded to the nearest multiple, as UniMatch V2 rounds its evaluation sizes: int(size/m + 0.5)·m, at
    least m (UniMatch V2's crops 518 and 798 are UniMatch's 513 and 801 so rounded for 14-pixel patches)."""
    return max(multiple, int(size / multiple + 0.5) * multiple)


def crop_for_backbone(crop: int, name: str | None) -> int:
    """A dataset's default crop for the backbone `name`: a ViT's nearest multiple of its patch size (the
    `sslseg.patch_multiple` resolver of conf/dataset/*.yaml), a CNN's crop unchanged."""
    patch = patch_size_of(name)
    return nearest_multiple(int(crop), patch) if patch else int(crop)


def build_backbone(name: str, **options: Any) -> nn.Module:
    return backbone_entry(name).build(**options)


def build_backbone_from_config(backbone_cfg: Mapping) -> nn.Module:
    """The network of a backbone config (a DictConfig or a plain mapping): its `name` with its options, without
    weights (`pretrained` is the caller's: sslseg.models.pretrained.load_backbone_weights). Only the options are
    resolved, so a config file read on its own (`${paths.pretrained_dir}` unresolvable) builds too."""
    from omegaconf import Container, OmegaConf

    if "name" not in backbone_cfg:
        raise UserError(f"backbone.name is missing: name a registered backbone ({', '.join(sorted(BACKBONES))})")
    plain = lambda value: OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
    options = {key: plain(backbone_cfg[key]) for key in backbone_cfg if key not in NOT_OPTIONS}
    return build_backbone(str(backbone_cfg["name"]), **options)


# -- the registered backbones ----------------------------------------------------------------------------------------
RESNET = "sslseg.models.resnet.DeepStemResNet"
VIT = "sslseg.models.dinov2.DINOv2ViT"
UNIMATCH_RELEASE = "UniMatch's release (Google Drive links in docs/data.md)"

register_backbone(BackboneEntry(
    "resnet50", RESNET, "deep-stem ResNet-50 (ResNet-v1s) as in UniMatch, DAW, DSSN, DDFP",
    {"layers": (3, 4, 6, 3)}, Weights("resnet50.pth", "native", UNIMATCH_RELEASE), output_stride=16))
register_backbone(BackboneEntry(
    "resnet101", RESNET, "deep-stem ResNet-101 (ResNet-v1s) as in UniMatch, DAW, DSSN, DDFP",
    {"layers": (3, 4, 23, 3)},
    Weights("resnet101.pth", "native", UNIMATCH_RELEASE + "; or torchvision's by name with stem=torchvision"),
    output_stride=16))
register_backbone(BackboneEntry(
    "resnet50_psp", RESNET, "semseg's ResNet-50 for DARS's PSPNet (every layer3/layer4 block dilated)",
    {"layers": (3, 4, 6, 3), "output_stride": 8, "dilate_all_blocks": True, "weights_format": "semseg"},
    Weights("resnet50_v2.pth", "semseg", "semseg's initmodel/ (github.com/hszhao/semseg, linked in docs/data.md)"),
    output_stride=8))
register_backbone(BackboneEntry(
    "resnet101_deeplabv2", RESNET,
    "AdvSemiSeg's ResNet-101 for DARS's DeepLabV2 (7x7 stem, Caffe-style strides, frozen BN affine)",
    {"layers": (3, 4, 23, 3), "output_stride": 8, "stem": "torchvision", "dilate_all_blocks": True,
     "maxpool_ceil_mode": True, "stride_in_1x1": True, "freeze_bn_affine": True},
    Weights("resnet101-5d3b4d8f.pth", "native", "torchvision (download.pytorch.org)"), output_stride=8))
register_backbone(BackboneEntry(
    "tiny", RESNET, "a small deep-stem ResNet (1 block per stage, narrow) for the toy set and CPU runs",
    {"layers": (1, 1, 1, 1), "stem_width": 16, "base_width": 16, "output_stride": 8}, output_stride=8))
register_backbone(BackboneEntry(
    "xception65", "sslseg.models.xception.Xception65", "Xception-65 as in UniMatch (the COCO recipes)",
    {}, Weights("xception.pth", "native", UNIMATCH_RELEASE), output_stride=16))


def _dinov2(size: str, label: str, width: int, depth: int, heads: int, ffn: str, layers: tuple[int, ...]) -> None:
    """DINOv2 ViT-`label`/14 as UniMatch V2 uses it: `layers` are the blocks its DPT head reads."""
    letter = label[0].lower()
    register_backbone(BackboneEntry(
        f"dinov2_{size}", VIT, f"DINOv2 ViT-{label}/14 as UniMatch V2's encoder",
        {"embed_dim": width, "depth": depth, "num_heads": heads, "ffn": ffn, "patch_size": 14, "img_size": 518,
         "layers": layers},
        Weights(f"dinov2_vit{letter}14_pretrain.pth", "dinov2_swiglu" if ffn == "swiglu" else "dinov2",
                "Meta (github.com/facebookresearch/dinov2); or timm's by name"),
        patch_size=14))


_dinov2("small", "S", 384, 12, 6, "mlp", (2, 5, 8, 11))
_dinov2("base", "B", 768, 12, 12, "mlp", (2, 5, 8, 11))
_dinov2("large", "L", 1024, 24, 16, "mlp", (4, 11, 17, 23))
_dinov2("giant", "g", 1536, 40, 24, "swiglu", (9, 19, 29, 39))
register_backbone(BackboneEntry(
    "vit_tiny", VIT, "a tiny DINOv2-style ViT (64 wide, 4 blocks, 8x8 patches) for the toy set",
    {"embed_dim": 64, "depth": 4, "num_heads": 2, "ffn": "mlp", "patch_size": 8, "img_size": 64,
     "layers": (0, 1, 2, 3)}, patch_size=8))
