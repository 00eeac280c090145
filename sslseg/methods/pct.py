"""PCT: Learning Pseudo Labels (Pattern Recognition 2022, YudeWang/Learning-Pseudo-Label): class-aware
cross-entropy and progressive cross training, in two stages (`method.stages`, sslseg/run/stages.py).

Semi-AND-weakly supervised: every unlabeled image comes with its image-level class tags (from its mask or
a tag file, sslseg/data/tags.py), so its numbers are not comparable with the purely semi-supervised
methods' (results.json and docs/toy.md say so).

Stage 1 (`PCT`, cross training of two networks of the same architecture, independently initialised): each step takes a
pixel-labeled half (the labeled stream) and a tagged half (any training image, only cropped):
1. HybridNet H and PseudoNet P on all images; the class-aware softmax (CCE: over the classes of each
   image's tags) gives their pseudo-labels PL_H and PL_P; for tagged images that have a ground-truth mask,
   the ground truth replaces both.
2. L_seg_H = CCE(H, ground truth) on the labeled half; L_cls = multi-label soft margin of H's globally
   max-pooled logits against the tags (foreground classes), on all images.
3. L_seg_P = CCE(P, PL_H) on the tagged half: P learns from H's pseudo-labels only.
4. P is judged on the labeled half: running per-class counts (decay 0.99) of ground truth, predicted and
   agreeing pixels give its IoU per class; a tagged image's weight is w = (min IoU over its classes)^8.
5. L_pct = mean over the tagged half's pixels of w · CCE(H, PL_P): H learns from P's pseudo-labels as far as
   P has proved reliable on those classes. loss = L_seg_H + L_seg_P + L_cls + L_pct.
Then H's pseudo-labels for every unlabeled image: multi-scale + flip logits, the class-aware softmax with
the image's tags, argmax, every pixel labelled (the ground truth for the labeled images).

Stage 2 (`PCTRetrain`): a fresh network trained with plain cross-entropy on all training images (ground truth
or pseudo-label), evaluated without tags.

Differences from the released code:
  * The stage-2 test has no DenseCRF by default (the release's adds one iteration): `dataset.eval.crf=true`.
  * The CCE is computed stably (sslseg.methods.losses.class_aware_log_probs); the release's log(... + 1e-5) caps a
    pixel's loss near 11.5 and shifts it by up to ~0.1 at ordinary logit scales.
  * A present class whose running IoU is exactly 0 counts with IoU 0 (weight 0: P has never got it right),
    as the paper's formula; the release treats it as absent, so an image whose classes all score 0 gets
    weight 1. `method.zero_iou: absent` restores that.
  * P's learning rate decays on its own poly schedule; the release forgot it (constant lr).
  * The running counts are summed over DDP ranks (the release runs on one GPU).
  * Stage 2 shuffles its data (the release's loader has shuffle=False).
  * The labeled half (stage 1) and the pseudo-labelled images (stage 2) use sslseg's geometric
    augmentation (rescale, crop, flip), not the release's random photometric/geometric ops; the labeled
    and tagged halves have data.batch_size images each (the release: 5 + 5).
  * The released stage-1 evaluation masks the prediction with the val images' tags; sslseg does so too in
    stage 1 (method.eval_with_tags), and never in stage 2.
  * Matched in the recipe (conf/recipe/pct_pascal.yaml): fp16 autocast with a GradScaler, and only the final
    iteration's weights are tested (`validation.every_n_epochs: 0`; results.json's reported number is
    final_val_mIoU). The release initialises both networks from PyTorch-Encoding's resnet101s weights
    (resnet101s-03a0f310.zip): unzip its .pth into paths.pretrained_dir. The seed methods' deep-stem
    resnet101.pth has the same key names and loads as well (`backbone.pretrained=<dir>/resnet101.pth`), but it is
    another ImageNet training of the same architecture (whether its weights are the same is not known): expect
    different numbers.
    The recipe also crops as the release does: a crop larger than the image is padded with the mean colour
    (0 once normalised) at a random offset, and random scales resize the image with cubic interpolation
    (`data.geometric_aug: {pad: mean, pad_position: random, scale_interpolation: cubic}`); the toy defaults
    keep UniMatch's (black, right and bottom, bilinear).
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.methods.losses import class_aware_log_probs, class_aware_nll, tag_classification_loss
from sslseg.models import build_segmentor
from sslseg.predict.inference import predict_with


def tags_of_masks(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) bool: the classes present in each mask, values ≥ K (255 included) counting as background, as
    the release's `seg2cls`."""
    labels = masks.flatten(1).clamp(min=0)
    labels = torch.where(labels >= num_classes, 0, labels)
    return torch.zeros(masks.shape[0], num_classes, device=masks.device).scatter_(1, labels, 1.0).bool()


