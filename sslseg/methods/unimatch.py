"""UniMatch (CVPR'23), as the released `unimatch.py`.

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

from sslseg.losses import masked_cross_entropy, selected_share
from sslseg.methods.weak_to_strong import Targets, WeakToStrong


class UniMatch(WeakToStrong):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        u = batch["unlabeled"]

        # 1. Partners' pseudo-labels and CutMix of both strong views.
        partners = self.partners(batch, self.predict_partner)
        strong1, strong2 = self.strong_views(u, partners)

        # 2. [labeled ‖ weak] with the feature-perturbation stream; [strong1 ‖ strong2].
        pred_x, pred_w, (pred_fp,) = self.forward_weak(x, u["weak"], perturb=1)
        pred_s1, pred_s2 = self.forward_strong(strong1, strong2)

        # 3. Pseudo-labels of the weak view and of the partners.
        probs_w = pred_w.detach().float().softmax(1)
        self.complete_partners(partners, probs_w)
        weak = self.targets(probs_w, u["ignore"])
        partner = self.targets(partners.probs, partners.ignore)

        # 4. Losses at the fixed threshold.
        return self.unimatch_loss(self.criterion_l(pred_x, y), pred_s1, pred_s2, pred_fp, weak, partner, u)

    def unimatch_loss(self, loss_x: torch.Tensor, pred_s1: torch.Tensor, pred_s2: torch.Tensor,
                      pred_fp: torch.Tensor, weak: Targets, partner: Targets, u: dict) -> torch.Tensor:
        """(w_x L_x + w_s1 L_s1 + w_s2 L_s2 + w_fp L_fp) / 2: each strong view against the weak targets
        with the partner's inside its box, the perturbed view against the weak targets, pixels kept by
        `select`. Logs every term, τ and the weak view's mask ratio."""
        target1, target2 = weak.mixed(partner, u["box1"]), weak.mixed(partner, u["box2"])
        selected_weak = self.select(weak)
        loss_s1 = masked_cross_entropy(pred_s1, target1.label, self.select(target1), target1.ignore)
        loss_s2 = masked_cross_entropy(pred_s2, target2.label, self.select(target2), target2.ignore)
        loss_fp = masked_cross_entropy(pred_fp, weak.label, selected_weak, weak.ignore)
        w = self.cfg.method.loss_weights
        loss = (w.x * loss_x + w.s1 * loss_s1 + w.s2 * loss_s2 + w.fp * loss_fp) / 2
        self.log_dict({"train/loss": loss, "train/loss_x": loss_x, "train/loss_s1": loss_s1,
                       "train/loss_s2": loss_s2, "train/loss_fp": loss_fp,
                       "train/tau": torch.as_tensor(self.threshold()),
                       "train/mask_ratio": selected_share(selected_weak, weak.ignore)})
        return loss
