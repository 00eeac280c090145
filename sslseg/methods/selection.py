"""Pixel selection: which pseudo-labelled pixels an unsupervised loss keeps.

  above_threshold  conf ≥ τ, a fixed τ (FixMatch, UniMatch, DSSN on Cityscapes) or DAW's jump τ
  JumpThreshold    DAW's τ: where the Gaussians fitted to the labeled pixels' correct and wrong
                   confidences intersect
  class_aware      DSSN's per-image, per-class relative threshold

Each returns (or is used to build) a boolean mask of the pixels kept, (B, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.methods.components import confidence


def above_threshold(conf: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    return conf >= threshold


def class_aware(label: torch.Tensor, conf: torch.Tensor, num_classes: int, ratio: float = 0.96,
                min_confidence: float = 0.92) -> torch.Tensor:
    """DSSN's class-aware selection (`get_adaptive_binary_mask`): per image b and class c,
    M[b, c] = the highest probability of class c in the image; keep the pixels whose probability of c
    exceeds ratio·M[b, c], for the classes with M[b, c] > min_confidence (strict, as released).

    Since ratio·min_confidence > 0.5, only a pixel's argmax class can pass, so the selection needs only
    the pseudo-label and its confidence: M[b, c] is the top confidence among the pixels labelled c (for
    M > 0.5 the pixel holding it is labelled c; below, the class is dropped either way). The maximum runs
    over every pixel of the image, padding included, as the reference."""
    if ratio * min_confidence <= 0.5:
        raise ValueError("class_aware needs ratio·min_confidence > 0.5 (one class per pixel)")
    flat_label, flat_conf = label.flatten(1), conf.flatten(1)
    best = flat_conf.new_zeros(label.shape[0], num_classes).scatter_reduce_(1, flat_label, flat_conf, "amax")
    best_of_label = best.gather(1, flat_label).view_as(conf)
    return (best_of_label > min_confidence) & (conf > ratio * best_of_label)


def gaussian_intersection(mu_pos, sigma_pos, mu_neg, sigma_neg, alpha: float = 1.0):
    """The root (−B + √E) / 2A of A x² + B x + C = 0 where N(μ⁺, σ⁺²) and N(μ⁻, σ⁻²) intersect
    (α scales the negative density). Returns (root, has_root); has_root is False when E ≤ 0.
    Tensor ops only, so that the training step never waits on the GPU."""
    mu_pos, sigma_pos, mu_neg, sigma_neg = (torch.as_tensor(v, dtype=torch.float64)
                                            for v in (mu_pos, sigma_pos, mu_neg, sigma_neg))
    var_pos, var_neg = sigma_pos**2, sigma_neg**2
    a = var_pos - var_neg
    b = 2 * (mu_pos * var_neg - mu_neg * var_pos)
    c = (mu_neg * sigma_pos) ** 2 - (mu_pos * sigma_neg) ** 2 + 2 * var_pos * var_neg * torch.log(
        sigma_neg / (alpha * sigma_pos) + 1e-8)
    e = b * b - 4 * a * c
    linear = a.abs() < 1e-12  # equal variances: the equation is linear, its root is −C/B
    quadratic_root = (-b + e.clamp_min(0).sqrt()) / (2 * a).where(~linear, torch.ones_like(a))
    linear_root = -c / b.where(b.abs() > 1e-12, torch.ones_like(b))
    root = torch.where(linear, linear_root, quadratic_root)
    has_root = torch.where(linear, b.abs() > 1e-12, e > 0)
    return root, has_root


class JumpThreshold(nn.Module):
    """The distribution-aware threshold τ of DAW. State lives in buffers."""

    def __init__(self, num_classes: int, momentum: float = 0.99, alpha: float = 1.0, min_samples: int = 10,
                 init_tau: float = 0.95, sigma_pos_scale: float = 1.0):
        super().__init__()
        self.num_classes, self.momentum, self.alpha = num_classes, momentum, alpha
        self.min_samples, self.sigma_pos_scale = min_samples, sigma_pos_scale
        for name, value in (("mu_pos", 1 / num_classes), ("mu_neg", 1 / num_classes), ("var_pos", 0.5),
                            ("var_neg", 0.5), ("tau", init_tau), ("tau_safe", init_tau)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float64))

    @property
    def sigma_pos(self) -> torch.Tensor:
        return self.var_pos.sqrt() * self.sigma_pos_scale

    @property
    def sigma_neg(self) -> torch.Tensor:
        return self.var_neg.sqrt()

    def _ema_moments(self, conf: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, var: torch.Tensor,
                     reduce_mean) -> None:
        """EMA update of (μ, σ²) from the masked samples: the batch mean is averaged over ranks, the
        variance is taken around that global mean, then averaged too. A rank with fewer than
        min_samples samples contributes the current EMA values instead."""
        conf, mask = conf.double(), mask.double()
        n = mask.sum()
        enough = n >= self.min_samples
        batch_mu = reduce_mean(torch.where(enough, (conf * mask).sum() / n.clamp_min(1), mu))
        batch_var = torch.where(enough, ((conf - batch_mu) ** 2 * mask).sum() / (n - 1 + 1e-8), var)
        batch_var = reduce_mean(batch_var)
        mu.mul_(self.momentum).add_((1 - self.momentum) * batch_mu)
        var.mul_(self.momentum).add_((1 - self.momentum) * batch_var)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor, reduce_mean=lambda t: t) -> None:
        """One EMA step of both fits from labeled-pixel probabilities (B, K, H, W), then τ."""
        conf, pred = confidence(probs)
        valid = target != IGNORE_INDEX
        correct = pred == target
        self._ema_moments(conf, valid & correct, self.mu_pos, self.var_pos, reduce_mean)
        self._ema_moments(conf, valid & ~correct, self.mu_neg, self.var_neg, reduce_mean)
        root, has_root = gaussian_intersection(self.mu_pos, self.sigma_pos, self.mu_neg, self.sigma_neg, self.alpha)
        low = 1 / self.num_classes
        self.tau.copy_(torch.where(has_root, root.clamp(low, 1.0), self.tau))
        self.tau_safe.copy_(torch.where(has_root, (self.mu_pos - 3 * self.sigma_pos).clamp(low, 1.0), self.tau_safe))
