"""Backbone + decoder, the network every method trains."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.models.pretrained import load_backbone_weights


class DecoderOutput(NamedTuple):
    """What a decoder returns, at its own resolution."""

    logits: torch.Tensor  # (B, K, h, w)
    features: torch.Tensor  # (B, C, h, w) the feature the classifier reads
    aux: torch.Tensor | None = None  # auxiliary logits (PSPNet's layer3 head), in training only


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, K, H, W) at the input resolution
    features: torch.Tensor  # (B, C, h, w) decoder feature before the classifier
    logits_fp: tuple[torch.Tensor, ...] = ()  # one per feature-perturbed copy (UniMatch 1, DSSN 2)
    aux: torch.Tensor | None = None  # auxiliary logits at the input resolution, when the decoder has them


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


class Segmentor(nn.Module):
    """A backbone returns its stage outputs (layer1 ... layer4); the decoder reads the stages named in
    its `in_features` (DeepLabV3+: layer1 and layer4) and returns a `DecoderOutput`."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone features the decoder reads."""
        stages = self.backbone(x)
        return [stages[i] for i in self.decoder.in_features]

    def forward(self, x: torch.Tensor, perturb: int = 0, perturbation: nn.Module | None = None) -> SegOutput:
        """`perturb=n` also decodes n feature-perturbed copies of the backbone features (each with its
        own perturbation, `decoder.perturb`), in the same decoder batch as the clean features, so
        that BN sees them together, as the references. `perturbation`: a module applied to the features
        the decoder reads before anything else, the batch kept (UniMatch V2's complementary channel dropout,
        `sslseg.models.perturbations`)."""
        inputs = self.encode(x)
        if perturbation is not None:
            inputs = list(perturbation(inputs))
        size = x.shape[-2:]
        if perturb:
            copies = [self.decoder.perturb(*inputs) for _ in range(perturb)]
            out = self.decoder(*(torch.cat([f, *(c[k] for c in copies)]) for k, f in enumerate(inputs)))
            clean, *perturbed = upsample(out.logits, size).chunk(perturb + 1)
            aux = None if out.aux is None else upsample(out.aux.chunk(perturb + 1)[0], size)
            return SegOutput(clean, out.features.chunk(perturb + 1)[0], tuple(perturbed), aux)
        out = self.decoder(*inputs)
        return SegOutput(upsample(out.logits, size), out.features, (),
                         None if out.aux is None else upsample(out.aux, size))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters) that train (frozen ones, such as DeepLabV2's BN affine
        parameters, are left out). The optimizer groups them by role (optim.lr_mult: methods.optim.param_groups)."""
        trainable = lambda module: [p for p in module.parameters() if p.requires_grad]
        return trainable(self.backbone), trainable(self.decoder)


MODEL_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
SIZE_KEYS = ("aspp_dilations", "aspp_channels", "low_level_channels", "decoder_channels")


def method_network(backbone_cfg: DictConfig, model_cfg: DictConfig, network: DictConfig | None):
    """The network a method needs beyond the dataset's choice (`method.network`): `decoder` names a model
    config (DDFP: U2PL's DeepLabV3+ with mixed BN), which keeps the chosen decoder's sizes (ASPP rates,
    widths: the toy set's small ones), and `backbone` holds backbone options (DDFP: U2PL's ceil-mode max
    pool). Returns (backbone config, model config)."""
    if not network:
        return backbone_cfg, model_cfg
    if network.get("decoder") and network.decoder != model_cfg.name:
        decoder = OmegaConf.load(MODEL_DIR / f"{network.decoder}.yaml")
        for key in SIZE_KEYS:
            if key in model_cfg and key in decoder:
                decoder[key] = model_cfg[key]
        model_cfg = decoder
    return OmegaConf.merge(backbone_cfg, network.get("backbone") or {}), model_cfg


def build_segmentor(backbone_cfg: DictConfig, model_cfg: DictConfig, num_classes: int,
                    load_pretrained: bool = True) -> Segmentor:
    backbone_kwargs = OmegaConf.to_container(backbone_cfg, resolve=True)
    for key in ("name", "_target_", "pretrained"):
        backbone_kwargs.pop(key, None)
    backbone = get_class(backbone_cfg._target_)(**backbone_kwargs)
    if load_pretrained and backbone_cfg.get("pretrained"):
        load_backbone_weights(backbone, backbone_cfg.pretrained)

    decoder_kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    for key in ("name", "_target_"):
        decoder_kwargs.pop(key, None)
    decoder = get_class(model_cfg._target_)(in_channels=backbone.channels, num_classes=num_classes, **decoder_kwargs)
    return Segmentor(backbone, decoder)
