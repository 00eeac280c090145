"""DAW: distribution-aware weighting (NeurIPS'23, yuisuen/DAW), on top of UniMatch.

1. As UniMatch: partners' pseudo-labels (student, eval mode), CutMix of both strong views, a pass on
   [labeled ‖ weak] with the feature-perturbation stream, a pass on [strong1 ‖ strong2].
2. Distribution alignment: per-class mean confidences of the labeled and the unlabeled (weak ∪
   partner) pixels, EMA 0.99, summed over DDP ranks, from the unaligned probabilities; the unlabeled
   probabilities are rescaled per class by labeled/unlabeled and renormalised, and pseudo-labels and
   confidences come from the aligned probabilities.
3. The threshold τ is the jump point of a 0/1 weighting function: where the Gaussians fitted (EMA
   0.99, averaged over ranks) to the max-probabilities of the correctly and the wrongly predicted
   *labeled* pixels of this batch intersect (`selection.JumpThreshold`).
4. UniMatch's loss at τ.
5. The teacher, an EMA of the student (decay min(1 − 1/(i+1), 0.999)), is only evaluated; pseudo-labels
   come from the student. Both are validated every epoch and the better one counts (the released code
   writes either to the same best.pth when it improves); method.evaluate=teacher|student picks one.

Differences from the released code:
  * It crashes as released (the labeled loader lacks `label_ignore_mask`); the labeled mask itself
    serves (255 = ignore): the evident intent of the released line.
  * σ⁺ = √(EMA variance), the final released code (d1d4644). The first upload halved σ⁺; the
    author removed that a day later and the paper describes plain Gaussian fits, so the halving is
    kept only as an option (method.sigma_pos_scale=0.5).
  * The alignment statistics are summed across DDP ranks (the released code keeps them per GPU).
  * Equal variances (e.g. at initialisation) make the quadratic degenerate; its linear root is used
    instead of dividing by 1e-10.
  * The statistics are module buffers, so they are checkpointed and resume exactly.
  * The partner batch holds other images (see unimatch.py).
  * The teacher's integer BN counters follow the student instead of being averaged (teacher.py).
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.methods.components import confidence
from sslseg.methods.selection import JumpThreshold
from sslseg.methods.unimatch import UniMatch
from sslseg.methods.weak_to_strong import Targets


class DistributionAlignment(nn.Module):
    """Per-class alignment of unlabeled to labeled confidence."""

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
    """UniMatch's step with its pseudo-targets aligned (`pseudo_targets`) and its threshold the jump point
    (`update_selection`, `threshold`)."""

    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        m = self.cfg.method
        self.jump = JumpThreshold(self.num_classes, m.stats_momentum, m.alpha, m.min_samples, m.init_tau,
                                  m.sigma_pos_scale)
        self.align = DistributionAlignment(self.num_classes, m.stats_momentum)

    def threshold(self) -> torch.Tensor:
        return self.jump.tau

    def pseudo_targets(self, logits, y, probs_w, ignore, partners):
        """2. Alignment statistics from the unaligned probabilities, then the aligned pseudo-labels."""
        valid_u = torch.cat([ignore, partners.ignore]) != IGNORE_INDEX
        self.align.update(logits.probs(logits.labeled), y != IGNORE_INDEX, torch.cat([probs_w, partners.probs]),
                          valid_u, self.all_reduce)
        return Targets.of(self.align(probs_w), ignore), Targets.of(self.align(partners.probs), partners.ignore)

    def update_selection(self, logits, y) -> None:
        """3. τ from this labeled batch (the released order: after L_x, before the unlabeled losses)."""
        self.jump.update(logits.probs(logits.labeled), y, lambda t: self.all_reduce(t, "mean"))
        self.log_dict({"train/mu_pos": self.jump.mu_pos.float(), "train/sigma_pos": self.jump.sigma_pos.float(),
                       "train/mu_neg": self.jump.mu_neg.float(), "train/sigma_neg": self.jump.sigma_neg.float(),
                       "train/tau_safe": self.jump.tau_safe.float()})
