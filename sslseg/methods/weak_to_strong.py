"""The weak-to-strong machinery of FixMatch, UniMatch and DAW (specs §3).

Per step: pseudo-labels come from a weak view, strong views (colour jitter, grayscale, blur, and a
CutMix box pasted from a partner image) are trained to match them where confident. The partner
images and their pseudo-labels come, per `method.mix_source`, from:
  loader  a second unlabeled batch (other images, see SemiSegDataModule), predicted by the network
          in eval mode without gradients: the reference algorithm, one extra forward pass;
  batch   the current unlabeled batch rolled by one, reusing this step's weak predictions
          (UniMatch-V2 style): no extra forward pass and no extra data loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslseg.methods.base import SemiSegModule
from sslseg.methods.components import confidence, cutmix


@dataclass
class Partners:
    """CutMix partners of one unlabeled batch: strong views, padding mask, and (once known) the
    softmax of their weak view."""

    strong1: torch.Tensor
    strong2: torch.Tensor
    ignore: torch.Tensor
    probs: torch.Tensor | None = None


@dataclass
class Targets:
    """Per-pixel pseudo-label, its confidence and the padding mask."""

    label: torch.Tensor
    conf: torch.Tensor
    ignore: torch.Tensor

    def mixed(self, partner: Targets, box: torch.Tensor) -> Targets:
        """The targets of a CutMixed image: the partner's inside the box."""
        return Targets(cutmix(self.label, partner.label, box), cutmix(self.conf, partner.conf, box),
                       cutmix(self.ignore, partner.ignore, box))


class WeakToStrong(SemiSegModule):
    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        self.mix_source = self.cfg.method.get("mix_source", "loader")
        if self.mix_source not in ("loader", "batch"):
            raise ValueError(f"method.mix_source must be 'loader' or 'batch', got {self.mix_source!r}")

    def threshold(self) -> float | torch.Tensor:
        """Confidence threshold τ of the unsupervised losses: fixed per dataset (DAW estimates it)."""
        return float(self.cfg.method.conf_thresh)

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        if method_cfg.get("mix_source", "loader") == "batch":
            return ("labeled", "unlabeled")
        return ("labeled", "unlabeled", "mix")

    def partners(self, batch: dict) -> Partners:
        """CutMix partners; with the loader source their weak view is predicted here (eval mode)."""
        if self.mix_source == "batch":
            u = batch["unlabeled"]
            return Partners(u["strong1"].roll(1, 0), u["strong2"].roll(1, 0), u["ignore"].roll(1, 0))
        mix = batch["mix"]
        return Partners(mix["strong1"], mix["strong2"], mix["ignore"], self.predict_partner(mix["weak"]))

    @torch.no_grad()
    def predict_partner(self, weak: torch.Tensor) -> torch.Tensor:
        """Softmax of the partners' weak view from the network in eval mode (BN running
        statistics, no dropout), as the reference."""
        self.model.eval()
        logits = self.model(self.normalize(weak)).logits
        self.model.train()
        return logits.float().softmax(1)

    def complete_partners(self, partners: Partners, probs_weak: torch.Tensor) -> None:
        """With the batch source, partner probabilities are this step's weak ones, rolled."""
        if partners.probs is None:
            partners.probs = probs_weak.roll(1, 0)

    @staticmethod
    def targets(probs: torch.Tensor, ignore: torch.Tensor) -> Targets:
        conf, label = confidence(probs)
        return Targets(label, conf, ignore)
