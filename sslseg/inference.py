"""Evaluation-time prediction: whole image, centre crop or sliding window (specs §5).

`whole` runs the full image (UniMatch's Pascal/COCO protocol). `center_crop` pads the image
symmetrically to the crop size (DDFP's 513 protocol). `sliding` tiles crop-size windows with stride
crop x stride_ratio and sums softmax probabilities (Cityscapes 801 / 534). Unlike UniMatch, border
windows are shifted back inside the image (mmseg style) instead of truncated, so every window has
the same size and windows run in batches of `window_batch`; overlaps are averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]


def _starts(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride)) + [length - crop]
    return sorted(set(starts))


def sliding_window_probs(logits_fn: Logits, image: torch.Tensor, num_classes: int, crop: int, stride: int,
                         window_batch: int = 8) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W), averaged over overlapping windows. Memory is bounded by
    window_batch crops, whatever the image size."""
    b, _, h, w = image.shape
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if pad_h or pad_w:  # images smaller than a window: pad, predict, crop back
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hp, wp = image.shape[-2:]
    boxes = [(y, x) for y in _starts(hp, crop, stride) for x in _starts(wp, crop, stride)]
    probs = image.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = image.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for i in range(0, len(boxes), window_batch):
        chunk = boxes[i : i + window_batch]
        windows = torch.cat([image[:, :, y : y + crop, x : x + crop] for y, x in chunk])
        out = logits_fn(windows).float().softmax(1).split(b)
        for (y, x), p in zip(chunk, out):
            probs[:, :, y : y + crop, x : x + crop] += p
            count[:, :, y : y + crop, x : x + crop] += 1
    return (probs / count)[:, :, :h, :w]


def center_crop_logits(logits_fn: Logits, image: torch.Tensor, crop: int) -> torch.Tensor:
    """Pad the normalised image symmetrically with 0 (the mean colour) to at least crop x crop, run
    once, and return the logits of the original pixels."""
    h, w = image.shape[-2:]
    top, left = max(crop - h, 0) // 2, max(crop - w, 0) // 2
    bottom, right = max(crop - h, 0) - top, max(crop - w, 0) - left
    logits = logits_fn(F.pad(image, (left, right, top, bottom)))
    return logits[:, :, top : top + h, left : left + w]


def predict(logits_fn: Logits, image: torch.Tensor, mode: str, num_classes: int, crop: int,
            stride_ratio: float = 2 / 3, window_batch: int = 8) -> torch.Tensor:
    """Scores (B, K, H, W) whose argmax is the prediction, for a normalised image batch."""
    if mode == "whole":
        return logits_fn(image)
    if mode == "center_crop":
        return center_crop_logits(logits_fn, image, crop)
    if mode == "sliding":
        return sliding_window_probs(logits_fn, image, num_classes, crop, max(1, int(crop * stride_ratio)),
                                    window_batch)
    raise ValueError(f"dataset.eval.mode must be whole, center_crop or sliding, got {mode!r}")


def sliding_window_logits(logits_fn: Logits, image: torch.Tensor, num_classes: int, crop: int,
                          stride: int) -> torch.Tensor:
    """Logits (B, K, H, W) averaged over overlapping shifted windows (semseg's `scale_process`)."""
    b, _, h, w = image.shape
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hp, wp = image.shape[-2:]
    total = image.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = image.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for y in _starts(hp, crop, stride):
        for x in _starts(wp, crop, stride):
            total[:, :, y : y + crop, x : x + crop] += logits_fn(image[:, :, y : y + crop, x : x + crop]).float()
            count[:, :, y : y + crop, x : x + crop] += 1
    return (total / count)[:, :, :h, :w]


def predict_logits(logits_fn: Logits, image: torch.Tensor, mode: str, num_classes: int, crop: int,
                   stride_ratio: float = 2 / 3, flip: bool = False) -> torch.Tensor:
    """Logits averaged over windows (mode sliding; stride ⌈crop·ratio⌉ as semseg) and, with `flip`, over the
    image and its horizontal mirror (DARS's pseudo-label generation)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            return logits_fn(x).float()
        return sliding_window_logits(logits_fn, x, num_classes, crop, max(1, math.ceil(crop * stride_ratio)))

    logits = run(image)
    if flip:
        logits = (logits + run(image.flip(3)).flip(3)) / 2
    return logits
