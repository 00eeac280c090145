"""DSSN: Dual-level Siamese Structure Network (ACM MM'23, kunzhan/DSSN), on the weak-to-strong
machinery.

1. The teacher labels the partners' weak view; CutMix of both strong views.
2. Student: one pass on [labeled ‖ weak] decoded clean and with two feature-perturbed copies (each its
   own Dropout2d(0.5) masks on c1 and c4), one pass on [strong1 ‖ strong2].
3. Pseudo-labels: the teacher's on the weak view, the partners' inside each box, for the strong views;
   the student's own weak view for its two perturbed views.
4. Pixel selection, class-aware (Pascal): per image and class, the pixels above 0.96 × that class's
   best confidence in the image, for the classes whose best exceeds 0.92 (computed on the mixed
   teacher targets for the strong views); or a fixed τ (Cityscapes: 0, every pixel).
5. loss = (L_x + 0.25 (L_s1 + L_s2 + L_fp1 + L_fp2) + 0.01 (L_mse_img + L_mse_feat)) / 2, where L_s and
   L_fp are masked cross-entropies normalised by the non-padded pixels, L_mse_img the MSE between the
   per-pixel standardised logits of the two strong views and L_mse_feat that of the two perturbed views
   (the paper's "pixel-wise contrastive" terms: no negatives, every pixel). L_s1 and L_s2 are dropped
   while the teacher is a copy of the student (the very first step; the 5 warm-up epochs on Cityscapes).
6. The teacher follows the student: EMA 0.996 over parameters and BN buffers, a copy at the first step
   (and through the warm-up). Student and teacher are both validated; the better one counts.

Differences from the released code (and what sslseg does):
  * Augmentations are drawn afresh every epoch; the release (torch 1.8) reseeds NumPy in each loader worker alike
    every epoch, so its NumPy-driven draws repeat.
  * CutMix partners are other images. The release zips one loader with itself, so the "mix" batch is
    the same images under another crop, as in UniMatch.
  * Teacher BN mode: the release never sets the teacher's mode, so it runs in train mode (batch
    statistics, and its running statistics move) during epoch 0, and in eval mode from the first
    evaluation on. sslseg reproduces that by default (method.teacher.train_mode_epochs: 1); 0 gives a
    teacher in eval mode throughout.
  * The teacher starts as a copy of the student (the release builds it with its own random head and
    copies at the first step; both give teacher = student after step 0, and L_s is dropped there).
    Integer BN counters follow the student instead of being averaged.
  * Unused release config keys: `conf_thresh` and `beta` on Pascal (class-aware selection and a
    hard-coded 0.996 replace them).
  * The Pascal release applies 1–3 extra photometric ops per strong view: here
    data.strong_aug.extra_ops (the dssn_pascal recipes set it).
"""

from __future__ import annotations

import torch

from sslseg.errors import UserError
from sslseg.methods.losses import masked_cross_entropy, selected_share, standardized_mse
from sslseg.methods.selection import above_threshold, class_aware
from sslseg.methods.weak_to_strong import Targets, WeakToStrong

SELECTIONS = ("class_aware", "threshold")


class DSSN(WeakToStrong):
    """The weak-to-strong step with the teacher as labeller, two feature perturbations, class-aware selection and
    the standardised-MSE terms (`unsupervised_loss`)."""

    labeller = "teacher"
    feature_perturbations = 2

    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        m = self.cfg.method
        if m.selection not in SELECTIONS:
            raise UserError(f"method.selection must be one of {list(SELECTIONS)}, got {m.selection!r}")
        if m.selection == "class_aware" and m.class_aware.ratio * m.class_aware.min_confidence <= 0.5:
            raise UserError("method.class_aware: ratio x min_confidence must exceed 0.5 (one class per pixel)")

    def select(self, targets: Targets) -> torch.Tensor:
        m = self.cfg.method
        if m.selection == "threshold":
            return above_threshold(targets.conf, float(m.conf_thresh))
        return class_aware(targets.label, targets.conf, self.num_classes, m.class_aware.ratio,
                           m.class_aware.min_confidence)

    def unsupervised_loss(self, loss_x, logits, targets):
        """3-5. The strong views against the teacher's targets (the partners' inside each box), the perturbed views
        against the student's own weak view, and the standardised MSE within each pair."""
        student = Targets.of(logits.probs(logits.weak), targets.weak.ignore)
        selected = self.select(student)
        (pred_s1, pred_s2), (pred_fp1, pred_fp2) = logits.strong, logits.perturbed
        target1, target2 = targets.strong(0), targets.strong(1)
        terms = {
            "s1": masked_cross_entropy(pred_s1, target1.label, self.select(target1), target1.ignore),
            "s2": masked_cross_entropy(pred_s2, target2.label, self.select(target2), target2.ignore),
            "fp1": masked_cross_entropy(pred_fp1, student.label, selected, student.ignore),
            "fp2": masked_cross_entropy(pred_fp2, student.label, selected, student.ignore),
            "mse_img": standardized_mse(pred_s1, pred_s2),
            "mse_feat": standardized_mse(pred_fp1, pred_fp2),
        }
        w = self.cfg.method.loss_weights
        strong_on = 0.0 if self.teacher.copying(self.train_steps, self.current_epoch) else 1.0
        loss = (w.x * loss_x + strong_on * (w.s1 * terms["s1"] + w.s2 * terms["s2"])
                + w.fp * (terms["fp1"] + terms["fp2"]) + w.mse * (terms["mse_img"] + terms["mse_feat"])) / 2
        return loss, {f"loss_{name}": value for name, value in terms.items()} | {
            "mask_ratio": selected_share(selected, student.ignore)}
