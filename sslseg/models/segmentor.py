"""Backbone + decoder, the network every method trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.models.pretrained import load_backbone_weights


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, K, H, W) at the input resolution
    features: torch.Tensor  # (B, C, H/4, W/4) decoder feature before the classifier
    logits_fp: tuple[torch.Tensor, ...] = ()  # one per feature-perturbed copy (UniMatch 1, DSSN 2)


class Segmentor(nn.Module):
    def __init__(self, backbone: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x: torch.Tensor, perturb: int = 0,
                fused_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SegOutput:
        """`perturb=n` also decodes n feature-perturbed copies of the backbone features (each with its
        own channel-dropout masks on c1 and c4), in the same decoder batch as the clean features, so
        that BN sees them together, as the references. `fused_hook` may replace the fused 304-d
        feature before the decoder convs."""
        c1, _, _, c4 = self.backbone(x)
        size = x.shape[-2:]
        if perturb:
            copies = [self.decoder.perturb(c1, c4) for _ in range(perturb)]
            logits, features = self.decoder(torch.cat([c1, *(d1 for d1, _ in copies)]),
                                            torch.cat([c4, *(d4 for _, d4 in copies)]), fused_hook)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
            clean, *perturbed = logits.chunk(perturb + 1)
            return SegOutput(clean, features.chunk(perturb + 1)[0], tuple(perturbed))
        logits, features = self.decoder(c1, c4, fused_hook)
        return SegOutput(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), features)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters): the head gets lr x lr_multiplier."""
        return list(self.backbone.parameters()), list(self.decoder.parameters())


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
