"""UniMatch (CVPR'23), as the released `unimatch.py` (specs §3.2).

1. Partners' pseudo-labels (eval mode, no grad); CutMix both strong views with the partners'.
2. One pass on [labeled ‖ weak] whose decoder also runs on channel-dropped c1/c4 (the
   feature-perturbation stream, Dropout2d 0.5), one pass on [strong1 ‖ strong2].
3. Pseudo-labels of the weak view; mixed targets inside each box.
4. loss = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 (method.loss_weights), each unsupervised
   term masked at τ (0.95 Pascal/COCO, 0 Cityscapes) and normalised by the non-padded pixels.

Differences from the released code: the partner batch holds other images (the reference zips two
loaders with identical samplers and mixes each image with a second view of itself, which its
author calls unintended, UniMatch #51/#85); `method.mix_source=batch` drops the partner pass.
"""

from __future__ import annotations

import torch

from sslseg.methods.components import confident_share, cutmix, masked_unsup_loss
from sslseg.methods.weak_to_strong import Targets, WeakToStrong


class UniMatch(WeakToStrong):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        u = batch["unlabeled"]
        n_x = x.shape[0]

        # 1. Partners and CutMix of both strong views.
        partners = self.partners(batch)
        strong1 = cutmix(u["strong1"], partners.strong1, u["box1"])
        strong2 = cutmix(u["strong2"], partners.strong2, u["box2"])

        # 2. [labeled ‖ weak] with the feature-perturbation stream; [strong1 ‖ strong2].
        out = self.model(self.normalize(torch.cat([x, u["weak"]])), perturb=True)
        pred_x, pred_w = out.logits.split([n_x, u["weak"].shape[0]])
        pred_fp = out.logits_fp[n_x:]
        pred_s1, pred_s2 = self.model(self.normalize(torch.cat([strong1, strong2]))).logits.chunk(2)

        # 3. Pseudo-labels (weak view and partners) and the supervised loss.
        probs_w = pred_w.detach().float().softmax(1)
        self.complete_partners(partners, probs_w)
        loss_x = self.criterion_l(pred_x, y)
        weak, partner = self.pseudo_targets(pred_x, y, probs_w, u["ignore"], partners)
        target1, target2 = weak.mixed(partner, u["box1"]), weak.mixed(partner, u["box2"])

        # 4. Losses.
        tau = self.threshold()
        loss_s1 = masked_unsup_loss(pred_s1, target1.label, target1.conf, target1.ignore, tau)
        loss_s2 = masked_unsup_loss(pred_s2, target2.label, target2.conf, target2.ignore, tau)
        loss_fp = masked_unsup_loss(pred_fp, weak.label, weak.conf, weak.ignore, tau)
        w = self.cfg.method.loss_weights
        loss = (w.x * loss_x + w.s1 * loss_s1 + w.s2 * loss_s2 + w.fp * loss_fp) / 2
        self.log_dict({"train/loss": loss, "train/loss_x": loss_x, "train/loss_s1": loss_s1,
                       "train/loss_s2": loss_s2, "train/loss_fp": loss_fp, "train/tau": torch.as_tensor(tau),
                       "train/mask_ratio": confident_share(weak.conf, weak.ignore, tau)})
        return loss

    def pseudo_targets(self, pred_x, y, probs_w, ignore, partners) -> tuple[Targets, Targets]:
        """Targets of the weak view and of the partners (DAW overrides to align and re-threshold)."""
        return self.targets(probs_w, ignore), self.targets(partners.probs, partners.ignore)
