"""The weak-to-strong step of FixMatch, UniMatch, DAW and DSSN, as named hooks.

Per step (`WeakToStrong.training_step`):
  1. the labeller's class probabilities of the CutMix partners' weak view; CutMix of the strong views;
  2. the student on [labeled ‖ weak], decoded clean and from `feature_perturbations` perturbed copies of its
     features, then on the strong views;
  3. the labeller's pseudo-targets of the weak view and of the partners (`pseudo_targets`), and the selection's
     statistics of the labeled batch (`update_selection`);
  4. the method's loss (`unsupervised_loss`), each unsupervised term over the pixels `select` keeps.

The labeller (`labeller`) is the student (its own weak-view logits; the partners in eval mode without gradients) or
the teacher. The partner images and their probabilities come, per `method.mix_source`, from:
  loader  a second unlabeled batch (other images, see SemiSegDataModule), labelled by the labeller: the reference
          algorithm, one extra forward pass;
  batch   the current unlabeled batch rolled by one (image i mixed with image i - 1), reusing this step's weak
          probabilities: no extra forward pass and no extra data loading;
  flip    the current unlabeled batch reversed (`flip(0)`: image i mixed with image B - 1 - i), reusing this step's
          weak probabilities, as UniMatch V2 pairs them (its `img_u_s1.flip(0)`, `mask_u_w.flip(0)`, ...). With an
          odd batch the middle image is its own partner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.methods.components import confidence, cutmix
from sslseg.methods.selection import above_threshold
from sslseg.models.perturbations import FeatureDropout

MIX_SOURCES = ("loader", "batch", "flip")
IN_BATCH = {"batch": lambda t: t.roll(1, 0), "flip": lambda t: t.flip(0)}  # the partner of row i
LABELLERS = ("student", "teacher")


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

    @classmethod
    def of(cls, probs: torch.Tensor, ignore: torch.Tensor) -> Targets:
        conf, label = confidence(probs)
        return cls(label, conf, ignore)

    def mixed(self, partner: Targets, box: torch.Tensor) -> Targets:
        """The targets of a CutMixed image: the partner's inside the box."""
        return Targets(cutmix(self.label, partner.label, box), cutmix(self.conf, partner.conf, box),
                       cutmix(self.ignore, partner.ignore, box))


@dataclass
class StudentLogits:
    """The student's logits of one step."""

    labeled: torch.Tensor
    weak: torch.Tensor | None  # None: no student pass on the weak view (UniMatch V2: the teacher's only)
    perturbed: tuple[torch.Tensor, ...]  # the weak view, decoded from each perturbed copy of the features
    strong: tuple[torch.Tensor, ...]  # the CutMixed strong views

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.detach().float().softmax(1)


@dataclass
class PseudoTargets:
    """What the unsupervised losses compare the student with: the weak view's targets, the partners' (pasted inside
    each strong view's box), and the boxes."""

    weak: Targets
    partner: Targets
    boxes: tuple[torch.Tensor, torch.Tensor]

    def strong(self, view: int) -> Targets:
        """The targets of strong view `view` (0 or 1): the weak view's, the partner's inside its box."""
        return self.weak.mixed(self.partner, self.boxes[view])


