"""Offline pseudo-labels: per-class confidence statistics in bounded memory, DARS's distribution-aligned
thresholds with random sampling (and CBST's), and the per-image selection.

DARS keeps every unlabeled pixel's confidence in a per-class "bank" (about 200 GB of logits for
Cityscapes) and sorts it. Confidences here are the fp16 softmax of the averaged logits, so a class's
bank is fully described by a histogram over the fp16 values in [0, 1]: 15361 bins, one per
representable value (bit patterns 0x0000 ... 0x3C00, ordered as the values). Thresholds and tie counts
read off the histogram are exactly those of the sorted bank, and histograms from DDP ranks add up.
"""

from __future__ import annotations

import numpy as np
import torch

from sslseg.data.transforms import IGNORE_INDEX

FP16_BINS = 0x3C00 + 1  # fp16 bit patterns of 0.0 ... 1.0, increasing with the value


def fp16_bins(conf: torch.Tensor) -> torch.Tensor:
    """The histogram bin of each fp16 confidence in [0, 1]: its bit pattern."""
    if conf.dtype != torch.float16:
        raise TypeError(f"confidences must be float16, got {conf.dtype}")
    return conf.contiguous().view(torch.int16).long()


def bin_values() -> torch.Tensor:
    """The confidence (float32) of every bin."""
    return torch.arange(FP16_BINS, dtype=torch.int16).view(torch.float16).float()


def confidence_histogram(label: torch.Tensor, conf: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, FP16_BINS) int64 counts of pixels per pseudo-label class and fp16 confidence."""
    flat = label.flatten().long() * FP16_BINS + fp16_bins(conf).flatten()
    return torch.bincount(flat, minlength=num_classes * FP16_BINS).view(num_classes, FP16_BINS)


def class_targets(prior_counts: torch.Tensor, labeling_ratio: float, total_pixels: int) -> torch.Tensor:
    """DARS's target count per class: n_j = ⌊ratio · p_j · N⌋, where p_j is class j's share of the
    labeled pixels that are not ignored and N the number of unlabeled pixels. The release uses a nominal
    image size (VOC 500 × 375, Cityscapes 1024 × 2048) times the image count for N; here N is the real
    pixel count (the histograms' total)."""
    prior = prior_counts.double() / prior_counts.sum().clamp_min(1)
    return torch.floor(labeling_ratio * prior * total_pixels).long()


def dars_thresholds(histogram: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class j: τ_j = the n_j-th largest confidence of its bank, and the sampling ratio
    sp_j = min(1, n_j / #{conf ≥ τ_j}), below 1 only when confidences tie at τ_j.

    When the bank holds fewer than n_j pixels (overflow) every pixel is kept (τ_j = its smallest
    confidence, sp_j = 1), as released. A class with n_j = 0 keeps nothing (τ_j = inf, sp_j = 0; the
    release reaches the same result through τ_j = its smallest confidence and sp_j = 0), and so does a
    class that no pixel was labelled with (the release crashes on its empty bank)."""
    at_or_above = histogram.flip(1).cumsum(1).flip(1)  # at_or_above[j, b] = #{conf ≥ value(b)}
    total = at_or_above[:, 0]
    values = bin_values()
    # The n-th largest value sits in the highest bin whose count from the top reaches n.
    top_bin = ((at_or_above >= targets[:, None]).sum(1) - 1).clamp_min(0)
    lowest_bin = (histogram > 0).long().argmax(1)
    overflow = targets > total
    chosen = torch.where(overflow, lowest_bin, top_bin)
    thresholds = values[chosen]
    kept = at_or_above.gather(1, chosen[:, None]).squeeze(1)
    ratios = (targets.double() / kept.clamp_min(1).double()).clamp(max=1.0)
    none = (targets == 0) | (total == 0)
    thresholds = torch.where(none, torch.full_like(thresholds, float("inf")), thresholds)
    ratios = torch.where(none, torch.zeros_like(ratios), ratios)
    return thresholds, ratios


def cbst_thresholds(histogram: torch.Tensor, labeling_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced self-training (DARS's 'cbst' option): τ_j keeps the top `labeling_ratio` share of
    class j's own bank (the release's `bank_sorted[-int(len·ratio) - 1]`, ascending), no sampling."""
    total = histogram.sum(1)
    # index len - int(len·r) - 1 of the ascending bank, i.e. the (int(len·r) + 1)-th largest value
    rank = torch.floor(total.double() * labeling_ratio).long() + 1
    thresholds, _ = dars_thresholds(histogram, torch.minimum(rank, total))
    return thresholds, torch.ones(len(total), dtype=torch.float64)


def select_pixels(label: np.ndarray, conf: np.ndarray, thresholds: np.ndarray, ratios: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """One image's pseudo-label: pixels of class j below τ_j become 255, then, per class, ⌊n − n·sp_j⌋
    of the n remaining pixels chosen uniformly at random become 255 too (the release's per-image
    `torch.randperm`, among all the pixels at or above τ_j)."""
    out = label.astype(np.uint8).copy()
    conf = conf.astype(np.float32)
    below = conf < thresholds.astype(np.float32)[label]
    out[below] = IGNORE_INDEX
    for j in np.unique(out[out != IGNORE_INDEX]):
        positions = np.flatnonzero(out == j)
        n = len(positions)
        drop = int(n - n * float(ratios[j]))
        if drop > 0:
            out.flat[rng.choice(positions, size=drop, replace=False)] = IGNORE_INDEX
    return out


def labeled_prior(masks, num_classes: int) -> torch.Tensor:
    """Pixel counts per class over labeled masks (255 and other ignore values left out)."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    for mask in masks:
        values = torch.as_tensor(np.asarray(mask)).flatten().long()
        counts += torch.bincount(values[values < num_classes], minlength=num_classes)
    return counts
