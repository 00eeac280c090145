"""Losses: the supervised criteria (cross-entropy with ignore, UniMatch's OHEM for Cityscapes) and the
terms several methods share (masked cross-entropy, standardised MSE, class-aware cross-entropy and the
image-tag classification loss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.errors import UserError


class OhemCrossEntropy(nn.Module):
    """Online hard example mining (UniMatch `ProbOhemCrossEntropy2d`).

    With p_gt the softmax probability of the true class on valid pixels: if fewer than `min_kept`
    pixels are valid, all are kept; otherwise the threshold is max(thresh, the min_kept-th smallest
    p_gt) and pixels with p_gt <= threshold are kept. Loss = mean CE over kept pixels (per device).

    The references fix min_kept per GPU, for their GPU's batch (UniMatch: 200k for 2 images; DSSN's R101
    logs: 100k for 1). With `min_kept_images` (that batch) a device batch of B images keeps at least
    min_kept·B/min_kept_images pixels, the same share of its pixels whether a global batch runs on 1 GPU
    or 8; without it min_kept is a fixed count per device.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 200_000, ignore_index: int = IGNORE_INDEX,
                 min_kept_images: int | None = None):
        super().__init__()
        self.thresh = thresh
        self.min_kept = int(min_kept)
        self.min_kept_images = None if min_kept_images is None else int(min_kept_images)
        self.ignore_index = ignore_index

    def kept_at_least(self, images: int) -> int:
        """min_kept for a batch of `images` images."""
        if self.min_kept_images is None:
            return self.min_kept
        return round(self.min_kept * images / self.min_kept_images)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none").flatten()
        valid = target.flatten() != self.ignore_index
        num_valid = valid.sum()
        # p_gt = exp(-CE); ignored pixels get +inf so they are never among the smallest.
        p_gt = torch.where(valid, torch.exp(-pixel_loss.detach().float()), torch.full_like(pixel_loss, float("inf"),
                                                                                          dtype=torch.float))
        min_kept = self.kept_at_least(logits.shape[0])
        k = min(min_kept, p_gt.numel())
        kth = torch.kthvalue(p_gt, k).values if k > 0 else p_gt.new_tensor(self.thresh)
        threshold = torch.maximum(kth, p_gt.new_tensor(self.thresh))
        kept = valid & ((p_gt <= threshold) | (num_valid < min_kept))
        return (pixel_loss * kept).sum() / kept.sum().clamp_min(1)


def build_criterion(cfg: DictConfig) -> nn.Module:
    if cfg.name == "ce":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if cfg.name == "ohem":
        return OhemCrossEntropy(thresh=cfg.thresh, min_kept=cfg.min_kept, min_kept_images=cfg.get("min_kept_images"))
    raise UserError(f"criterion.name must be 'ce' or 'ohem', got {cfg.name!r}")


def masked_cross_entropy(logits: torch.Tensor, label: torch.Tensor, selected: torch.Tensor, ignore: torch.Tensor,
                         normalize: str = "valid") -> torch.Tensor:
    """Σ CE(logits, label) · selected · [not padding] / N, per-pixel CE on (B, K, H, W) logits.

    normalize="valid": N = #(non-padded pixels), UniMatch's, DAW's and DSSN's normalisation (a batch with
    few selected pixels contributes a small loss); "selected": N = #(selected non-padded pixels), the mean
    over the selected pixels (U2PL, DDFP)."""
    per_pixel = F.cross_entropy(logits.float(), label, reduction="none")
    valid = ignore != IGNORE_INDEX
    kept = selected & valid
    count = {"valid": valid, "selected": kept}[normalize].sum().clamp_min(1)
    return (per_pixel * kept).sum() / count


def selected_share(selected: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Share of the non-padded pixels that are selected (logged as the mask ratio)."""
    valid = ignore != IGNORE_INDEX
    return (selected & valid).sum() / valid.sum().clamp_min(1)


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Each pixel's class vector minus its mean, divided by its unbiased standard deviation (torch.std)."""
    logits = logits.float()
    return (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True)


def standardized_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MSE between per-pixel standardised logits, averaged over B·K·H·W, gradient into both: DSSN's
    "contrastive" term. Equals 2(K−1)/K · (1 − Pearson r) averaged over pixels."""
    return F.mse_loss(standardize(a), standardize(b))


CCE_FLOOR = math.log(1e-5)  # the release's log(p + 1e-5): the log-probability of a class absent from the image


def class_aware_log_probs(logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the classes present in each image (Learning-Pseudo-Label's CCE):
    log p_c = f_c − log Σ_{k present} exp f_k for present classes, computed stably (the max of the present
    logits subtracted); an absent class gets log(1e-5), the release's floor, so that a target outside the
    image's classes costs a bounded 11.5 instead of infinity. The release computes
    log(exp(f_c) / (Σ_k y_k exp(f_k) + 1e-5) + 1e-5) without that subtraction: at ordinary logit scales it
    differs from this by up to ~0.1 nats, and it caps every pixel's loss near 11.5.
    logits (B, K, H, W); tags (B, K) bool."""
    present = tags.bool()[:, :, None, None]
    masked = logits.float().masked_fill(~present, float("-inf"))
    log_probs = masked - torch.logsumexp(masked, dim=1, keepdim=True)
    return torch.where(present, log_probs, torch.full_like(log_probs, CCE_FLOOR))


def class_aware_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tags: torch.Tensor,
                              reduction: str = "mean") -> torch.Tensor:
    """NLL of the class-aware log-softmax, ignore 255: the mean over non-ignored pixels, or per pixel
    (reduction="none", 0 at ignored pixels)."""
    return class_aware_nll(class_aware_log_probs(logits, tags), target, reduction)


def class_aware_nll(log_probs: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """`class_aware_cross_entropy` from log-probabilities already computed by `class_aware_log_probs`."""
    return F.nll_loss(log_probs, target, ignore_index=IGNORE_INDEX, reduction=reduction)


def tag_classification_loss(logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of the globally max-pooled logits against the image tags, foreground
    classes only (class 0, background, left out), as the release's L_cls."""
    pooled = logits.float().amax(dim=(2, 3))
    return F.multilabel_soft_margin_loss(pooled[:, 1:], tags[:, 1:].float())
