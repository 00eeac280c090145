"""SemiSegDataModule: one DataModule for every method and dataset.

Training streams (what a method asks for through its `data_streams`):
  labeled    LabeledDataset, the labeled list repeated to the unlabeled length;
  unlabeled  UnlabeledDataset (weak, strong1, strong2, ignore, box1, box2);
  mix        a second unlabeled stream for the CutMix partners. Its own shuffle draws *other*
             images than `unlabeled` at each position: the reference zips two loaders with
             identical samplers and so mixes each image with itself;
  pseudo     images with the pseudo-labels an offline method generated (`pseudo_list`: a split
             list whose mask paths start at the list's folder), augmented as the labeled crops;
  tagged     every training image (labeled and unlabeled lists) with its image-level class tags, only
             cropped; the labeled stream then carries tags too (PCT). Tags come from `dataset.tags_file`
             or from the masks (sslseg/data/tags.py).
All streams have the same length, so one epoch = one pass over the unlabeled list (or, with
`data.epoch_length=labeled` for a labeled-only stage, over the labeled list), and they are zipped
by Lightning's CombinedLoader. Each stream has its own seeds (shuffle and augmentation), and
its `EpochSampler` shards it across DDP ranks (Lightning's sampler replacement is off).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sslseg.data.batch import per_device_batch
from sslseg.data.datasets import (
    EpochSampler,
    EvalDataset,
    LabeledDataset,
    TaggedDataset,
    UnlabeledDataset,
    seed_worker,
)
from sslseg.data.splits import check_files_exist, no_split_chosen, read_split_file, require_splits_dir, split_files
from sslseg.data.toy import ensure_toy_dataset
from sslseg.errors import UserError

STREAM_IDS = {"labeled": 0, "unlabeled": 1, "mix": 2, "pseudo": 3, "tagged": 4}
EPOCH_LENGTHS = ("unlabeled", "labeled", "all")  # each stream's own seeds: (seed, id)


class ShardedEvalSampler(DistributedSampler):
    """rank r evaluates indices r, r+W, r+2W, ...: unlike DistributedSampler it never pads with
    repeated images, so no val image is counted twice. (A DistributedSampler subclass, so
    Lightning keeps it instead of replacing it.)"""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


class SemiSegDataModule(pl.LightningDataModule):
    def __init__(self, dataset: DictConfig, data: DictConfig, data_root: str, split: str | int | None,
                 streams: tuple[str, ...] = ("labeled", "unlabeled"), seed: int = 0,
                 pseudo_list: str | Path | None = None):
        super().__init__()
        unknown = set(streams) - set(STREAM_IDS)
        if unknown:
            raise UserError(f"unknown data streams {sorted(unknown)}; known: {list(STREAM_IDS)}")
        self.pseudo_list = None if pseudo_list is None else Path(pseudo_list)
        self.resume_position: tuple[int, int] | None = None  # (epoch, steps run in it) of a resumed run
        self.dataset_cfg = dataset
        self.data_cfg = data
        self.root = Path(data_root)
        self.split = None if split is None else str(split)
        self.streams = tuple(streams)
        self.seed = seed
        self.train_sets: dict[str, Dataset] = {}
        self.val_set: EvalDataset | None = None

    @property
    def is_toy(self) -> bool:
        return self.dataset_cfg.name == "toy"

    @property
    def splits_dir(self) -> Path:
        return Path(self.dataset_cfg.splits_dir)

    @property
    def world_size(self) -> int:
        return 1 if self.trainer is None else self.trainer.world_size

    @property
    def batch_size(self) -> int:
        """Images per stream and step on this device: data.global_batch_size over the trainer's devices
        when set, else data.batch_size (sslseg/data/batch.py). Read from the attached trainer, so every
        DDP process derives the same."""
        return per_device_batch(self.data_cfg, self.world_size)

    # -- set-up -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.is_toy:
            ensure_toy_dataset(self.root)
        elif not self.root.is_dir():
            raise UserError(
                f"dataset root not found: {self.root} (set paths.data_root=<folder of {self.dataset_cfg.name}>)")

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        if not self.root.is_dir():
            raise UserError(f"dataset root not found: {self.root} (set paths.data_root)")
        val_list = require_splits_dir(self.splits_dir) / "val.txt"
        training = stage in (None, "fit") and (self.split is not None or bool(self.streams))  # else: val set only
        if training and self.split is None:  # dataset=custom leaves it open when its splits folder has several
            raise no_split_chosen(self.splits_dir)
        num_classes = int(self.dataset_cfg.num_classes)
        zero_is_ignored = bool(self.dataset_cfg.get("reduce_zero_label", False))  # ADE20K's masks (not pseudo-labels)
        val_samples = read_split_file(val_list, need_masks=True)
        check_files_exist(val_samples, self.root, val_list, with_masks=True)
        self.val_set = EvalDataset(self.root, val_samples, num_classes, zero_is_ignored)
        if not training:
            return

        files = split_files(self.splits_dir, self.split)
        labeled = read_split_file(files.labeled, need_masks=True)
        check_files_exist(labeled, self.root, files.labeled, with_masks=True)
        unlabeled = read_split_file(files.unlabeled, need_masks=False)
        check_files_exist(unlabeled, self.root, files.unlabeled, with_masks=False)

        crop, scales = int(self.dataset_cfg.crop_size), tuple(self.dataset_cfg.scale_range)
        by = self.data_cfg.get("epoch_length", "unlabeled")
        if by not in EPOCH_LENGTHS:
            raise UserError(f"data.epoch_length must be one of {list(EPOCH_LENGTHS)}, got {by!r}")
        epoch_list, epoch_length = {"labeled": (files.labeled, len(labeled)),
                                    "unlabeled": (files.unlabeled, len(unlabeled)),
                                    "all": (files.unlabeled, len(labeled) + len(unlabeled))}[by]
        step_images = self.batch_size * self.world_size  # a step's images over all devices
        if epoch_length < step_images:
            raise UserError(f"{epoch_list} has {epoch_length} images, fewer than one step's batch ({step_images})")
        seed = lambda name: (self.seed, STREAM_IDS[name])
        geometric_aug = OmegaConf.to_container(self.data_cfg.get("geometric_aug") or OmegaConf.create({}))
        tags = self._tags(labeled + unlabeled) if "tagged" in self.streams else None
        self.train_sets["labeled"] = LabeledDataset(self.root, labeled, num_classes, crop, scales, length=epoch_length,
                                                    seed=seed("labeled"), geometric_aug=geometric_aug,
                                                    tags=None if tags is None else tags[: len(labeled)],
                                                    zero_is_ignored=zero_is_ignored)
        if "tagged" in self.streams:
            self.train_sets["tagged"] = TaggedDataset(self.root, labeled + unlabeled, tags,
                                                      [True] * len(labeled) + [False] * len(unlabeled), num_classes,
                                                      crop, seed=seed("tagged"), zero_is_ignored=zero_is_ignored)
        strong_aug = OmegaConf.to_container(self.data_cfg.strong_aug)
        for name in ("unlabeled", "mix"):
            if name in self.streams:
                self.train_sets[name] = UnlabeledDataset(self.root, unlabeled, crop, scales, seed=seed(name),
                                                         strong_aug=strong_aug, geometric_aug=geometric_aug)
        if "pseudo" in self.streams:
            if self.pseudo_list is None:
                raise UserError("the pseudo stream needs pseudo-labels: put a generate stage before this one")
            pseudo = read_split_file(self.pseudo_list, need_masks=True)
            check_files_exist(pseudo, self.root, self.pseudo_list, with_masks=False)
            self.train_sets["pseudo"] = LabeledDataset(self.root, pseudo, num_classes, crop, scales,
                                                       seed=seed("pseudo"), mask_root=self.pseudo_list.parent,
                                                       geometric_aug=geometric_aug)

    def _tags(self, samples) -> list:
        from sslseg.data.tags import dataset_tags

        return dataset_tags(samples, self.root, self.dataset_cfg)

    # -- loaders ----------------------------------------------------------------------------------
    def _loader_kwargs(self) -> dict:
        workers = int(self.data_cfg.num_workers)
        pin = self.data_cfg.pin_memory
        if pin == "auto":
            pin = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return dict(num_workers=workers, pin_memory=bool(pin), worker_init_fn=seed_worker,
                    persistent_workers=bool(self.data_cfg.persistent_workers) and workers > 0,
                    prefetch_factor=4 if workers > 0 else None)

    def train_dataloader(self):
        rank, world = (0 if self.trainer is None else self.trainer.global_rank), self.world_size
        batch_size = self.batch_size
        kwargs = self._loader_kwargs()
        if not kwargs["persistent_workers"]:
            # An iterator made anew each epoch draws its workers' base seed at the epoch's start; from torch's
            # global generator that draw would sit between two training steps, where a run resumed from an
            # epoch-end checkpoint cannot replay it. (Persistent workers draw once, when the fit starts.)
            kwargs["generator"] = torch.Generator().manual_seed(self.seed)
        loaders = {}
        for name in self.streams:
            sampler = EpochSampler(len(self.train_sets[name]), (self.seed, STREAM_IDS[name]), rank, world,
                                   epoch_source=None if self.trainer is None else self._current_epoch)
            if self.resume_position is not None:
                epoch, batches = self.resume_position
                sampler.resume_at(epoch, batches * batch_size)
            loaders[name] = DataLoader(self.train_sets[name], batch_size=batch_size, drop_last=True, sampler=sampler,
                                       **kwargs)
        return CombinedLoader(loaders, mode="min_size")

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch

    # -- the data position in checkpoints ---------------------------------------------------------
    # Lightning saves this with every checkpoint and restores it before it builds the loaders (it builds
    # them early, when the lr schedule asks for the number of steps, so a loader's own state_dict, which
    # it loads later, would come too late).
    def state_dict(self) -> dict:
        """Where training is: the epoch and the steps the loop has run in it (not the batches the workers
        have prefetched); at an epoch's end, the start of the next one."""
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:  # fitting includes its validation
            return {}
        epoch = self.trainer.current_epoch
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.resume_position = (int(state["epoch"]), int(state["batches"]))

    def val_dataloader(self):
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = ShardedEvalSampler(self.val_set, self.trainer.world_size, self.trainer.global_rank)
        kwargs = self._loader_kwargs()
        kwargs["persistent_workers"] = False  # validation workers would idle for a whole epoch
        kwargs["num_workers"] = min(kwargs["num_workers"], len(self.val_set))
        if kwargs["num_workers"] == 0:
            kwargs["prefetch_factor"] = None
        return DataLoader(self.val_set, batch_size=int(self.data_cfg.val_batch_size), shuffle=False,
                          sampler=sampler, **kwargs)

    test_dataloader = val_dataloader