class WeakToStrong(SemiSegModule):
    labeller = "student"
    feature_perturbations = 0  # perturbed copies of the weak view's features, decoded with the clean ones
    strong_view_count = 2

    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        self.mix_source = self.cfg.method.get("mix_source", "loader")
        if self.mix_source not in MIX_SOURCES:
            raise UserError(f"method.mix_source must be one of {list(MIX_SOURCES)}, got {self.mix_source!r}")
        if self.labeller == "teacher" and self.teacher is None:
            raise UserError(f"method={self.cfg.method.name} needs a method.teacher section")

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        if method_cfg.get("mix_source", "loader") in IN_BATCH:
            return ("labeled", "unlabeled")
        return ("labeled", "unlabeled", "mix")

    def encoder_passes(self, batch: dict) -> int:
        partner = 1 if self.mix_source == "loader" else 0
        return partner + 2 + (1 if self.labeller == "teacher" else 0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y, u = batch["labeled"]["image"], batch["labeled"]["mask"], batch["unlabeled"]

        # 1. The partners' probabilities; each strong view with its partner's pasted inside its box.
        partners = self.partners(batch)
        boxes = (u["box1"], u["box2"])
        partner_views = (partners.strong1, partners.strong2)
        strong = tuple(cutmix(u[f"strong{i + 1}"], partner_views[i], boxes[i]) for i in range(self.strong_view_count))

        # 2. The student: [labeled ‖ weak], clean and perturbed; then the strong views in one batch.
        logits = self.student_logits(x, u["weak"], strong)

        # 3. Pseudo-targets from the labeller, and the selection's statistics of the labeled batch.
        probs_w = self.label(u["weak"], logits.weak)
        if partners.probs is None:  # an in-batch source: this step's weak probabilities, rolled or flipped
            partners.probs = IN_BATCH[self.mix_source](probs_w)
        weak, partner = self.pseudo_targets(logits, y, probs_w, u["ignore"], partners)
        loss_x = self.criterion_l(logits.labeled, y)
        self.update_selection(logits, y)

        # 4. The method's loss.
        loss, terms = self.unsupervised_loss(loss_x, logits, PseudoTargets(weak, partner, boxes))
        self.log_dict({"train/loss": loss, "train/loss_x": loss_x} | {f"train/{k}": v for k, v in terms.items()})
        return loss

    # -- hooks ----------------------------------------------------------------------------------------
    def label(self, weak: torch.Tensor, student_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The labeller's class probabilities of a weak view (uint8). The student labels with its own logits of this
        step when given, and otherwise in eval mode (BN running statistics, no dropout), as the references."""
        with torch.no_grad():
            if self.labeller == "teacher":
                return self.teacher(self.normalize(weak)).logits.float().softmax(1)
            if student_logits is not None:
                return student_logits.detach().float().softmax(1)
            self.model.eval()
            logits = self.model(self.normalize(weak)).logits
            self.model.train()
            return logits.float().softmax(1)

    def pseudo_targets(self, logits: StudentLogits, y: torch.Tensor, probs_w: torch.Tensor, ignore: torch.Tensor,
                       partners: Partners) -> tuple[Targets, Targets]:
        """The weak view's targets and the partners' (DAW aligns the probabilities first)."""
        return Targets.of(probs_w, ignore), Targets.of(partners.probs, partners.ignore)

    def update_selection(self, logits: StudentLogits, y: torch.Tensor) -> None:
        """The selection's statistics from the labeled batch (DAW's threshold); none by default."""

    def threshold(self) -> float | torch.Tensor:
        """Confidence threshold τ of the unsupervised losses: fixed per dataset (DAW estimates it)."""
        return float(self.cfg.method.conf_thresh)

    def select(self, targets: Targets) -> torch.Tensor:
        """Pixels whose pseudo-label an unsupervised loss keeps: conf ≥ τ (DSSN: class-aware)."""
        return above_threshold(targets.conf, self.threshold())

    def unsupervised_loss(self, loss_x: torch.Tensor, logits: StudentLogits,
                          targets: PseudoTargets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's loss from L_x and the unlabeled logits, and the terms to log (names without `train/`)."""
        raise NotImplementedError

    # -- the step's pieces ------------------------------------------------------------------------------
    def partners(self, batch: dict) -> Partners:
        """CutMix partners. With the loader source they are labelled now, before the student's passes (as the
        references); with an in-batch source (batch, flip) the step fills in this step's weak probabilities."""
        if self.mix_source in IN_BATCH:
            u, partner_of = batch["unlabeled"], IN_BATCH[self.mix_source]
            return Partners(partner_of(u["strong1"]), partner_of(u["strong2"]), partner_of(u["ignore"]))
        mix = batch["mix"]
        return Partners(mix["strong1"], mix["strong2"], mix["ignore"], self.label(mix["weak"]))

    def student_logits(self, x: torch.Tensor, weak: torch.Tensor, strong: tuple[torch.Tensor, ...]) -> StudentLogits:
        """One student pass on [labeled ‖ weak], whose decoder also reads `feature_perturbations` copies of the
        features under channel dropout (`method.feature_dropout`), in the same decoder batch; one pass on the strong
        views (their own BN batch, as the references)."""
        n = self.feature_perturbations
        copies = [FeatureDropout(float(self.cfg.method.feature_dropout))] * n if n else []
        out = self.model(self.normalize(torch.cat([x, weak])), perturbed_copies=copies)
        pred_x, pred_w = out.logits.split([x.shape[0], weak.shape[0]])
        perturbed = tuple(logits[x.shape[0]:] for logits in out.logits_fp)
        pred_strong = self.model(self.normalize(torch.cat(strong))).logits.chunk(len(strong))
        return StudentLogits(pred_x, pred_w, perturbed, pred_strong)
