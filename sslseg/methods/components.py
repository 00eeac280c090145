"""Tensor pieces the semi-supervised methods share: CutMix and the pseudo-label's confidence."""

from __future__ import annotations

import torch


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
