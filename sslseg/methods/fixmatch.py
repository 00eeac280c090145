"""FixMatch for segmentation, as in UniMatch's `fixmatch.py` (specs §3.1).

1. Partners' pseudo-labels (eval mode, no grad) and CutMix of the strong view.
2. One pass on [labeled ‖ weak]; one pass on the CutMixed strong view.
3. Pseudo-labels of the weak view, mixed inside the box with the partners'.
4. loss = (L_x + L_s) / 2, L_s masked by a fixed confidence threshold τ (method.conf_thresh)
   and normalised by the non-padded pixels.
"""

from __future__ import annotations

import torch

from sslseg.methods.components import confident_share, cutmix, masked_unsup_loss
from sslseg.methods.weak_to_strong import WeakToStrong


class FixMatch(WeakToStrong):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        u = batch["unlabeled"]
        tau = self.threshold()

        # 1. CutMix partners and the mixed strong view.
        partners = self.partners(batch)
        strong = cutmix(u["strong1"], partners.strong1, u["box1"])

        # 2. Forward passes.
        logits = self.model(self.normalize(torch.cat([x, u["weak"]]))).logits
        pred_x, pred_w = logits.split([x.shape[0], u["weak"].shape[0]])
        pred_s = self.model(self.normalize(strong)).logits

        # 3. Pseudo-labels.
        probs_w = pred_w.detach().float().softmax(1)
        self.complete_partners(partners, probs_w)
        weak = self.targets(probs_w, u["ignore"])
        target = weak.mixed(self.targets(partners.probs, partners.ignore), u["box1"])

        # 4. Losses.
        loss_x = self.criterion_l(pred_x, y)
        loss_s = masked_unsup_loss(pred_s, target.label, target.conf, target.ignore, tau)
        loss = (loss_x + loss_s) / 2
        self.log_dict({"train/loss": loss, "train/loss_x": loss_x, "train/loss_s": loss_s,
                       "train/mask_ratio": confident_share(weak.conf, weak.ignore, tau)}, prog_bar=False)
        return loss
