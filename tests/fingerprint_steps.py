"""Three training steps of every method on the toy set (crop 32): the losses, a checksum of the final weights and
the optimizers' settings, as JSON. Run it before and after a change that must not alter the step math, and compare:

    python -m tests.fingerprint_steps before.json <data dir>    # on the old commit
    python -m tests.fingerprint_steps after.json <data dir>     # on the new one; the two files must be equal

The recipes change (config keys moved, optimizer from config) left every method's file identical on this machine's
CPU. Not a test: the checksums depend on the machine's kernels."""

import hashlib
import json
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from sslseg.cli import compose_config
from sslseg.fitting import build_datamodule, trainer_kwargs
from sslseg.methods.base import method_class
from sslseg.recipes import stage_config

METHODS = ["supervised", "fixmatch", "unimatch", "daw", "dssn", "ddfp", "dars", "pct"]

class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def fingerprint(method: str, data_dir: str) -> dict:
    cfg = compose_config([f"method={method}", f"paths.data_dir={data_dir}", "data.num_workers=0", "logger=none",
                          "trainer.max_steps=3", "trainer.limit_val_batches=0", "dataset.crop_size=32"])
    if cfg.method.get("stages"):
        first = next(iter(cfg.method.stages.values()))
        cfg = stage_config(cfg, first, 0)
        OmegaConf.update(cfg, "trainer.max_steps", 3)
    pl.seed_everything(0, workers=True, verbose=False)
    cls = method_class(cfg)
    dm = build_datamodule(cfg, cls.data_streams(cfg.method), split=cfg.split)
    module = cls(cfg)
    kw = trainer_kwargs(cfg)
    kw.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=3, limit_val_batches=0,
              num_sanity_val_steps=0)
    losses = Losses()
    trainer = pl.Trainer(**kw, callbacks=[losses])
    trainer.fit(module, datamodule=dm)
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    lrs = [[g["lr"] for g in o.param_groups] for o in trainer.optimizers]
    settings = ("lr", "momentum", "weight_decay", "betas", "fused", "foreach")
    return {"losses": losses.losses, "weights": h.hexdigest(), "lrs": lrs,
            "optim": [type(o).__name__ + str({k: v for k, v in o.defaults.items() if k in settings})
                      for o in trainer.optimizers]}


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = {}
    for name in METHODS:
        out[name] = fingerprint(name, sys.argv[2])
        print(name, out[name], flush=True)
    with open(sys.argv[1], "w") as file:
        json.dump(out, file, indent=1)
