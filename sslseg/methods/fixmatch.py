"""FixMatch for segmentation, as in UniMatch's `fixmatch.py`.

1. Partners' pseudo-labels (student in eval mode, no grad) and CutMix of the strong view.
2. One pass on [labeled ‖ weak]; one pass on the CutMixed strong view.
3. Pseudo-labels of the weak view, mixed inside the box with the partners'.
4. loss = (L_x + L_s) / 2, L_s masked by a fixed confidence threshold τ (method.conf_thresh)
   and normalised by the non-padded pixels.
"""

from __future__ import annotations

import torch

from sslseg.losses import masked_cross_entropy, selected_share
from sslseg.methods.components import cutmix
from sslseg.methods.weak_to_strong import WeakToStrong


class FixMatch(WeakToStrong):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        u = batch["unlabeled"]

        # 1. CutMix partners and the mixed strong view.
        partners = self.partners(batch, self.predict_partner)
        strong = cutmix(u["strong1"], partners.strong1, u["box1"])

        # 2. Forward passes.
        pred_x, pred_w, _ = self.forward_weak(x, u["weak"])
        pred_s = self.model(self.normalize(strong)).logits

        # 3. Pseudo-labels.
        probs_w = pred_w.detach().float().softmax(1)
        self.complete_partners(partners, probs_w)
        weak = self.targets(probs_w, u["ignore"])
        target = weak.mixed(self.targets(partners.probs, partners.ignore), u["box1"])

        # 4. Losses.
        loss_x = self.criterion_l(pred_x, y)
        loss_s = masked_cross_entropy(pred_s, target.label, self.select(target), target.ignore)
        loss = (loss_x + loss_s) / 2
        self.log_dict({"train/loss": loss, "train/loss_x": loss_x, "train/loss_s": loss_s,
                       "train/mask_ratio": selected_share(self.select(weak), weak.ignore)})
        return loss
