"""Backbone + decoder, the network every method trains.

The network's interface, what a method may call:

- `encode(x)`: the backbone features the decoder reads (DeepLabV3+: c1 and c4; DPT: its four ViT features).
- `decode(features, size)`: the decoder on those features, logits (and aux logits) upsampled to `size`.
- `forward(x)` = decode(encode(x), x's size), with optional feature perturbations.

A feature perturbation is a module (or any callable) from the list of features the decoder reads to a list of the
same shapes (sslseg/models/perturbations.py: FeatureDropout, ComplementaryChannelDropout). The method builds them and
says where each acts:

- `perturbed_copies`: each adds one perturbed copy of the features, decoded in the same decoder batch as the clean
  ones (so that BatchNorm normalises them together, as UniMatch does); its logits come back in `logits_fp`, one entry
  per module in order. A module listed twice perturbs twice, with fresh random draws each time.
- `batch_perturbation`: applied to the batch's own features, before any copy is made (UniMatch V2's complementary
  dropout, which pairs rows of the batch and needs no copy).

The decoders know nothing of perturbations: they read the features they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.errors import UserError
from sslseg.models.backbones import build_backbone_from_config, patch_size_of
from sslseg.models.perturbations import FeaturePerturbation
from sslseg.models.pretrained import load_backbone_weights


class DecoderOutput(NamedTuple):
    """What a decoder returns, at its own resolution."""

    logits: torch.Tensor  # (B, K, h, w)
    features: torch.Tensor  # (B, C, h, w) the feature the classifier reads
    aux: torch.Tensor | None = None  # auxiliary logits (PSPNet's layer3 head), in training only


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, K, H, W) at the input resolution
    features: torch.Tensor  # (B, C, h, w) decoder feature before the classifier
    logits_fp: tuple[torch.Tensor, ...] = ()  # one per perturbed copy, in the order of `perturbed_copies`
    aux: torch.Tensor | None = None  # auxiliary logits at the input resolution, when the decoder has them


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


class Segmentor(nn.Module):
    """A backbone returns its stage outputs (layer1 ... layer4); the decoder reads the stages named in
    its `in_features` (DeepLabV3+: layer1 and layer4) and returns a `DecoderOutput`. The module docstring
    describes the interface methods use."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone features the decoder reads, in the order of `decoder.in_features`."""
        stages = self.backbone(x)
        return [stages[i] for i in self.decoder.in_features]

    def decode(self, features: Sequence[torch.Tensor], size) -> SegOutput:
        """The decoder on `features` (as `encode` returns them): logits and aux logits upsampled to `size` (H, W),
        bilinear with align_corners=True; the decoder feature at its own resolution."""
        out = self.decoder(*features)
        return SegOutput(upsample(out.logits, size), out.features, (),
                         None if out.aux is None else upsample(out.aux, size))

    def forward(self, x: torch.Tensor, perturbed_copies: Sequence[FeaturePerturbation] = (),
                batch_perturbation: FeaturePerturbation | None = None) -> SegOutput:
        """decode(encode(x)) at x's size. `batch_perturbation` first perturbs the batch's own features; then each of
        `perturbed_copies` makes one perturbed copy of them (one after the other, so the random draws follow the
        list), and the clean features and the copies are decoded as one batch [clean | copy 1 | copy 2 ...].
        `logits`, `features` and `aux` are the clean part's, `logits_fp` the copies' logits."""
        features = self.encode(x)
        if batch_perturbation is not None:
            features = list(batch_perturbation(features))
        if not perturbed_copies:
            return self.decode(features, x.shape[-2:])
        copies = [perturb(features) for perturb in perturbed_copies]
        batch = [torch.cat([f, *(copy[k] for copy in copies)]) for k, f in enumerate(features)]
        out = self.decode(batch, x.shape[-2:])
        parts = len(copies) + 1
        clean, *perturbed = out.logits.chunk(parts)
        aux = None if out.aux is None else out.aux.chunk(parts)[0]
        return SegOutput(clean, out.features.chunk(parts)[0], tuple(perturbed), aux)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters) that train (frozen ones, such as DeepLabV2's BN affine
        parameters, are left out). The optimizer groups them by role (optim.lr_mult: methods.optim.param_groups)."""
        trainable = lambda module: [p for p in module.parameters() if p.requires_grad]
        return trainable(self.backbone), trainable(self.decoder)


MODEL_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
# Model-config keys that the configs saved in older checkpoints hold and no decoder takes any more: `fp_dropout`, the
# rate of UniMatch's feature perturbation, is the method's `feature_dropout` now (perturbations.FeatureDropout).
RETIRED_MODEL_KEYS = ("fp_dropout",)
SIZE_KEYS = ("aspp_dilations", "aspp_channels", "low_level_channels", "decoder_channels")


def method_network(backbone_cfg: DictConfig, model_cfg: DictConfig, network: DictConfig | None):
    """The network a method needs beyond the dataset's choice (`method.network`): `decoder` names a model
    config (DDFP: U2PL's DeepLabV3+ with mixed BN), which keeps the chosen decoder's sizes (ASPP rates,
    widths: the toy set's small ones), and `backbone` holds backbone options (DDFP: U2PL's ceil-mode max
    pool). Returns (backbone config, model config)."""
    if not network:
        return backbone_cfg, model_cfg
    if network.get("decoder") and patch_size_of(backbone_cfg.get("name")):
        raise UserError(f"method.network.decoder={network.decoder}: this method trains its own decoder, a DeepLabV3+ "
                        f"that reads a CNN's stride-4 and stride-16 features; backbone={backbone_cfg.name} is a ViT "
                        f"(patch {patch_size_of(backbone_cfg.name)}): use a CNN backbone (backbone=resnet101)")
    if network.get("decoder") and network.decoder != model_cfg.name:
        decoder = OmegaConf.load(MODEL_DIR / f"{network.decoder}.yaml")
        for key in SIZE_KEYS:
            if key in model_cfg and key in decoder:
                decoder[key] = model_cfg[key]
        model_cfg = decoder
    return OmegaConf.merge(backbone_cfg, network.get("backbone") or {}), model_cfg


def build_segmentor(backbone_cfg: DictConfig, model_cfg: DictConfig, num_classes: int,
                    load_pretrained: bool = True) -> Segmentor:
    """The backbone that `backbone_cfg` names in the registry (sslseg/models/backbones.py), its weights loaded
    (`pretrained`) unless `load_pretrained` is False, and the decoder class `model_cfg._target_` on top."""
    backbone = build_backbone_from_config(backbone_cfg)
    if load_pretrained and backbone_cfg.get("pretrained"):
        load_backbone_weights(backbone, backbone_cfg.pretrained)

    decoder_kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    for key in ("name", "_target_", *RETIRED_MODEL_KEYS):
        decoder_kwargs.pop(key, None)
    decoder = get_class(model_cfg._target_)(in_channels=backbone.channels, num_classes=num_classes, **decoder_kwargs)
    return Segmentor(backbone, decoder)