class IoUTracker(nn.Module):
    """PseudoNet's running per-class IoU on the labeled half: ground-truth (T), predicted (P, every pixel,
    ignored ones included, as released) and agreeing (TP) pixel counts, each ← decay · count + this step's.
    Starts at T = 1, P = TP = 0."""

    def __init__(self, num_classes: int, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("truth", torch.ones(num_classes, dtype=torch.float64))
        self.register_buffer("predicted", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("agreeing", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor, reduce_sum=lambda t: t) -> None:
        k = self.truth.numel()
        valid = (target != IGNORE_INDEX).flatten().double()
        counts = lambda index, weight: torch.zeros(k, dtype=torch.float64, device=weight.device).scatter_add_(
            0, index.flatten(), weight)
        truth = counts(target.clamp(max=k - 1), valid)
        predicted = counts(prediction, torch.ones_like(valid))
        agreeing = counts(prediction, valid * (prediction == target).flatten().double())
        totals = reduce_sum(torch.stack([truth, predicted, agreeing]))  # one all-reduce under DDP
        for stat, new in zip((self.truth, self.predicted, self.agreeing), totals):
            stat.mul_(self.decay).add_(new)

    def iou(self) -> torch.Tensor:
        return self.agreeing / (self.truth + self.predicted - self.agreeing)


def image_weights(iou: torch.Tensor, tags: torch.Tensor, power: float = 8.0, zero_iou: str = "weight") -> torch.Tensor:
    """w_i = (min over image i's classes of IoU_c)^power. zero_iou="absent" is the release's rule: a class
    with IoU exactly 0 counts as absent, and an image with no class left gets weight 1."""
    present = tags.bool()
    if zero_iou == "absent":
        present = present & (iou > 0)[None]
    elif zero_iou != "weight":
        raise UserError(f"method.zero_iou must be weight or absent, got {zero_iou!r}")
    worst = torch.where(present, iou[None].to(torch.float64), torch.ones_like(iou[None], dtype=torch.float64))
    return worst.amin(1).float() ** power


class PCT(SemiSegModule):
    """Stage 1: progressive cross training of HybridNet (`model`) and PseudoNet (`pseudo_net`)."""

    uses_image_tags = True

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        return ("labeled", "tagged")

    def __init__(self, cfg, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained)
        self.automatic_optimization = False  # two networks, two optimizers
        self.pseudo_net = build_segmentor(self.cfg.backbone, self.cfg.model, self.num_classes,
                                          load_pretrained=load_pretrained)
        self.iou = IoUTracker(self.num_classes, float(self.cfg.method.iou_decay))

    def networks(self) -> dict[str, nn.Module]:
        return super().networks() | {"pseudo_net": self.pseudo_net}

    def evaluated_networks(self) -> tuple[str, ...]:
        choices = {"hybrid": ("model",), "pseudo": ("pseudo_net",), "both": ("model", "pseudo_net")}
        if self.cfg.method.evaluate not in choices:
            raise UserError(f"method.evaluate must be one of {list(choices)}, got {self.cfg.method.evaluate!r}")
        return choices[self.cfg.method.evaluate]

    def encoder_passes(self, batch: dict) -> int:
        return 2

    def configure_optimizers(self):
        optimizers, schedules = zip(self.build_optimizer(self.model), self.build_optimizer(self.pseudo_net))
        return list(optimizers), list(schedules)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        seg, tagged = batch["labeled"], batch["tagged"]
        n = seg["image"].shape[0]
        images = self.normalize(torch.cat([seg["image"], tagged["image"]]))
        tags = torch.cat([seg["tags"], tagged["tags"]]).bool()
        hybrid = self.model(images).logits
        pseudo = self.pseudo_net(images).logits
        # The class-aware log-softmax once per network: the pseudo-labels and the losses read it.
        log_probs_h, log_probs_p = class_aware_log_probs(hybrid, tags), class_aware_log_probs(pseudo, tags)

        # 1. Pseudo-labels of both networks; the ground truth where a tagged image has one.
        with torch.no_grad():
            label_h = log_probs_h.detach().argmax(1)
            label_p = log_probs_p.detach().argmax(1)
            has_mask = tagged["has_mask"].bool()[:, None, None]
            target_p = torch.where(has_mask, tagged["mask"], label_h[n:])  # for PseudoNet
            target_h = torch.where(has_mask, tagged["mask"], label_p[n:])  # for HybridNet's L_pct
            # 4. PseudoNet judged on the labeled half, then the tagged images' weights.
            self.iou.update(label_p[:n], seg["mask"], self.all_reduce)
            weights = image_weights(self.iou.iou(), tagged["tags"], float(self.cfg.method.weight_power),
                                    self.cfg.method.zero_iou)

        # 2-5. The four losses; one backward (the networks share no parameter), each network's SGD and poly step.
        terms = {
            "seg_hybrid": class_aware_nll(log_probs_h[:n], seg["mask"]),
            "cls": tag_classification_loss(hybrid, tags),
            "seg_pseudo": class_aware_nll(log_probs_p[n:], target_p),
            "pct": (class_aware_nll(log_probs_h[n:], target_h, reduction="none") * weights[:, None, None]).mean(),
        }
        loss = sum(terms.values())
        self.manual_step(loss, *self.optimizers())
        self.log_dict({"train/loss": loss} | {f"train/loss_{k}": v for k, v in terms.items()}
                      | {"train/pct_weight": weights.mean(), "train/pseudo_net_mIoU": self.iou.iou().mean().float()})
        return loss

    # -- evaluation and pseudo-labels --------------------------------------------------------------------
    def scores(self, model: nn.Module, x: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        scores = super().scores(model, x, batch)
        if self.cfg.method.eval_with_tags and batch is not None:
            tags = tags_of_masks(batch["mask"], self.num_classes)  # the release's stage-1 test uses val tags
            scores = scores.masked_fill(~tags[:, :, None, None], float("-inf"))
        return scores

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """HybridNet's pseudo-label: the generation protocol's averaged logits (multi-scale + flip), the
        class-aware softmax over the image's tags, argmax; (label uint8, confidence fp16)."""
        logits = predict_with(lambda t: self.model(t).logits, self.normalize(batch["image"]), self.num_classes,
                              self.cfg.method.generation, self.patch_size())
        conf, label = class_aware_log_probs(logits, batch["tags"]).exp().max(1)
        return label.to(torch.uint8), conf.half()


class PCTRetrain(SemiSegModule):
    """Stage 2: a fresh network, plain cross-entropy on every training image's ground truth or pseudo-label."""

    uses_image_tags = True  # its pseudo-labels came from the tags

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        return ("pseudo",)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pseudo = batch["pseudo"]
        loss = self.supervised_loss(self.model(self.normalize(pseudo["image"])), pseudo["mask"])
        self.log("train/loss", loss)
        return loss
