"""How a method is validated: every evaluated network scored on the val set with the dataset's evaluation protocol,
and the best one selected as the run's network.

`method.evaluate` picks the evaluated networks (student | teacher | both; with both, val/mIoU is the better one). The
network a validation selected is recorded in every checkpoint (`best_network`, with each network's mIoU in
`network_scores`), so that prediction (sslseg.Segmenter), export and eval.py use the network the run reported
instead of choosing again on other data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sslseg.errors import UserError
from sslseg.predict.inference import predict_with, returns_probabilities
from sslseg.predict.metrics import confusion_matrix_metric, iou_from_confusion, mean_iou_all_classes

EVALUATED = {"student": ("model",), "teacher": ("teacher",), "both": ("model", "teacher")}


class NetworkValidation:
    """The validation half of SemiSegModule (a mixin: it reads the module's networks, config and device)."""

    def init_validation(self) -> None:
        # One confusion matrix per evaluated network (DAW and DSSN evaluate student and teacher).
        self.val_confusion = nn.ModuleDict({name: confusion_matrix_metric(self.num_classes)
                                            for name in self.evaluated_networks()})
        self.last_val: dict | None = None
        self.validations = 0  # validations of this fit (checkpointed): results.json's best_from_validations
        self.validated_at = -1  # train_steps at the last validation: were the final weights scored?
        self.best_network = self.evaluated_networks()[0]  # the first until a validation selects one
        self.network_scores: dict[str, float] | None = None  # each network's mIoU at that validation
        self.fixed_network: str | None = None  # validate only this one (eval.py with a recorded selection)

    def evaluated_networks(self) -> tuple[str, ...]:
        """Names of the networks validated every epoch (`method.evaluate`); val/mIoU is the best of them."""
        choice = self.cfg.method.get("evaluate", "student")
        if choice not in EVALUATED or (choice != "student" and not self.cfg.method.get("teacher")):
            options = list(EVALUATED) if self.cfg.method.get("teacher") else ["student"]
            raise UserError(f"method.evaluate must be one of {options}, got {choice!r}")
        return EVALUATED[choice]

    def inference_model(self) -> nn.Module:
        """The network used for prediction: the one that scored best at the last validation."""
        return self.network(self.best_network)

    def patch_size(self) -> int | None:
        """The patch size of the student's backbone (a ViT), None for a CNN: `dataset.eval.multiplier: auto`."""
        return getattr(self.model.backbone, "patch_size", None)

    def scores(self, model: nn.Module, x: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """Class scores (B, K, H, W) of a normalised batch, with the dataset's evaluation protocol."""
        return predict_with(lambda t: model(t).logits, x, self.num_classes, self.cfg.dataset.eval, self.patch_size())

    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for uint8 images from the inference network."""
        return self.scores(self.inference_model(), self.normalize(images))

    def labels(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        """argmax of the scores, or, with `dataset.eval.crf` (Learning-Pseudo-Label's stage-2 test), of their
        DenseCRF refinement, image by image on the CPU (sslseg/predict/crf.py; an evaluation option, slow)."""
        eval_cfg = self.cfg.dataset.eval
        if not eval_cfg.get("crf"):
            return scores.argmax(1)
        from sslseg.predict.crf import dense_crf

        probs = scores if returns_probabilities(eval_cfg) else scores.float().softmax(1)
        images = batch["image"].permute(0, 2, 3, 1).cpu().numpy()
        refined = [dense_crf(image, p) for image, p in zip(images, probs.float().cpu().numpy())]
        return torch.from_numpy(np.stack(refined)).to(scores.device).argmax(1)

    def validated_networks(self) -> tuple[str, ...]:
        """The networks this validation scores: the evaluated ones, or only `fixed_network` when set."""
        return (self.fixed_network,) if self.fixed_network else tuple(self.val_confusion)

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Each validated network's predicted labels (returned for callbacks: sslseg.run.loggers.ValidationMedia)."""
        x = self.normalize(batch["image"])  # once, whatever the number of evaluated networks
        predictions = {}
        for name in self.validated_networks():
            predictions[name] = self.labels(self.scores(self.network(name), x, batch), batch)
            self.val_confusion[name].update(predictions[name], batch["mask"])
        return predictions

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        scores = {}
        for name in self.validated_networks():
            scores[name] = iou_from_confusion(self.val_confusion[name].compute())  # summed over ranks
            self.val_confusion[name].reset()
        self.best_network = max(scores, key=lambda n: float(scores[n][1]))
        self.network_scores = {name: float(miou) for name, (_, miou) in scores.items()}
        iou, miou = scores[self.best_network]
        self.last_val = {"mIoU": float(miou), "mIoU_all_classes": float(mean_iou_all_classes(iou)),
                         "per_class_IoU": dict(zip(self.class_names, iou.tolist())), "network": self.best_network}
        self.validated_at = self.train_steps
        if self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.validations += 1
        self.log("val/mIoU", miou.float(), prog_bar=True)
        if len(scores) > 1:
            self.log_dict({f"val/mIoU_{name}": m.float() for name, (_, m) in scores.items()})
        self.log_dict({f"val/IoU/{name}": v.float() for name, v in zip(self.class_names, iou) if not v.isnan()})

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def save_selection(self, checkpoint: dict) -> None:
        # The network the last validation reported, and every evaluated network's mIoU there (None before the
        # first validation: best_network is then only the default). ModelCheckpoint saves best.ckpt after
        # on_validation_epoch_end, so best.ckpt records the selection that made it the best.
        checkpoint["validations"], checkpoint["validated_at"] = self.validations, self.validated_at
        checkpoint["best_network"], checkpoint["network_scores"] = self.best_network, self.network_scores

    def restore_selection(self, checkpoint: dict) -> bool:
        """Take the checkpoint's recorded network as the inference network; True when a validation selected
        it. Checkpoints written before `network_scores` existed recorded only the last validation's choice."""
        self.validations = int(checkpoint.get("validations", 0))
        self.validated_at = int(checkpoint.get("validated_at", -1))
        recorded = checkpoint.get("best_network")
        if recorded not in self.evaluated_networks():
            return False
        self.best_network = recorded
        self.network_scores = checkpoint.get("network_scores")
        return self.network_scores is not None or "network_scores" not in checkpoint
