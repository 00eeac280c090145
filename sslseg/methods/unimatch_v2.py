"""UniMatch V2 (Yang, Zhao, Zhao, "UniMatch V2: Pushing the Limit of Semi-Supervised Semantic Segmentation",
arXiv 2410.10777, 2024), as the release's `unimatch_v2.py` (LiheYoung/UniMatch-V2 f6afb4d), on the weak-to-strong
step (weak_to_strong.py).

Per step, for a labeled batch (x, y) and an unlabeled batch (weak view, strong views s1 and s2, CutMix boxes):
1. The EMA teacher, in eval mode without gradients, labels the weak view: pseudo-label and confidence per pixel.
2. CutMix: each strong view gets the same view of its partner inside its box; the partner of image i is image
   B - 1 - i (`method.mix_source: flip`, the release's `flip(0)`), and so are the pasted pseudo-labels,
   confidences and padding.
3. The student: one pass on x alone; one pass on [s1 ‖ s2] whose encoder features (the four the DPT head reads)
   get complementary channel dropout (ComplementaryChannelDropout: a channel doubled in one view is zeroed in the
   other; `method.kept_pairs` of the pairs undropped). No student pass on the weak view.
4. loss = (w_x L_x + w_s (L_s1 + L_s2) / 2) / 2 (`method.loss_weights`, 1 and 1), L_s over the pixels whose
   confidence is ≥ τ = `method.conf_thresh` (0.95), summed and divided by the non-padded pixels.
5. After the step the teacher follows (the base module, teacher.py, `schedule: ramp`): T ← d·T + (1 − d)·S over
   parameters and floating-point buffers, d = min(1 − 1/(i + 1), 0.996) at step i, a copy at step 0.
Student and teacher are both validated every epoch (`method.evaluate: both`).

Deliberate differences from the release:
  * The number a run reports is the best validation of either network; UniMatch V2's README quotes the EMA
    teacher's best (its logs print both; e.g. Pascal 92 DINOv2-B: EMA 86.29, student 86.41, README 86.3):
    `method.evaluate=teacher` reports that one.
  * Parameters the release builds and never trains: DINOv2's `mask_token` is frozen and the deepest fusion block's
    skip unit is not built (models/dinov2.py, models/dpt.py). The release's AdamW skips both (no gradient, so no
    update and no weight decay) and its DDP needs find_unused_parameters=True; here every trainable parameter gets
    a gradient, and the output is the same.
  * The teacher's integer buffers follow the student instead of being averaged (DINOv2 + DPT have none).
  * The global batch is kept on any device count (the release's lr is for 4 GPUs; its README asks to rescale it).
  * As every sslseg method: sslseg's data pipeline (the same augmentations, drawn per item from seeded generators),
    crops whose sides are multiples of the patch size (the release's configs use 518 and 798 too).
"""

from __future__ import annotations

import torch

from sslseg.methods.losses import masked_cross_entropy, selected_share
from sslseg.methods.weak_to_strong import StudentLogits, WeakToStrong
from sslseg.models.perturbations import ComplementaryChannelDropout


class UniMatchV2(WeakToStrong):
    """The weak-to-strong step with the EMA teacher as labeller, the batch reversed as CutMix partner, the labeled
    pass alone, the strong pass under complementary dropout (`student_logits`) and V2's loss
    (`unsupervised_loss`)."""

    labeller = "teacher"
    feature_perturbations = 0  # the strong views' dropout acts on their own pass (batch_perturbation), not a copy
    strong_view_count = 2

    def student_logits(self, x: torch.Tensor, weak: torch.Tensor, strong: tuple[torch.Tensor, ...]) -> StudentLogits:
        """3. The labeled images alone; [s1 ‖ s2] in one pass, rows i and i + B of its encoder features masked
        complementarily. The weak view is the teacher's only (`weak` is unused)."""
        labeled = self.model(self.normalize(x)).logits
        dropout = ComplementaryChannelDropout(float(self.cfg.method.kept_pairs))
        both = self.model(self.normalize(torch.cat(strong)), batch_perturbation=dropout).logits
        return StudentLogits(labeled, None, (), both.chunk(len(strong)))

    def unsupervised_loss(self, loss_x, logits, targets):
        """4. (w_x L_x + w_s (L_s1 + L_s2)/2) / 2: each strong view against the teacher's targets with the
        partner's inside its box, masked at τ, normalised by the non-padded pixels."""
        views = [targets.strong(view) for view in range(len(logits.strong))]
        terms = [masked_cross_entropy(pred, target.label, self.select(target), target.ignore)
                 for pred, target in zip(logits.strong, views)]
        loss_s = sum(terms) / len(terms)
        w = self.cfg.method.loss_weights
        loss = (w.x * loss_x + w.s * loss_s) / 2
        weak = targets.weak
        return loss, {"loss_s": loss_s, "loss_s1": terms[0], "loss_s2": terms[1],
                      "tau": torch.as_tensor(self.threshold()),
                      "mask_ratio": selected_share(self.select(weak), weak.ignore)}
