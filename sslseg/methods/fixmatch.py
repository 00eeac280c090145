"""FixMatch for segmentation, as in UniMatch's `fixmatch.py`, on the weak-to-strong step (weak_to_strong.py).

1. Partners' pseudo-labels (student in eval mode, no grad) and CutMix of the strong view.
2. One pass on [labeled ‖ weak]; one pass on the CutMixed strong view.
3. Pseudo-labels of the weak view, mixed inside the box with the partners'.
4. loss = (L_x + L_s) / 2, L_s masked by a fixed confidence threshold τ (method.conf_thresh)
   and normalised by the non-padded pixels.

Differences from the released code: the partner batch holds other images (the release zips the unlabeled loader
with itself, so each image is mixed with another crop of itself, see unimatch.py); `method.mix_source=batch` rolls
the current batch instead and drops the partner pass.
"""

from __future__ import annotations

from sslseg.methods.losses import masked_cross_entropy, selected_share
from sslseg.methods.weak_to_strong import WeakToStrong


class FixMatch(WeakToStrong):
    strong_view_count = 1

    def unsupervised_loss(self, loss_x, logits, targets):
        target = targets.strong(0)
        loss_s = masked_cross_entropy(logits.strong[0], target.label, self.select(target), target.ignore)
        mask_ratio = selected_share(self.select(targets.weak), targets.weak.ignore)
        return (loss_x + loss_s) / 2, {"loss_s": loss_s, "mask_ratio": mask_ratio}
