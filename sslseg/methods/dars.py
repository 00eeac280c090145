"""DARS: Distribution Alignment and Random Sampling (ICCV'21, CVMI-Lab/DARS), an offline self-training
method run as stages (`method.stages`, sslseg/run/stages.py):

  round0   train on the labeled images: (CE + 0.4 CE_aux)(labeled)
  pseudo1  generate pseudo-labels for the unlabeled images with round0's final weights:
           1. long side resized to the base size, sliding windows with flip, logits averaged,
              resized back; the fp16 softmax gives each pixel a pseudo-label and a confidence;
           2. per class j, a target count n_j = ratio · (class j's share of the labeled pixels) ·
              (unlabeled pixels): the pseudo-labelled class distribution follows the labeled one
              ("distribution alignment"); τ_j = the n_j-th largest confidence of class j;
           3. pixels below τ_j are dropped, and of the pixels at or above τ_j a share 1 − sp_j, with
              sp_j = n_j / #{conf ≥ τ_j}, is dropped at random per image ("random sampling"): fp16
              confidences tie, so a threshold alone cannot hit n_j.
  round1   continue round0's weights, momentum and lr schedule on labeled + pseudo-labelled batches:
           (CE + 0.4 CE_aux)(labeled) + 1.0 · (CE + 0.4 CE_aux)(pseudo), each batch its own forward
  pseudo2  generate again, with round1's weights and a larger labeling ratio
  round2   continue, with a wider scale augmentation

Differences from the released code:
  * The class shares come from the labeled masks of the split; the release hard-codes per-dataset priors
    (tool/gen_pseudo_label_utils.py), which do not fit other splits.
  * The target counts use the unlabeled set's real pixel count instead of a nominal image size (VOC
    500 × 375, Cityscapes 1024 × 2048) times the image count.
  * A class no pixel was labelled with (an empty bank) crashes the released threshold step; here it
    gets no pixels. A class with n_j = 0 (absent from the labeled masks) gets none either, as the
    release ends up doing through τ_j = its smallest confidence and sp_j = 0.
  * Confidences are binned per fp16 value instead of stored and sorted: the same thresholds and tie
    counts in bounded memory. With `method.generation.fp16_softmax: false` the softmax runs in fp32
    and is rounded to fp16 for the histogram.
  * Each round continues the poly schedule from the previous round's cumulative epochs; the release's
    resumed optimizer carries the finished round's last lr (0) into the first step of the next round.
  * The release's `tool/train.py` imports a module that does not exist (`tool.task3.train_func`).
  * Matched in the recipes (conf/recipe/dars_*): fp32 (apex O0), validations from evaluate_start every
    evaluate_freq epochs per round (`validation`), the DeepLabV2 model as released (2 branches, layer4 at 10x),
    and semseg's padding: a small crop is padded around the image with the mean colour (label 255) before the
    random crop (`data.geometric_aug.pad_position: centre`), and an image smaller than a test window around
    its centre (`window: centred`, evaluation and pseudo-labels). The toy defaults keep the corner padding.
"""

from __future__ import annotations

import torch

from sslseg.methods.base import SemiSegModule
from sslseg.predict.inference import predict_with


class DARS(SemiSegModule):
    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        """Round 0 reads the labeled stream; the stage runner adds the pseudo stream once there are
        pseudo-labels."""
        return ("labeled",)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labeled = batch["labeled"]
        loss_l = self.supervised_loss(self.model(self.normalize(labeled["image"])), labeled["mask"])
        logs = {"train/loss_labeled": loss_l}
        loss = loss_l
        if "pseudo" in batch:  # rounds ≥ 1: the pseudo-labelled batch, in its own forward pass
            pseudo = batch["pseudo"]
            loss_p = self.supervised_loss(self.model(self.normalize(pseudo["image"])), pseudo["mask"])
            loss = loss_l + float(self.cfg.method.pseudo_weight) * loss_p
            logs["train/loss_pseudo"] = loss_p
        self.log_dict({"train/loss": loss} | logs)
        return loss

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pseudo-label uint8, confidence fp16), each (B, H, W) at the image's size: the generation
        protocol's averaged logits (long side resized to the base size, sliding windows with flip), in
        fp32 whatever the trainer's precision (bf16 would move the fp16 confidences), then their softmax,
        in fp16 as released."""
        gen = self.cfg.method.generation
        x = self.normalize(batch["image"])
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 logits, then the release's fp16
            logits = predict_with(lambda t: self.model(t).logits, x, self.num_classes, gen, self.patch_size())
        probs = logits.half().softmax(1) if gen.fp16_softmax else logits.float().softmax(1)
        conf, label = probs.max(1)
        return label.to(torch.uint8), conf.half()
