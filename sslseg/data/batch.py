"""The batch each device loads: `data.batch_size`, or `data.global_batch_size` split over the devices.

The papers state their batch as a number of GPUs times a batch per GPU (UniMatch: 4 x 2 labeled + 2
unlabeled), and their lr belongs to the product, the global batch. A recipe that gives the global batch
reproduces the setting on any device count that divides it: 8 images per step are 8 per device on one
GPU and 2 per device on four, with the same lr (no scaling). The world size is only known once the
Trainer has resolved `trainer.devices` (-1 = every GPU) and `trainer.num_nodes`, so the DataModule
asks here when it builds its loaders, in every DDP process alike.

Both batch sizes count the images of one stream: a global batch of 8 is 8 labeled + 8 unlabeled images.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from sslseg.errors import UserError


def per_device_batch(data_cfg: DictConfig, world_size: int) -> int:
    """Images per stream that one device loads per step. `data.global_batch_size` (when set) wins over
    `data.batch_size`; a global batch that the devices cannot share equally is the user's to fix."""
    global_batch = data_cfg.get("global_batch_size")
    if global_batch is None:
        return int(data_cfg.batch_size)
    global_batch = int(global_batch)
    if global_batch < 1:
        raise UserError(f"data.global_batch_size={global_batch}: expected a positive integer or null")
    if global_batch % world_size:
        raise UserError(f"data.global_batch_size={global_batch} cannot be shared equally by {world_size} devices "
                        f"(trainer.devices x trainer.num_nodes): use a device count that divides {global_batch}, "
                        f"or a global batch that is a multiple of {world_size}")
    return global_batch // world_size


def describe_batch(data_cfg: DictConfig, world_size: int) -> tuple[int, int, str]:
    """(per-device batch, global batch, the line the run's start block says about them)."""
    batch = per_device_batch(data_cfg, world_size)
    if data_cfg.get("global_batch_size") is not None:
        line = (f"batch: {batch} per device x {world_size} device(s) = data.global_batch_size {batch * world_size} "
                "(data.batch_size is not used)")
    else:
        line = f"batch: {batch} per device x {world_size} device(s) (data.batch_size)"
    return batch, batch * world_size, line


def announce_batch(data_cfg: DictConfig, world_size: int) -> tuple[int, int]:
    """(per-device batch, global batch) of a fit, said once on rank 0 when the global batch was asked for."""
    batch, global_batch, line = describe_batch(data_cfg, world_size)
    if data_cfg.get("global_batch_size") is not None:
        _say(line)
    return batch, global_batch


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)
