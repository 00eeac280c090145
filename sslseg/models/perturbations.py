"""Feature perturbations: modules a method passes to the segmentor (`Segmentor.forward`, see segmentor.py).

A feature perturbation takes the list of features the decoder reads (`Segmentor.encode`) and returns a list of the
same shapes. The method decides where it acts: as one of `perturbed_copies` (an extra copy of the features, decoded
beside the clean ones) or as the `batch_perturbation` (the batch's own features, no copy).

FeatureDropout is UniMatch's feature-perturbation stream (Yang et al., "UniMatch", CVPR 2023; DAW and DSSN keep it):
channel dropout (`nn.Dropout2d` semantics) on every feature the decoder reads, each its own masks, active in eval mode
too (the stream is a training signal, not a regulariser that eval mode would switch off).

ComplementaryChannelDropout is UniMatch V2's "complementary dropout" (Yang et al., "UniMatch V2", 2024, Sec. 3.3;
the release's `DPT.forward(comp_drop=True)` in `model/semseg/dpt.py`): the two strong views go through the student
in one batch [strong1 | strong2], and the encoder features of rows i and i + B/2 (the two views of one image) get
complementary channel masks, so that each view keeps the channels the other loses:

- one Binomial(p=0.5) mask per pair and channel, m in {0, 1}, scaled by 2 (inverted dropout): 2m for the first
  view, 2 - 2m for the second;
- int(B/2 x 0.5) pairs, drawn at random, are kept undropped (mask 1 for both; none at a batch of 2);
- one (B/2, C) draw is shared by the four features the head reads and by all their positions (channel dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# What a perturbation is to the segmentor: the decoder's input features in, as many of the same shapes out.
FeaturePerturbation = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]


class FeatureDropout(nn.Module):
    """Channel dropout at rate `p` on each feature it is given, in list order (each draws its own (B, C) mask):
    a channel is kept whole and scaled by 1 / (1 - p), or zeroed. Active in eval mode too."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"feature dropout rate must be in [0, 1], got {p}")
        self.p = p

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # training=True: the module's own train/eval mode does not switch the perturbation off.
        return [F.dropout2d(f, self.p, training=True) for f in features]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ComplementaryChannelDropout(nn.Module):
    """Complementary channel dropout at rate 0.5 (the only rate at which the two masks are both inverted dropout:
    each view keeps a channel with probability 1/2 and scales it by 2)."""

    def __init__(self, kept_fraction: float = 0.5):
        super().__init__()
        if not 0 <= kept_fraction <= 1:
            raise ValueError(f"kept_fraction must be in [0, 1], got {kept_fraction}")
        self.kept_fraction = kept_fraction

    def masks(self, batch: int, channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """(batch, channels): rows i and i + batch/2 complementary (2m and 2 - 2m), kept pairs all ones."""
        if batch % 2:
            raise ValueError(f"complementary dropout pairs rows i and i + B/2 of [strong1 | strong2]: the batch "
                             f"must be even, got {batch}")
        half = batch // 2
        first = torch.bernoulli(torch.full((half, channels), 0.5, device=device)) * 2.0  # Binomial(1, 0.5) x 2
        second = 2.0 - first
        kept = torch.randperm(half, device=device)[: int(half * self.kept_fraction)]
        first[kept], second[kept] = 1.0, 1.0
        return torch.cat([first, second]).to(dtype)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Masks the (B, C, h, w) features with one draw of `masks` shared by all of them."""
        batch, channels = features[0].shape[:2]
        if any(tuple(f.shape[:2]) != (batch, channels) for f in features):
            raise ValueError("complementary dropout shares one channel mask: the features must have equal batch and "
                             f"channel sizes, got {[tuple(f.shape[:2]) for f in features]}")
        mask = self.masks(batch, channels, features[0].device, features[0].dtype)[:, :, None, None]
        return [f * mask for f in features]
