"""SemiSegModule: optimisation, schedule, validation, metrics and logging shared by all methods.

A method subclasses it, names the data streams it consumes (`data_streams`) and writes
`training_step` as its algorithm box. Images arrive as uint8; `normalize` turns them into
ImageNet-normalised float tensors on the device (channels_last when enabled).

Networks: `model` (the student) and, when the method config has a `teacher` section, `teacher` (an
averaged copy, `teacher.py`), updated here after every training step. `method.evaluate` picks which
of them are validated (student | teacher | both; with both, val/mIoU is the better one). The network a
validation selected is recorded in every checkpoint (`best_network`, with each network's mIoU in
`network_scores`), so that prediction (sslseg.Segmenter), export and eval.py use the network the run
reported instead of choosing again on other data.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.checkpoint import random_states, set_random_states
from sslseg.data.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from sslseg.errors import UserError
from sslseg.inference import predict_with, returns_probabilities
from sslseg.losses import build_criterion
from sslseg.methods.optim import instantiate_optimizer, param_groups
from sslseg.methods.teacher import Teacher
from sslseg.metrics import confusion_matrix_metric, iou_from_confusion, mean_iou_all_classes
from sslseg.models import Segmentor, build_segmentor
from sslseg.models.segmentor import method_network

EVALUATED = {"student": ("model",), "teacher": ("teacher",), "both": ("model", "teacher")}


def class_names(dataset_cfg: DictConfig) -> list[str]:
    names = dataset_cfg.get("class_names")
    return list(names) if names else [f"class_{i}" for i in range(int(dataset_cfg.num_classes))]


class SemiSegModule(pl.LightningModule):
    # Semi-and-weakly supervised methods read image-level tags of the unlabeled images (PCT): results.json
    # says so, since their numbers do not compare with the purely semi-supervised ones.
    uses_image_tags = False

    @classmethod
    def data_streams(cls, method_cfg) -> tuple[str, ...]:
        """Training streams this method consumes from the DataModule."""
        return ("labeled",)

    def __init__(self, cfg: DictConfig | dict, load_pretrained: bool = True):
        super().__init__()
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg.backbone, cfg.model = method_network(cfg.backbone, cfg.model, cfg.method.get("network"))
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = OmegaConf.create(self.hparams["cfg"])
        self.num_classes = int(self.cfg.dataset.num_classes)
        self.class_names = class_names(self.cfg.dataset)
        self.model: Segmentor = build_segmentor(self.cfg.backbone, self.cfg.model, self.num_classes,
                                                load_pretrained=load_pretrained)
        teacher_cfg = self.cfg.method.get("teacher")
        self.teacher = Teacher(self.model, **teacher_cfg) if teacher_cfg else None
        self.train_steps = 0  # training steps completed: the teacher's index; checkpointed
        self._random_states_to_restore: dict | None = None  # a resumed run's, set at its first step
        # `criterion` (top level); checkpoints from before the recipes kept it under dataset
        self.criterion_l = build_criterion(self.cfg.get("criterion") or self.cfg.dataset.get("criterion"))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        # One confusion matrix per evaluated network (DAW and DSSN evaluate student and teacher).
        self.val_confusion = nn.ModuleDict({name: confusion_matrix_metric(self.num_classes)
                                            for name in self.evaluated_networks()})
        self.channels_last = False  # decided once the device is known (_apply_perf)
        self._compiled = False
        self.last_val: dict | None = None
        self.validations = 0  # validations of this fit (checkpointed): results.json's best_from_validations
        self.validated_at = -1  # train_steps at the last validation: were the final weights scored?
        self.best_network = self.evaluated_networks()[0]  # the first until a validation selects one
        self.network_scores: dict[str, float] | None = None  # each network's mIoU at that validation
        self.fixed_network: str | None = None  # validate only this one (eval.py with a recorded selection)
        self._val_examples: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        self._handover_optimizers: list[dict] | None = None

    # -- helpers used by the methods -----------------------------------------------------------
    def supervised_loss(self, out, target: torch.Tensor) -> torch.Tensor:
        """The labeled criterion on the logits, plus `model.aux_weight` x the same on the decoder's
        auxiliary logits when it has them (PSPNet: 0.4)."""
        loss = self.criterion_l(out.logits, target)
        if out.aux is not None:
            loss = loss + float(self.cfg.model.get("aux_weight", 0.0)) * self.criterion_l(out.aux, target)
        return loss

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> ImageNet-normalised float, channels_last when enabled."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def evaluated_networks(self) -> tuple[str, ...]:
        """Names of the networks validated every epoch (`method.evaluate`); val/mIoU is the best of them."""
        choice = self.cfg.method.get("evaluate", "student")
        if choice not in EVALUATED or (choice != "student" and not self.cfg.method.get("teacher")):
            options = list(EVALUATED) if self.cfg.method.get("teacher") else ["student"]
            raise UserError(f"method.evaluate must be one of {options}, got {choice!r}")
        return EVALUATED[choice]

    def networks(self) -> dict[str, nn.Module]:
        """Every network of the method (the student, and the teacher where there is one)."""
        return {"model": self.model} | ({"teacher": self.teacher} if self.teacher is not None else {})

    def network(self, name: str) -> nn.Module:
        return self.networks()[name]

    def inference_model(self) -> nn.Module:
        """The network used for prediction: the one that scored best at the last validation."""
        return self.network(self.best_network)

    def _apply_perf(self) -> None:
        """channels_last (NHWC convolutions, auto = on GPU) and torch.compile of the segmentor
        (in place, so state-dict keys do not change)."""
        perf = self.cfg.get("perf", {})
        setting = perf.get("channels_last", "auto")
        self.channels_last = self.device.type == "cuda" if setting == "auto" else bool(setting)
        compile_with = perf.get("compile", False)  # true (inductor) or a torch.compile backend's name
        for net in self.networks().values():
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
            if compile_with and not self._compiled:
                net.compile(**({"backend": compile_with} if isinstance(compile_with, str) else {}))
        self._compiled = self._compiled or bool(compile_with)

    def on_fit_start(self) -> None:
        self._apply_perf()
        if self._handover_optimizers is not None:
            # Momentum buffers of the previous fit; lr and the other hyperparameters stay this fit's
            # (the continued poly schedule), so the round's first step does not run at the old last lr.
            for optimizer, old in zip(self.trainer.optimizers, self._handover_optimizers):
                groups = optimizer.state_dict()["param_groups"]
                optimizer.load_state_dict({"state": old["state"], "param_groups": groups})
            self._handover_optimizers = None

    def continue_from(self, checkpoint_path: str | Path) -> None:
        """Start this fit where another one ended (an offline method's next round): its weights,
        statistics and teacher now, its optimizers' momentum when the fit starts."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        self.load_state_dict(checkpoint["state_dict"])
        self.train_steps = int(checkpoint.get("train_steps", 0))
        self._handover_optimizers = checkpoint["optimizer_states"]

    # -- the step counter and the teacher ----------------------------------------------------------
    def on_train_start(self) -> None:
        self._set_teacher_epoch()  # Lightning skips on_train_epoch_start when it resumes mid-epoch

    def on_train_epoch_start(self) -> None:
        self._set_teacher_epoch()

    def _set_teacher_epoch(self) -> None:
        if self.teacher is not None:
            self.teacher.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._random_states_to_restore is not None:  # the first step after a resume: as if never stopped
            set_random_states(self._random_states_to_restore)
            self._random_states_to_restore = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.step_completed()

    def step_completed(self) -> None:
        """After every training step (one student update, whatever the number of optimizers): the
        teacher's update, indexed by the steps done before this one, then the counter. Training,
        the benchmark and the tests all go through here."""
        if self.teacher is not None:
            self.teacher.update(self.model, self.train_steps, self.current_epoch)
        self.train_steps += 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["train_steps"] = self.train_steps
        checkpoint["validations"], checkpoint["validated_at"] = self.validations, self.validated_at
        # The network the last validation reported, and every evaluated network's mIoU there (None before the
        # first validation: best_network is then only the default). ModelCheckpoint saves best.ckpt after
        # on_validation_epoch_end, so best.ckpt records the selection that made it the best.
        checkpoint["best_network"] = self.best_network
        checkpoint["network_scores"] = self.network_scores
        checkpoint["random_states"] = random_states()  # saved between two steps: those of the next step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.train_steps = int(checkpoint.get("train_steps", 0))
        self.validations = int(checkpoint.get("validations", 0))
        self.validated_at = int(checkpoint.get("validated_at", -1))
        # Restored at the next step, after Lightning's set-up (sanity validation, new iterators) has drawn.
        self._random_states_to_restore = checkpoint.get("random_states")
        self.restore_selection(checkpoint)

    def restore_selection(self, checkpoint: dict) -> bool:
        """Take the checkpoint's recorded network as the inference network; True when a validation selected
        it. Checkpoints written before `network_scores` existed recorded only the last validation's choice."""
        recorded = checkpoint.get("best_network")
        if recorded not in self.evaluated_networks():
            return False
        self.best_network = recorded
        self.network_scores = checkpoint.get("network_scores")
        return self.network_scores is not None or "network_scores" not in checkpoint

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader, on the class of the checkpoint's method (`SemiSegModule.load_from_checkpoint` of
        a DAW checkpoint returns a DAW module: the base class lacks DAW's state) and without reading the
        pretrained backbone file (the checkpoint holds every weight). For prediction, `sslseg.Segmenter` is
        simpler: it also applies the evaluation protocol and the recorded network."""
        from hydra.utils import get_class

        from sslseg.checkpoint import read_checkpoint

        _, cfg = read_checkpoint(checkpoint_path)
        target = get_class(str(cfg.method._target_))
        if not issubclass(target, cls):
            raise UserError(f"{checkpoint_path} is a {cfg.method.name} checkpoint ({target.__name__}), "
                            f"not a {cls.__name__}")
        kwargs.setdefault("load_pretrained", False)
        load = super(SemiSegModule, target).load_from_checkpoint
        return load(checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs)

    def step_uncounted(self, optimizer: torch.optim.Optimizer, clip_norm: float | None = None) -> None:
        """Step a second optimizer (manual optimisation) without Lightning's wrapper, so that global_step,
        trainer.max_steps and logging count training steps. With a grad scaler (16-mixed) its gradients are
        unscaled first and an overflowing step is skipped, as the scaler does for the counted optimizer;
        call it before that optimizer's step, whose wrapper updates the scaler."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_norm:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()

    def on_validation_start(self) -> None:
        self._apply_perf()

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer, schedule = self.build_optimizer(self.model)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def build_optimizer(self, network: nn.Module, optim_cfg: DictConfig | None = None):
        """The optimizer of `optim_cfg` (default `optim`: a `_target_` class with `_partial_: true`, conf/optim/)
        over a network's trainable parameters, with its poly schedule. The parameters form one group per
        `optim.lr_mult` entry that matches them, at lr x that multiplier (`param_groups`)."""
        optim_cfg = self.cfg.optim if optim_cfg is None else optim_cfg
        groups = param_groups(network, float(optim_cfg.lr), optim_cfg.get("lr_mult") or {})
        optimizer = instantiate_optimizer(optim_cfg, groups, self.device.type == "cuda")
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.poly_factor())

    def poly_factor(self):
        """The poly decay factor at training step i of this fit: (1 - (offset + i - lag)/(offset + total))^power.

        lag (`method.poly_lag`, default 1): UniMatch, DAW and DSSN set the new lr after the optimizer step
        of iteration i from i, so iterations 0 and 1 both use the base lr; semseg (DARS) sets it from i + 1
        (lag 0). offset (`optim.schedule_offset_epochs` x steps per epoch): an offline method's later
        round continues the schedule of the earlier ones (DARS's round 1 starts at base (1 - 0.5)^0.9)."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        offset_epochs = float(self.cfg.optim.get("schedule_offset_epochs", 0))
        offset = int(offset_epochs * self.trainer.num_training_batches) if offset_epochs else 0
        lag, power, end = int(self.cfg.method.get("poly_lag", 1)), float(self.cfg.optim.poly_power), offset + total
        return lambda i: (1 - min(max(i - lag, 0) + offset, end) / end) ** power

    # -- validation ------------------------------------------------------------------------------
    def _scores(self, model: nn.Module, x: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """Class scores (B, K, H, W) of a normalised batch, with the dataset's evaluation protocol."""
        return predict_with(lambda t: model(t).logits, x, self.num_classes, self.cfg.dataset.eval)

    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for uint8 images from the inference network."""
        return self._scores(self.inference_model(), self.normalize(images))

    def validated_networks(self) -> tuple[str, ...]:
        """The networks this validation scores: the evaluated ones, or only `fixed_network` when set."""
        return (self.fixed_network,) if self.fixed_network else tuple(self.val_confusion)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = self.normalize(batch["image"])  # once, whatever the number of evaluated networks
        preds = {}
        for name in self.validated_networks():
            preds[name] = self._labels(self._scores(self.network(name), x, batch), batch)
            self.val_confusion[name].update(preds[name], batch["mask"])
        self._keep_examples(batch, preds)

    test_step = validation_step

    def _labels(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        """argmax of the scores, or, with `dataset.eval.crf` (Learning-Pseudo-Label's stage-2 test), of their
        DenseCRF refinement, image by image on the CPU (sslseg/crf.py; an evaluation option, slow)."""
        eval_cfg = self.cfg.dataset.eval
        if not eval_cfg.get("crf"):
            return scores.argmax(1)
        from sslseg.crf import dense_crf

        probs = scores if returns_probabilities(eval_cfg) else scores.float().softmax(1)
        images = batch["image"].permute(0, 2, 3, 1).cpu().numpy()
        refined = [dense_crf(image, p) for image, p in zip(images, probs.float().cpu().numpy())]
        return torch.from_numpy(np.stack(refined)).to(scores.device).argmax(1)

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
        self._log_media(iou)

    on_test_epoch_end = on_validation_epoch_end

    # -- W&B media: per-class table and prediction overlays of a fixed set of val images -------------
    def _wandb(self) -> WandbLogger | None:
        if self._trainer is None or not self.trainer.is_global_zero:  # a module validated by hand has no trainer
            return None
        return next((logger for logger in self.loggers if isinstance(logger, WandbLogger)), None)

    def _keep_examples(self, batch: dict, preds: dict[str, torch.Tensor]) -> None:
        """Keep the first val images with every network's prediction; the reported one is logged."""
        wanted = int(self.cfg.get("callbacks", {}).get("val_images", 0))
        if self._wandb() is None or len(self._val_examples) >= wanted:
            return
        for i in range(min(wanted - len(self._val_examples), batch["image"].shape[0])):
            self._val_examples.append((batch["image"][i].permute(1, 2, 0).cpu().numpy(), batch["mask"][i].cpu().numpy(),
                                       {name: p[i].cpu().numpy() for name, p in preds.items()}))

    def _log_media(self, iou: torch.Tensor) -> None:
        wandb_logger = self._wandb()
        if wandb_logger is None:
            return
        step = self.global_step
        wandb_logger.log_table("val/per_class_IoU", columns=["class", "IoU"],
                               data=[[n, float(v)] for n, v in zip(self.class_names, iou)], step=step)
        if self._val_examples:
            labels = dict(enumerate(self.class_names)) | {IGNORE_INDEX: "ignore"}
            wandb_logger.log_image(
                "val/predictions", images=[img for img, _, _ in self._val_examples], step=step,
                masks=[{"prediction": {"mask_data": p[self.best_network].astype(np.uint8), "class_labels": labels},
                        "ground_truth": {"mask_data": m.astype(np.uint8), "class_labels": labels}}
                       for _, m, p in self._val_examples],
            )
        self._val_examples = []
