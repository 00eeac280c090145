"""The first training steps of every method on the toy set (crop 32, one CPU thread): each step's loss, a checksum of
the final weights and the optimizers' settings. tests/fixtures/step_fingerprints.json holds them as the code computed
them before the method-contract refactor; tests/test_method_contract.py checks that the code still does, bit for bit
where this machine's kernels are the ones that wrote the file (`kernel_probe`); elsewhere the first step to 1e-6 and
the later ones within 2% (thresholded pseudo-labels amplify rounding differences).

Write the file again (only when a change is meant to alter the step math, saying so in its commit):

    python -m tests.fingerprint_steps tests/fixtures/step_fingerprints.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from sslseg.data.toy import ensure_toy_dataset
from sslseg.methods import method_class
from sslseg.run.cli import compose_config
from sslseg.run.fitting import build_datamodule, trainer_kwargs
from sslseg.run.recipes import stage_config

METHODS = ["supervised", "fixmatch", "unimatch", "daw", "dssn", "ddfp", "dars", "pct"]
STEPS = 5


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def kernel_probe() -> str:
    """A checksum of what a training step's CPU kernels compute on fixed inputs (convolution, batch norm, matmul,
    softmax, bilinear resize, forward and backward, and an SGD step with momentum): equal on two machines when their
    kernels round alike, which is when a bit-for-bit comparison of training steps means something."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 16, generator=generator)
    weight = torch.randn(8, 8, 3, 3, generator=generator).requires_grad_()
    head = torch.randn(8, 4, generator=generator).requires_grad_()
    normed = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, weight, padding=1), None, None,
                                            training=True)
    logits = torch.einsum("bchw,ck->bkhw", normed, head)
    logits = torch.nn.functional.interpolate(logits, size=(24, 24), mode="bilinear", align_corners=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(24 * 24 * 2).remainder(4).view(2, 24, 24))
    loss.backward()
    optimizer = torch.optim.SGD([weight, head], lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        optimizer.step()
    digest = hashlib.sha256()
    for tensor in (logits.softmax(1), weight, head):
        digest.update(tensor.detach().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_steps(method: str, data_dir: str | Path, steps: int = STEPS, overrides: tuple[str, ...] = (),
              callbacks: tuple[Callback, ...] = ()) -> tuple[pl.LightningModule, pl.Trainer]:
    """`steps` training steps of a method's first stage on the toy set, in this process, seeded as train.py seeds."""
    cfg = compose_config([f"method={method}", f"paths.data_dir={data_dir}", "data.num_workers=0", "logger=none",
                          f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "dataset.crop_size=32",
                          *overrides])
    if cfg.method.get("stages"):
        first = next(iter(cfg.method.stages.values()))
        cfg = stage_config(cfg, first, 0)
        OmegaConf.update(cfg, "trainer.max_steps", steps)
    pl.seed_everything(0, workers=True, verbose=False)
    cls = method_class(cfg)
    datamodule = build_datamodule(cfg, cls.data_streams(cfg.method), split=cfg.split)
    module = cls(cfg)
    kwargs = trainer_kwargs(cfg)
    kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    trainer = pl.Trainer(**kwargs, callbacks=list(callbacks))
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def weights_checksum(module: torch.nn.Module) -> tuple[str, float]:
    """(sha256 of every state-dict tensor's bytes, the sum of their absolute values in float64)."""
    digest, total = hashlib.sha256(), 0.0
    for key, value in sorted(module.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
        total += float(value.double().abs().sum())
    return digest.hexdigest(), total


def fingerprint(method: str, data_dir: str | Path, steps: int = STEPS) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of a CPU kernel depends on the thread count
    try:
        losses = Losses()
        module, trainer = fit_steps(method, data_dir, steps, callbacks=(losses,))
    finally:
        torch.set_num_threads(threads)
    sha, total = weights_checksum(module)
    settings = ("lr", "momentum", "weight_decay", "betas", "fused", "foreach")
    return {"losses": losses.losses, "weights_sha256": sha, "weights_abs_sum": total,
            "lrs": [[group["lr"] for group in optimizer.param_groups] for optimizer in trainer.optimizers],
            "optimizers": [type(o).__name__ + str({k: v for k, v in o.defaults.items() if k in settings})
                           for o in trainer.optimizers]}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        ensure_toy_dataset(Path(tmp) / "toy")
        out = {"kernel_probe": kernel_probe(), "steps": STEPS, "methods": {}}
        for name in METHODS:
            out["methods"][name] = fingerprint(name, tmp)
            print(name, out["methods"][name]["losses"], flush=True)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
