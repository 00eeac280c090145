"""SemiSegModule: the contract every method implements, and what all methods share.

A method subclasses it, names the data streams it consumes (`data_streams`), and writes `training_step` as its
algorithm box. Images arrive as uint8; `normalize` turns them into ImageNet-normalised float tensors on the device.
The module owns the networks (`model`, the student, and `teacher`, an averaged copy, when the method config has a
`teacher` section), the supervised criterion, the optimizer with its poly schedule, and the count of training steps
(the teacher's index). `NetworkValidation` (validation.py) scores the networks. Infrastructure lives in callbacks:
checkpoints and random states (sslseg.run.checkpoint.RunCheckpoints; HandOver between an offline method's stages)
and the logged prediction images (sslseg.run.loggers.ValidationMedia).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslseg.errors import UserError
from sslseg.methods.losses import build_criterion
from sslseg.methods.optim import instantiate_optimizer, param_groups
from sslseg.methods.teacher import Teacher
from sslseg.methods.validation import NetworkValidation
from sslseg.models import Segmentor, build_segmentor
from sslseg.models.segmentor import method_network


class SemiSegModule(NetworkValidation, pl.LightningModule):
    # Semi-and-weakly supervised methods read image-level tags of the unlabeled images: results.json says so,
    # since their numbers do not compare with the purely semi-supervised ones.
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
        names = self.cfg.dataset.get("class_names")
        self.class_names = list(names) if names else [f"class_{i}" for i in range(self.num_classes)]
        self.model: Segmentor = build_segmentor(self.cfg.backbone, self.cfg.model, self.num_classes,
                                                load_pretrained=load_pretrained)
        teacher_cfg = self.cfg.method.get("teacher")
        self.teacher = Teacher(self.model, **teacher_cfg) if teacher_cfg else None
        self.train_steps = 0  # training steps completed: the teacher's index; checkpointed
        # `criterion` (top level); checkpoints from before the recipes kept it under dataset
        self.criterion_l = build_criterion(self.cfg.get("criterion") or self.cfg.dataset.get("criterion"))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.channels_last, self._compiled = False, False  # decided once the device is known (configure_model)
        self.init_validation()

    # -- the method's building blocks ----------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """Every network of the method (the student, and the teacher where there is one)."""
        return {"model": self.model} | ({"teacher": self.teacher} if self.teacher is not None else {})

    def network(self, name: str) -> nn.Module:
        return self.networks()[name]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> ImageNet-normalised float, channels_last when enabled."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def supervised_loss(self, out, target: torch.Tensor) -> torch.Tensor:
        """The labeled criterion on the logits, plus `model.aux_weight` x the same on the decoder's
        auxiliary logits when it has them (PSPNet: 0.4)."""
        loss = self.criterion_l(out.logits, target)
        if out.aux is not None:
            loss = loss + float(self.cfg.model.get("aux_weight", 0.0)) * self.criterion_l(out.aux, target)
        return loss

    def encoder_passes(self, batch: dict) -> int:
        """Encoder (backbone) passes, over all networks, that one training step on `batch` runs: what the
        method's cost is counted in, and what the contract test checks."""
        return 1

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The sum (or mean) of `tensor` over the DDP ranks: statistics a method keeps of the global batch."""
        return tensor if self._trainer is None else self.trainer.strategy.reduce(tensor, reduce_op=op)

    # -- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer, schedule = self.build_optimizer(self.model)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def build_optimizer(self, network: nn.Module, optim_cfg: DictConfig | None = None):
        """The optimizer of `optim_cfg` (default `optim`: a `_target_` class, conf/optim/) over a network's trainable
        parameters, one group per matching `optim.lr_mult` entry at lr x that multiplier, with its poly schedule."""
        optim_cfg = self.cfg.optim if optim_cfg is None else optim_cfg
        groups = param_groups(network, float(optim_cfg.lr), optim_cfg.get("lr_mult") or {})
        optimizer = instantiate_optimizer(optim_cfg, groups, self.device.type == "cuda")
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.poly_factor())

    def poly_factor(self):
        """The poly decay factor at training step i of this fit: (1 - (offset + i - lag)/(offset + total))^power.
        lag (`method.poly_lag`, default 1): the lr set after step i from i, so steps 0 and 1 both use the base lr
        (0: from i + 1). offset (`optim.schedule_offset_epochs` x steps per epoch): a later round of an offline
        method continues the schedule of the earlier ones."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        offset_epochs = float(self.cfg.optim.get("schedule_offset_epochs", 0))
        offset = int(offset_epochs * self.trainer.num_training_batches) if offset_epochs else 0
        lag, power, end = int(self.cfg.method.get("poly_lag", 1)), float(self.cfg.optim.poly_power), offset + total
        return lambda i: (1 - min(max(i - lag, 0) + offset, end) / end) ** power

    def manual_step(self, loss: torch.Tensor, *optimizers, clip_norm: float | None = None) -> None:
        """A manual-optimisation step (methods with two optimizers): zero the gradients, one backward, the other
        optimizers' steps (clipped at `clip_norm`), the first optimizer's step, then every poly schedule.

        Only the first optimizer's step goes through Lightning's wrapper, so that global_step, trainer.max_steps and
        logging count training steps. With a grad scaler (16-mixed) the others' gradients are unscaled first and an
        overflowing step is skipped, as the scaler does for the first, whose wrapper then updates the scaler."""
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        for optimizer in (o.optimizer for o in optimizers[1:]):
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip_norm:
                torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                               clip_norm)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
        optimizers[0].step()
        schedules = self.lr_schedulers()
        for schedule in schedules if isinstance(schedules, list) else [schedules]:
            schedule.step()

    # -- the step counter and the teacher ------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        if self.teacher is not None:
            self.teacher.set_epoch(self.current_epoch)

    def on_train_start(self) -> None:  # Lightning skips on_train_epoch_start when it resumes mid-epoch
        SemiSegModule.on_train_epoch_start(self)

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
        self.save_selection(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.train_steps = int(checkpoint.get("train_steps", 0))
        self.restore_selection(checkpoint)

    # -- performance switches ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """`perf.channels_last` (NHWC convolutions; auto = on GPU) and `perf.compile` (torch.compile of every
        network, in place so that state-dict keys do not change), once the trainer has chosen the device."""
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        perf = self.cfg.get("perf", {})
        setting = perf.get("channels_last", "auto")
        self.channels_last = device.type == "cuda" if setting == "auto" else bool(setting)
        compile_with = perf.get("compile", False)  # true (inductor) or a torch.compile backend's name
        for net in self.networks().values():
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
            if compile_with and not self._compiled:
                net.compile(**({"backend": compile_with} if isinstance(compile_with, str) else {}))
        self._compiled = self._compiled or bool(compile_with)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader, on the class of the checkpoint's method (whichever class it is called on) and without
        reading the pretrained backbone file (the checkpoint holds every weight). For prediction, `sslseg.Segmenter`
        is simpler: it also applies the evaluation protocol."""
        from hydra.utils import get_class

        from sslseg.run.checkpoint import read_checkpoint

        _, cfg = read_checkpoint(checkpoint_path)
        target = get_class(str(cfg.method._target_))
        if not issubclass(target, cls):
            raise UserError(f"{checkpoint_path} is a {cfg.method.name} checkpoint ({target.__name__}), "
                            f"not a {cls.__name__}")
        kwargs.setdefault("load_pretrained", False)
        load = super(SemiSegModule, target).load_from_checkpoint
        return load(checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs)
