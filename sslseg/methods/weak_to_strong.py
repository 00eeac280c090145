"""The weak-to-strong machinery of FixMatch, UniMatch, DAW and DSSN.

Per step: pseudo-labels come from a weak view, strong views (colour jitter, grayscale, blur, and a
CutMix box pasted from a partner image) are trained to match them where selected. The partner
images and their pseudo-labels come, per `method.mix_source`, from:
  loader  a second unlabeled batch (other images, see SemiSegDataModule), labelled by the method's
          labelling network (the student in eval mode without gradients for UniMatch, the teacher
          for DSSN): the reference algorithm, one extra forward pass;
  batch   the current unlabeled batch rolled by one, reusing this step's weak predictions
          (UniMatch-V2 style): no extra forward pass and no extra data loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.methods.components import confidence, cutmix
from sslseg.methods.selection import above_threshold

MIX_SOURCES = ("loader", "batch")


@dataclass
class Partners:
    """CutMix partners of one unlabeled batch: strong views, padding mask, and (once known) the
    class probabilities of their weak view."""

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
        if self.mix_source not in MIX_SOURCES:
            raise UserError(f"method.mix_source must be one of {list(MIX_SOURCES)}, got {self.mix_source!r}")

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        if method_cfg.get("mix_source", "loader") == "batch":
            return ("labeled", "unlabeled")
        return ("labeled", "unlabeled", "mix")

    # -- pixel selection ---------------------------------------------------------------------------
    def threshold(self) -> float | torch.Tensor:
        """Confidence threshold τ of the unsupervised losses: fixed per dataset (DAW estimates it)."""
        return float(self.cfg.method.conf_thresh)

    def select(self, targets: Targets) -> torch.Tensor:
        """Pixels whose pseudo-label an unsupervised loss keeps: conf ≥ τ (DSSN: class-aware)."""
        return above_threshold(targets.conf, self.threshold())

    # -- views, passes, pseudo-labels --------------------------------------------------------------
    def partners(self, batch: dict, label: Callable[[torch.Tensor], torch.Tensor]) -> Partners:
        """CutMix partners. With the loader source `label` gives their probabilities now, before the
        student's passes (as the reference); with the batch source `complete_partners` fills them in."""
        if self.mix_source == "batch":
            u = batch["unlabeled"]
            return Partners(u["strong1"].roll(1, 0), u["strong2"].roll(1, 0), u["ignore"].roll(1, 0))
        mix = batch["mix"]
        return Partners(mix["strong1"], mix["strong2"], mix["ignore"], label(mix["weak"]))

    @staticmethod
    def complete_partners(partners: Partners, probs_weak: torch.Tensor) -> None:
        """With the batch source, the partners' probabilities are this step's weak ones, rolled."""
        if partners.probs is None:
            partners.probs = probs_weak.roll(1, 0)

    @staticmethod
    def strong_views(u: dict, partners: Partners) -> tuple[torch.Tensor, torch.Tensor]:
        """Both strong views, each with its partner's strong view pasted inside its own box."""
        return cutmix(u["strong1"], partners.strong1, u["box1"]), cutmix(u["strong2"], partners.strong2, u["box2"])

    def forward_weak(self, x: torch.Tensor, weak: torch.Tensor, perturb: int = 0):
        """One student pass on [labeled ‖ weak]: (pred_x, pred_w, the weak view's logits from each of
        `perturb` feature-perturbed copies (channel dropout at `method.feature_dropout`), decoded in the same
        decoder batch)."""
        from sslseg.models.perturbations import FeatureDropout

        copies = []
        if perturb:  # FixMatch asks for none and has no method.feature_dropout
            copies = [FeatureDropout(float(self.cfg.method.feature_dropout))] * perturb
        out = self.model(self.normalize(torch.cat([x, weak])), perturbed_copies=copies)
        pred_x, pred_w = out.logits.split([x.shape[0], weak.shape[0]])
        return pred_x, pred_w, tuple(logits[x.shape[0]:] for logits in out.logits_fp)

    def forward_strong(self, strong1: torch.Tensor, strong2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One student pass on [strong1 ‖ strong2] (their own BN batch, as the reference)."""
        return self.model(self.normalize(torch.cat([strong1, strong2]))).logits.chunk(2)

    @torch.no_grad()
    def predict_partner(self, weak: torch.Tensor) -> torch.Tensor:
        """Softmax of the partners' weak view from the student in eval mode (BN running statistics,
        no dropout), as the reference."""
        self.model.eval()
        logits = self.model(self.normalize(weak)).logits
        self.model.train()
        return logits.float().softmax(1)

    @staticmethod
    def targets(probs: torch.Tensor, ignore: torch.Tensor) -> Targets:
        conf, label = confidence(probs)
        return Targets(label, conf, ignore)
