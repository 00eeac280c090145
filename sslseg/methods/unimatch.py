"""UniMatch (CVPR'23), as the released `unimatch.py`, on the weak-to-strong step (weak_to_strong.py).

1. Partners' pseudo-labels (student in eval mode, no grad); CutMix of both strong views.
2. One pass on [labeled ‖ weak] whose decoder also runs on channel-dropped c1/c4 (the
   feature-perturbation stream, Dropout2d 0.5), one pass on [strong1 ‖ strong2].
3. Pseudo-labels of the weak view; the partners' inside each box.
4. loss = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 (method.loss_weights), each unsupervised
   term masked at τ (0.95 Pascal/COCO, 0 Cityscapes) and normalised by the non-padded pixels.

Differences from the released code: the partner batch holds other images (the reference zips two
loaders with identical samplers and mixes each image with a second view of itself, which its
author calls unintended, UniMatch #51/#85); `method.mix_source=batch` drops the partner pass.
"""

from __future__ import annotations

import torch

from sslseg.methods.losses import masked_cross_entropy, selected_share
from sslseg.methods.weak_to_strong import WeakToStrong


class UniMatch(WeakToStrong):
    feature_perturbations = 1

    def unsupervised_loss(self, loss_x, logits, targets):
        """(w_x L_x + w_s1 L_s1 + w_s2 L_s2 + w_fp L_fp) / 2: each strong view against the weak targets with the
        partner's inside its box, the perturbed view against the weak targets, pixels kept by `select`."""
        weak, (target1, target2) = targets.weak, (targets.strong(0), targets.strong(1))
        selected_weak = self.select(weak)
        loss_s1 = masked_cross_entropy(logits.strong[0], target1.label, self.select(target1), target1.ignore)
        loss_s2 = masked_cross_entropy(logits.strong[1], target2.label, self.select(target2), target2.ignore)
        loss_fp = masked_cross_entropy(logits.perturbed[0], weak.label, selected_weak, weak.ignore)
        w = self.cfg.method.loss_weights
        loss = (w.x * loss_x + w.s1 * loss_s1 + w.s2 * loss_s2 + w.fp * loss_fp) / 2
        tau = torch.as_tensor(self.threshold())
        return loss, {"loss_s1": loss_s1, "loss_s2": loss_s2, "loss_fp": loss_fp, "tau": tau,
                      "mask_ratio": selected_share(selected_weak, weak.ignore)}
