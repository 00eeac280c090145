"""DDFP: density-descending feature perturbation (CVPR'24, Gavinwxy/DDFP), a U2PL-style mean teacher whose
feature perturbation follows a normalizing flow fitted to the decoder's features.

Network: U2PL's DeepLabV3+ (`method.network`), whose classifier block has a main and an
auxiliary BN, and a density model (sslseg/models/flow.py: 2 GLOW coupling blocks, a Gaussian mixture with
one learnable mean per class) of the block's 256-d output.

Per step, in epoch ≥ 2 (epoch 0 is supervised only; epoch 1 copies the student into the teacher every
step, trains the student on L_sup + L_u with the warm_up BN split and no perturbation, and starts the flow;
as released, epoch 0 also routes the second half of its labeled batch through the auxiliary BN):
1. The teacher (train-mode BN, no grad) on [labeled ‖ weak]: pseudo-labels of the weak view at full
   resolution, kept where conf > 0.95 (255 elsewhere and on padding), and its 256-d features.
2. With p 0.5, batch CutMix of [strong view, pseudo-label, padding mask]: sample i takes a box of half the
   image from sample i + 1.
3. The student's fused 304-d features of [labeled ‖ mixed strong]. For the unlabeled part the
   perturbation δ = ε·normalize(∂NLL/∂noise) per pixel, ε = 4: the gradient, at noise = 0, of the flow's
   mixture NLL of the classifier block's output (aux BN, train mode) over the confident pixels, i.e. the
   direction that lowers the density. Then the classifier block on [labeled, unlabeled, unlabeled + δ]
   (mix BN: the first two thirds main BN, the last third aux BN).
4. loss = L_sup + 0.5 L_u + 0.5 L_pt, the unsupervised terms averaged over the confident pixels (U2PL).
5. The flow: the NLL of at most 20480 teacher features drawn uniformly from the labeled pixels
   (class-conditional density) and the non-padded unlabeled pixels (mixture), plus 0.05 N(0, 1) noise;
   its own Adam (lr 1e-3, betas 0.5/0.9, gradient norm clipped at 50, lr decayed x0.01 over training by
   epoch).
6. The teacher: EMA 0.999 (ramp min(1 − 1/(i+1), 0.999)) of parameters and BN buffers.

Differences from the released code:
  * The teacher does not run in epoch 0 (supervised only); the release runs it in train mode there, which moves
    its BN statistics (they matter only with `method.teacher.schedule: shared`).
  * A real EMA teacher. The release (from U2PL) sets `t_param.data = s_param.data` in epoch 1, so teacher
    and student share storage and its "teacher" is the student, run in train mode: `method.teacher.schedule:
    shared` reproduces that (the teacher's parameters follow the student's every step, its BN buffers its
    own). The ramp's index counts from the first step instead of from epoch 1, and the EMA covers the BN
    buffers too (U2PL averages parameters only).
  * One backward pass for the segmentation loss and the flow's NLL (they touch disjoint parameters, and δ
    carries no graph): the student's SGD and the flow's Adam then each take their step. The flow's step
    bypasses Lightning's optimizer wrapper, so that `trainer.max_steps`, the poly schedule, the teacher's
    index and results.json's step count count training steps, not optimizer steps.
  * The flow and its prior run in fp32 with autocast off (log-determinants and Gaussian log-densities are
    sums over 256 dimensions); the release trains it under fp16 autocast with a GradScaler.
  * The flow's features are drawn with a top-k of random keys instead of `randperm` over the valid pixels
    (no host-device synchronisation); it is the same uniform draw without replacement.
  * Matched in the recipes (conf/recipe/ddfp_*): fp16 autocast with a GradScaler (`trainer.precision=16-mixed`;
    fp32 on CPU), a validation every 4 epochs (`validation.every_n_epochs`), the centre-crop evaluation padded
    with black (U2PL pads the raw image with 0 before normalising). The flow's 20480 features are the release's
    per GPU of 4 + 4 images: a device holding B labeled images draws 20480 · B / 4 (`flow.samples_images`), so a
    global batch keeps the release's share of features on any device count.
  * The release's 1464 config lacks keys its script needs, the teacher always has 21 classes, its
    Cityscapes splits cannot be parsed and it has no Cityscapes config: the recipes build on
    its 732 config, and ddfp_cityscapes is sslseg's own choice (see the recipe).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.methods.losses import masked_cross_entropy, selected_share
from sslseg.methods.optim import instantiate_optimizer
from sslseg.models.flow import UNLABELED, FeatureDensity
from sslseg.models.segmentor import upsample


def half_box_cutmix(images: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor, rng: random.Random):
    """U2PL's batch CutMix: sample i takes a box of half its area from sample (i + 1) mod B; the box's
    width is drawn from [W/2 + 1, W), its height is area / width (rounded), its corner uniform."""
    b, _, h, w = images.shape
    inside = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        box_w = rng.randrange(w // 2 + 1, w)
        box_h = min(h, round(h * w / 2 / box_w))
        x, y = rng.randrange(0, w - box_w + 1), rng.randrange(0, h - box_h + 1)
        inside[i, y : y + box_h, x : x + box_w] = True
    inside = inside.to(images.device, non_blocking=True)
    mix = lambda t: torch.where(inside if t.dim() == 3 else inside[:, None], t.roll(-1, 0), t)
    return mix(images), mix(labels), mix(ignore)


class DDFP(SemiSegModule):
    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        return ("labeled", "unlabeled")

    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        self.automatic_optimization = False  # two optimizers: the student's SGD and the flow's Adam
        decoder = self.model.decoder
        if not hasattr(decoder, "bn_mode"):
            raise UserError(f"method=ddfp needs U2PL's decoder with mixed BN (model=u2pl_deeplabv3plus), "
                            f"got model={self.cfg.model.name}")
        if self.teacher is None:
            raise UserError("method=ddfp needs a method.teacher section")
        flow = self.cfg.method.flow
        self.density = FeatureDensity(self.num_classes, decoder.feature_channels, flow.blocks, flow.hidden,
                                      flow.clamp, flow.init_std)

    def networks(self) -> dict[str, nn.Module]:
        return super().networks() | {"density": self.density}

    # -- phases --------------------------------------------------------------------------------------
    def supervised_only(self) -> bool:
        return self.current_epoch < int(self.cfg.method.sup_only_epochs)

    def perturbing(self) -> bool:
        return self.current_epoch > int(self.cfg.method.flow_start_epoch)

    def flow_training(self) -> bool:
        return self.current_epoch >= int(self.cfg.method.flow_start_epoch)

    def encoder_passes(self, batch: dict) -> int:
        return 1 if self.supervised_only() else 2  # the student, and the teacher once there are pseudo-labels

    # -- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        seg = super().configure_optimizers()
        flow_optim = self.cfg.method.flow.optim  # the release's Adam(lr 1e-3, betas 0.5/0.9), from the config
        groups = [{"params": list(self.density.parameters()), "lr": float(flow_optim.lr)}]
        adam = instantiate_optimizer(flow_optim, groups, self.device.type == "cuda")
        return [seg["optimizer"], adam], [seg["lr_scheduler"]]

    def on_train_epoch_start(self) -> None:
        """The flow's lr in epoch e: lr · final_lr_ratio^(e / epochs), the release's StepLR(γ = 0.01^(1/epochs))
        stepped after every epoch; set from the epoch, so a resumed run gets it right."""
        super().on_train_epoch_start()
        flow = self.cfg.method.flow
        epochs = self.trainer.max_epochs
        if not epochs or epochs < 1:  # a step budget: the epochs it spans
            epochs = math.ceil(self.trainer.estimated_stepping_batches / max(1, self.trainer.num_training_batches))
        for group in self.optimizers()[1].optimizer.param_groups:
            group["lr"] = float(flow.optim.lr) * float(flow.final_lr_ratio) ** (self.current_epoch / epochs)

    # -- the step --------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        u = batch["unlabeled"]
        m = self.cfg.method
        terms: dict[str, torch.Tensor] = {}
        flow_loss = torch.zeros((), device=self.device)
        if self.supervised_only():  # the release routes half of the labeled batch through the aux BN here too
            with self.model.decoder.bn_mode("warm_up"):
                terms["x"] = self.criterion_l(self.model(self.normalize(x)).logits, y)
            loss = terms["x"]
        else:
            # 1. The teacher's pseudo-labels of the weak view, and its features for the flow.
            teacher = self.teacher(self.normalize(torch.cat([x, u["weak"]])))
            conf, label = teacher.logits[x.shape[0]:].float().softmax(1).max(1)
            label = label.masked_fill((conf <= float(m.conf_thresh)) | (u["ignore"] == IGNORE_INDEX), IGNORE_INDEX)
            # 2. Batch CutMix of the strong view, its pseudo-labels and padding, with probability 0.5.
            strong, ignore = u["strong1"], u["ignore"]
            rng = random.Random(hash((int(self.cfg.seed), self.train_steps)))
            if rng.random() < float(m.cutmix_p):
                strong, label, ignore = half_box_cutmix(strong, label, ignore, rng)
            label = label.masked_fill(ignore == IGNORE_INDEX, IGNORE_INDEX)
            confident = label != IGNORE_INDEX
            # 3-4. The student, with the density-descending perturbation once the flow has trained an epoch.
            if self.perturbing():
                pred_x, pred_u, pred_pt = self.perturbed_predictions(x, strong, label)
                terms["pt"] = masked_cross_entropy(pred_pt, label.clamp(max=self.num_classes - 1), confident,
                                                   ignore, "selected")
            else:
                with self.model.decoder.bn_mode("warm_up"):
                    pred_x, pred_u = self.model(self.normalize(torch.cat([x, strong]))).logits.chunk(2)
            terms["x"] = self.criterion_l(pred_x, y)
            terms["u"] = masked_cross_entropy(pred_u, label.clamp(max=self.num_classes - 1), confident, ignore,
                                              "selected")
            w = m.loss_weights
            unsupervised = w.u * terms["u"] + w.pt * terms["pt"] if self.perturbing() else w.u_warm_up * terms["u"]
            loss = terms["x"] + unsupervised
            # 5. The flow on the teacher's features.
            if self.flow_training():
                flow_loss = self.flow_nll(teacher.features, y, u["ignore"])
                terms["flow"] = flow_loss
            self.log("train/mask_ratio", selected_share(confident, ignore))
        seg_optimizer, flow_optimizer = self.optimizers()  # one backward for both losses: disjoint parameters
        flow = [flow_optimizer] if self.flow_training() else []
        self.manual_step(loss + flow_loss, seg_optimizer, *flow, clip_norm=float(m.flow.grad_clip))
        self.log_dict({"train/loss": loss} | {f"train/loss_{k}": v for k, v in terms.items()})
        return loss

    def perturbed_predictions(self, x: torch.Tensor, strong: torch.Tensor, label: torch.Tensor):
        """(labeled, unlabeled, perturbed unlabeled) logits at the input size (steps 3.1-3.3)."""
        decoder = self.model.decoder
        images = self.normalize(torch.cat([x, strong]))
        fused_l, fused_u = decoder.fused_features(*self.model.encode(images)).split([x.shape[0], strong.shape[0]])
        delta = self.density_descent(fused_u.detach(), label)
        with decoder.bn_mode("mix"):
            logits, _ = decoder.classify(torch.cat([fused_l, fused_u, fused_u + delta]))
        return upsample(logits, images.shape[-2:]).split([x.shape[0], strong.shape[0], strong.shape[0]])

    def density_descent(self, fused: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """δ = ε · ∇_noise NLL / ‖∇_noise NLL‖ per pixel (over the 304 channels), at noise = 0: the step that
        most lowers the flow's density of the classifier block's output (aux BN, train mode) over the
        confident pixels. Zero where the gradient is zero."""
        decoder = self.model.decoder
        noise = torch.zeros_like(fused, requires_grad=True)
        with torch.enable_grad(), decoder.bn_mode("adv"):
            _, features = decoder.classify(fused + noise)
            valid = F.interpolate(label[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0]
            weights = (valid != IGNORE_INDEX).flatten().float()
            log_p = self.log_density(features.permute(0, 2, 3, 1).flatten(0, 2))
            nll = -(log_p * weights).sum() / weights.sum().clamp_min(1)
            (grad,) = torch.autograd.grad(nll, noise)
        return float(self.cfg.method.eps) * F.normalize(grad, dim=1)

    def flow_nll(self, features: torch.Tensor, y: torch.Tensor, ignore_u: torch.Tensor) -> torch.Tensor:
        """Step 5: the NLL of at most `flow.samples` x B / `flow.samples_images` teacher features, B this device's
        labeled images (the release: 20480 per GPU of 4 + 4), from the labeled pixels (their class's density) and
        the non-padded unlabeled pixels (the mixture), drawn uniformly without replacement, plus noise."""
        flow = self.cfg.method.flow
        budget = int(flow.samples) * y.shape[0] // int(flow.get("samples_images") or y.shape[0])
        size = features.shape[-2:]
        nearest = lambda t: F.interpolate(t[:, None].float(), size=size, mode="nearest")[:, 0].long()
        labels_u = torch.where(nearest(ignore_u) == IGNORE_INDEX, IGNORE_INDEX, UNLABELED)
        labels = torch.cat([nearest(y), labels_u]).flatten()
        valid = labels != IGNORE_INDEX
        keys = torch.where(valid, torch.rand(labels.shape, device=labels.device), -1.0)
        chosen = keys.topk(min(budget, labels.numel())).indices
        sample = features.detach().permute(0, 2, 3, 1).flatten(0, 2)[chosen]
        sample = sample + float(flow.noise) * torch.randn_like(sample)
        weights = valid[chosen].float()
        log_p = self.log_density(sample, torch.where(valid[chosen], labels[chosen], UNLABELED))
        return -(log_p * weights).sum() / weights.sum().clamp_min(1)

    def log_density(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The flow's log-density in fp32, autocast off."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.density.log_prob(features.float(), labels)
