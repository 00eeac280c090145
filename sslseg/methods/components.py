"""Pieces the weak-to-strong methods share: CutMix, confidence masks, the masked unsupervised
loss, and an EMA copy of the network."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX


def cutmix(images: torch.Tensor, partners: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Paste `partners` into `images` inside `boxes` (B, H, W; 1 = inside). Works for images
    (B, C, H, W) and for per-pixel targets (B, H, W)."""
    inside = boxes.bool()
    if images.dim() == 4:
        inside = inside[:, None]
    return torch.where(inside, partners, images)


def confidence(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max probability, argmax) over classes: the pseudo-label and its confidence."""
    conf, label = probs.max(dim=1)
    return conf, label


def masked_unsup_loss(logits: torch.Tensor, pseudo: torch.Tensor, conf: torch.Tensor, ignore: torch.Tensor,
                      threshold: float | torch.Tensor) -> torch.Tensor:
    """Σ CE(logits, pseudo) · [conf ≥ τ] · [not padding] / #(non-padded pixels).

    UniMatch's normalisation (specs §3.2 step 7): dividing by the non-padded pixels, not by the
    confident ones, so a batch with few confident pixels contributes a small loss."""
    per_pixel = F.cross_entropy(logits.float(), pseudo, reduction="none")
    confident, valid = _confident_and_valid(conf, ignore, threshold)
    return (per_pixel * confident).sum() / valid.sum().clamp_min(1)


def confident_share(conf: torch.Tensor, ignore: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Share of non-padded pixels whose confidence passes the threshold (logged as mask ratio)."""
    confident, valid = _confident_and_valid(conf, ignore, threshold)
    return confident.sum() / valid.sum().clamp_min(1)


def _confident_and_valid(conf, ignore, threshold) -> tuple[torch.Tensor, torch.Tensor]:
    """([conf ≥ τ] and not padding, not padding)."""
    valid = ignore != IGNORE_INDEX
    return (conf >= threshold) & valid, valid


class ModelEMA(nn.Module):
    """Exponential moving average of a network's parameters *and* buffers (BN statistics), as DAW's
    `EMA` (specs §3.3 step 12): decay d = min(1 - 1/(i+1), max_decay) at update i (0-based)."""

    def __init__(self, model: nn.Module, max_decay: float = 0.999):
        super().__init__()
        self.max_decay = max_decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, index: int) -> None:
        decay = min(1.0 - 1.0 / (index + 1), self.max_decay)
        shadow, online = [], []
        ema_state = self.model.state_dict(keep_vars=True)
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                shadow.append(target)
                online.append(value.detach())
            else:  # num_batches_tracked: integer bookkeeping, follow the online model
                target.copy_(value)
        # shadow ← decay·shadow + (1 − decay)·online, one fused kernel per device and dtype.
        torch._foreach_lerp_(shadow, online, 1.0 - decay)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True):  # always evaluated, never trained
        return super().train(False)
