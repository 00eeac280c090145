"""DAW: distribution-aware weighting (NeurIPS'23, yuisuen/DAW), on top of UniMatch (specs §3.3).

UniMatch's step, with three changes:
  a. The confidence threshold is the jump point of a 0/1 weighting function: the intersection of
     two Gaussians fitted (EMA 0.99, statistics averaged over DDP ranks) to the max-probabilities
     of correctly and wrongly predicted *labeled* pixels, updated every step from the labeled batch.
  b. Unlabeled probabilities are distribution-aligned per class: P ⊙ (labeled mean confidence of
     class c / unlabeled mean confidence of class c), renormalised; pseudo-labels and confidences
     come from the aligned probabilities.
  c. An EMA copy of the network (decay 0.999) is kept; pseudo-labels come from the online network.
     Both are validated every epoch and the better one counts (the released code writes either to
     the same best.pth when it improves); method.evaluate=ema|online picks one.

Differences from the released code:
  * It crashes as released (the labeled loader lacks `label_ignore_mask`); the labeled mask itself
    serves (255 = ignore), as the fix in the spec says.
  * σ⁺ = √(EMA variance), the final released code (d1d4644). The first upload halved σ⁺; the
    author removed that a day later and the paper describes plain Gaussian fits, so the halving is
    kept only as an option (method.sigma_pos_scale=0.5).
  * The alignment statistics are summed across DDP ranks (the released code keeps them per GPU).
  * Equal variances (e.g. at initialisation) make the quadratic degenerate; its linear root is used
    instead of dividing by 1e-10.
  * The statistics are module buffers, so they are checkpointed and resume exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.methods.components import ModelEMA, confidence
from sslseg.methods.unimatch import UniMatch
from sslseg.methods.weak_to_strong import Targets


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
    """The distribution-aware threshold τ of DAW (specs §3.3 step 9). State lives in buffers."""

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


class DistributionAlignment(nn.Module):
    """Per-class alignment of unlabeled to labeled confidence (specs §3.3 steps 5-6)."""

    def __init__(self, num_classes: int, momentum: float = 0.99):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("labeled", torch.full((num_classes,), 1 / num_classes))
        self.register_buffer("unlabeled", torch.full((num_classes,), 1 / num_classes))

    @torch.no_grad()
    def _update(self, stat: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor, reduce_sum) -> None:
        """stat[c] ← m·stat[c] + (1−m)·mean max-prob of the valid pixels predicted as c (for the
        classes predicted at least once in the batch, over all ranks)."""
        conf, pred = confidence(probs)
        weight = valid.float().flatten()
        sums = torch.zeros_like(stat).scatter_add_(0, pred.flatten(), conf.flatten().float() * weight)
        counts = torch.zeros_like(stat).scatter_add_(0, pred.flatten(), weight)
        sums, counts = reduce_sum(sums), reduce_sum(counts)
        mean = sums / counts.clamp_min(1)
        stat.copy_(torch.where(counts > 0, self.momentum * stat + (1 - self.momentum) * mean, stat))

    def update(self, probs_l, valid_l, probs_u, valid_u, reduce_sum=lambda t: t) -> None:
        self._update(self.labeled, probs_l, valid_l, reduce_sum)
        self._update(self.unlabeled, probs_u, valid_u, reduce_sum)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        aligned = probs * (self.labeled / self.unlabeled).view(1, -1, 1, 1)
        return aligned / aligned.sum(1, keepdim=True)


class DAW(UniMatch):
    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        m = self.cfg.method
        self.jump = JumpThreshold(self.num_classes, m.stats_momentum, m.alpha, m.min_samples, m.init_tau,
                                  m.sigma_pos_scale)
        self.align = DistributionAlignment(self.num_classes, m.stats_momentum)
        self.ema = ModelEMA(self.model, m.ema_decay)

    def evaluated_networks(self) -> tuple[str, ...]:
        # The released daw.py validates both and writes whichever improves to the same best.pth.
        return {"both": ("model", "ema"), "ema": ("ema",), "online": ("model",)}[self.cfg.method.evaluate]

    def threshold(self) -> torch.Tensor:
        return self.jump.tau

    def pseudo_targets(self, pred_x, y, probs_w, ignore, partners) -> tuple[Targets, Targets]:
        # Alignment statistics from the unaligned probabilities, then aligned pseudo-labels.
        probs_x = pred_x.detach().float().softmax(1)
        probs_u = torch.cat([probs_w, partners.probs])
        valid_u = torch.cat([ignore, partners.ignore]) != IGNORE_INDEX
        self.align.update(probs_x, y != IGNORE_INDEX, probs_u, valid_u, self._reduce_sum)
        # τ from this labeled batch (the released order: after L_x, before the unlabeled losses).
        self.jump.update(probs_x, y, self._reduce_mean)
        self.log_dict({"train/mu_pos": self.jump.mu_pos.float(), "train/sigma_pos": self.jump.sigma_pos.float(),
                       "train/mu_neg": self.jump.mu_neg.float(), "train/sigma_neg": self.jump.sigma_neg.float(),
                       "train/tau_safe": self.jump.tau_safe.float()})
        return (self.targets(self.align(probs_w), ignore),
                self.targets(self.align(partners.probs), partners.ignore))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update(self.model, self.global_step - 1)

    def _reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._trainer is None else self.trainer.strategy.reduce(t, reduce_op="mean")

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._trainer is None else self.trainer.strategy.reduce(t, reduce_op="sum")
