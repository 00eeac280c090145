"""The GPU check: `make gpu-check` (`python -m sslseg.perf.gpu_check`), and its CPU dry run `make gpu-check DRY=1`.

One command that measures, on a CUDA device, what a lease of a few minutes can tell:

  tests      the tests marked `gpu` (CUDA-only: the fast path against fp32 on the device);
  steps      the training step of every method at its published network, crop and global batch, in fp32,
             bf16 and bf16 + channels_last (and fp16 with a grad scaler where the release used it): ms per
             step, pairs/s, FLOPs (torch's counter), achieved TFLOP/s and the share of the device's dense
             bf16 peak, peak memory, and the host synchronisations of one step;
  compile    the UniMatch step compiled (torch.compile of the segmentor), bf16 + channels_last;
  pipeline   the training loaders (all streams, the recipe's workers and more) on a generated Pascal-like
             tree, in steps/s, against the fastest step's consumption;
  inference  whole-image and sliding-window prediction (Cityscapes 1024 x 2048, window 801);
  curves     300 UniMatch steps on the generated tree in fp32 and in bf16 from the same seed: both loss
             curves and their largest relative gap.

Each section runs in its own process under its own time limit, so a slow or hung section cannot take
the others' time; a section writes its rows as it measures them, so one stopped at its limit keeps
what it measured and says where it stopped. The report is <out>/gpu.md and <out>/gpu.json.

The dry run (`--dry`) runs every section on the CPU at tiny sizes (tiny networks, crop 32, a few steps),
so that the real run cannot fail on a typo. It writes to outputs/gpu-check-dry/ by default, never over
docs/gpu.md, which holds the last real run's figures.

    python -m sslseg.perf.gpu_check                        # on a CUDA machine: docs/gpu.md, docs/gpu.json
    python -m sslseg.perf.gpu_check --dry                  # on any machine, < 3 minutes
    python -m sslseg.perf.gpu_check --sections steps,curves --out /tmp/check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

SECTIONS = ("tests", "steps", "compile", "profile", "pipeline", "inference", "curves")
# Seconds per section on a GPU (8 minutes in all) and in the dry run (under 3 minutes on 2 CPU cores).
LIMITS = {"tests": 20, "steps": 190, "compile": 90, "profile": 35, "pipeline": 20, "inference": 20, "curves": 105}
DRY_LIMITS = {"tests": 30, "steps": 50, "compile": 40, "profile": 15, "pipeline": 15, "inference": 15,
              "curves": 25}
GRACE_SECONDS = 10  # past its limit a section's process is killed; it stops starting new work before that
ROOT = Path(__file__).resolve().parents[2]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets; matched by substring of
# torch.cuda.get_device_name(), first match wins. A device missing here gets no share-of-peak column.
DENSE_BF16_PEAK_TFLOPS = (
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2), ("RTX A6000", 154.8), ("RTX 3090", 71.0),
)

# The training step of every method at its published setting: (row, config overrides, precisions beyond
# fp32/bf16/bf16+channels_last, streams, description). The recipes carry network, crop and global batch.
STEP_CASES = (
    ("unimatch", ["method=unimatch", "dataset=pascal"], (), None, "UniMatch, Pascal: R101 DeepLabV3+, crop 321, 8 + 8"),
    ("supervised", ["method=supervised", "dataset=pascal", "data.global_batch_size=8"], (), None,
     "supervised, Pascal: R101 DeepLabV3+, crop 321, 8"),
    ("fixmatch", ["method=fixmatch", "dataset=pascal"], (), None, "FixMatch, Pascal: R101 DeepLabV3+, crop 321, 8 + 8"),
    ("daw", ["method=daw", "dataset=pascal"], (), None, "DAW, Pascal: R101 DeepLabV3+, crop 513, 8 + 8"),
    ("dssn", ["method=dssn", "dataset=pascal"], (), None, "DSSN, Pascal: R101 DeepLabV3+, crop 513, 8 + 8"),
    # The full step of epochs >= 2 (flow-perturbed), not the supervised epoch 0.
    ("ddfp", ["method=ddfp", "dataset=pascal", "method.sup_only_epochs=0", "method.flow_start_epoch=-1",
              "method.teacher.copy_epochs=0"], ("fp16",), None,
     "DDFP, Pascal: U2PL R101 DeepLabV3+ + flow, crop 513, 16 + 16"),
    # A round >= 1 step: a labeled and a pseudo-labelled batch, each its own forward.
    ("dars", ["method=dars", "dataset=cityscapes"], (), ("labeled", "pseudo"),
     "DARS round step, Cityscapes: PSPNet-50, crop 713, 8 + 8"),
    # Stage 1 (cross training of two networks), the release's 5 + 5 images per step.
    ("pct", ["method=pct", "dataset=pascal", "data.global_batch_size=5"], ("fp16",), None,
     "PCT cross step, Pascal: two R101 DeepLabV3+ (OS8), crop 384, 5 + 5"),
    ("unimatch_xception", ["method=unimatch", "dataset=coco"], (), None,
     "UniMatch, COCO: Xception-65 DeepLabV3+, crop 513, 8 + 8"),
)
PRECISIONS = {  # row label: (Lightning precision, channels_last)
    "fp32": ("32-true", False), "bf16": ("bf16-mixed", False), "bf16+cl": ("bf16-mixed", True),
    "fp16": ("16-mixed", False),
}
DRY_NETWORKS = {"pspnet": "pspnet_tiny", "u2pl_deeplabv3plus": "u2pl_deeplabv3plus_tiny"}
DRY_CROP = 32  # bf16 autocast on a CPU runs a step ~10x slower than fp32, and most rows are bf16


# -- sizes ---------------------------------------------------------------------------------------------
class Sizes:
    """What the sections measure at: the published sizes on a GPU, tiny ones in the dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        # cudnn's autotuning is done in the first step; the CPU has none to do.
        self.warmup, self.steps = (0, 1) if dry else (2, 6)
        self.curve_steps = 6 if dry else 300
        self.pipeline_batches = 4 if dry else 40
        self.inference_repeats = 1 if dry else 5
        self.whole_size = (96, 128) if dry else (375, 500)  # a typical VOC image
        self.sliding_size, self.window = ((96, 192), 32) if dry else ((1024, 2048), 801)
        self.workers = (0, 2) if dry else None  # None: the recipe's, then 8
        self.images = 24 if dry else 240  # the generated Pascal-like tree

    def overrides(self, case_overrides: list[str], cfg_model: str | None = None) -> list[str]:
        base = ["backbone.pretrained=null"]  # no weight files on the device: random init, same speed
        if not self.dry:
            return [*case_overrides, *base]
        tiny = ["backbone=tiny", f"model={DRY_NETWORKS.get(cfg_model, 'deeplabv3plus_tiny')}",
                f"dataset.crop_size={DRY_CROP}", "data.global_batch_size=2"]
        return [*case_overrides, *base, *tiny]


def compose(overrides: list[str], sizes: Sizes):
    from sslseg.run.cli import compose_config

    if not sizes.dry:
        return compose_config(sizes.overrides(overrides))
    family = str(compose_config(overrides).model.name)  # the tiny decoder of the case's decoder family
    return compose_config(sizes.overrides(overrides, family))


def per_step_batch(cfg) -> int:
    return int(cfg.data.global_batch_size or cfg.data.batch_size)


# -- results written as they are measured --------------------------------------------------------------
class Recorder:
    """A section's JSON, rewritten after every row, so that a section killed at its limit keeps its rows."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline = path, deadline
        self.data: dict = {"rows": [], "notes": []}

    def time_left(self) -> float:
        return self.deadline - time.time()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        tmp.replace(self.path)


# -- a few training steps through Lightning --------------------------------------------------------------
class RepeatedBatch:
    """The same (device-resident) batch, `n` times: the step alone, without the loaders."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepProbe:
    """A Lightning callback: times steps [warmup, warmup + steps), then probes one more step: its FLOPs
    (when `count_flops`), on CUDA the host synchronisations it makes (torch's sync debug mode, by Python
    call site) and, when `profile_kernels`, its kernels' total time (torch's profiler). The profiler is
    kept to a process of its own (section `profile`): once on, it slows every later step of the process."""

    def __new__(cls, *args, **kwargs):  # a Callback subclass, built lazily so that importing this is cheap
        import lightning.pytorch as pl

        class _Probe(pl.Callback):
            def __init__(self, warmup: int, steps: int, count_flops: bool, profile_kernels: bool):
                self.warmup, self.steps, self.count_flops = warmup, steps, count_flops
                self.profile_kernels = profile_kernels
                self.seconds = self.flops = self.kernel_seconds = None
                self.syncs: Counter = Counter()

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if batch_idx == self.warmup:
                    _sync()
                    self._start = time.perf_counter()
                elif batch_idx == self.warmup + self.steps:
                    self._probe(True)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if batch_idx == self.warmup + self.steps - 1:
                    _sync()
                    self.seconds = (time.perf_counter() - self._start) / self.steps
                elif batch_idx == self.warmup + self.steps:
                    self._probe(False)

            def _probe(self, start: bool) -> None:
                import torch
                from torch.utils.flop_counter import FlopCounterMode

                cuda = torch.cuda.is_available()
                if start:
                    self._counter = FlopCounterMode(display=False) if self.count_flops else contextlib.nullcontext()
                    self._profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                                      if cuda and self.profile_kernels else contextlib.nullcontext())
                    self._catcher = warnings.catch_warnings(record=True)
                    self._caught = self._catcher.__enter__()
                    warnings.simplefilter("always")
                    if cuda:
                        torch.cuda.set_sync_debug_mode("warn")
                    self._profiler.__enter__()
                    self._counter.__enter__()
                    return
                self._counter.__exit__(None, None, None)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("default")
                self._profiler.__exit__(None, None, None)
                self._catcher.__exit__(None, None, None)
                if self.count_flops:
                    self.flops = self._counter.get_total_flops()
                if cuda and self.profile_kernels:
                    self.kernel_seconds = sum(e.self_device_time_total for e in self._profiler.key_averages()) / 1e6
                for w in self._caught:
                    if "synchroniz" in str(w.message):
                        where = Path(w.filename)
                        self.syncs[f"{where.parent.name}/{where.name}:{w.lineno}"] += 1

        return _Probe(*args, **kwargs)


def run_steps(module, batch: dict, precision: str, warmup: int, steps: int, probed: bool = True,
              count_flops: bool = True, profile_kernels: bool = False) -> dict:
    """warmup + steps timed steps, then one probed step (FLOPs, host syncs, kernel time) unless `probed` is
    false (a compiled network: a dispatch mode would make it recompile), of `module` on `batch` through a
    Lightning Trainer."""
    import lightning.pytorch as pl
    import torch

    probe = StepProbe(warmup, steps, count_flops, profile_kernels)
    total = warmup + steps + int(probed)
    trainer = pl.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=total, max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         benchmark=True, callbacks=[probe])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on loaders and logging: not what is measured
        trainer.fit(module, train_dataloaders=RepeatedBatch(batch, total))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"seconds": probe.seconds, "flops": probe.flops, "peak_mem_gib": peak,
            "kernel_seconds": probe.kernel_seconds,
            "host_syncs": sum(probe.syncs.values()) if torch.cuda.is_available() else None,
            "sync_sites": dict(probe.syncs.most_common(5))}


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS if key in device_name), None)


# -- the sections -------------------------------------------------------------------------------------------
def section_tests(rec: Recorder, sizes: Sizes) -> None:
    import pytest

    tests = ROOT / "tests"
    if not tests.is_dir():
        rec.note(f"no tests folder at {tests}: run from a checkout")
        return
    files = sorted(str(f) for f in tests.glob("test_*.py") if "mark.gpu" in f.read_text())  # collect only these
    args = ["-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(ROOT), *files]
    row = {"command": "pytest -m gpu tests", "exit_code": None, "summary": "stopped at the section's limit",
           "failures": []}
    rec.add(row)  # what stays if the section is killed at its limit
    started, output = time.perf_counter(), rec.path.with_suffix(".pytest.txt")
    # In this process: the stack is imported already (the section is forked from the forkserver that imported it).
    with open(output, "w") as stream, contextlib.redirect_stdout(stream):
        exit_code = int(pytest.main(args))
    lines = [line for line in output.read_text().strip().splitlines() if line.strip()]
    row |= {"exit_code": exit_code, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - started,
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:10]}
    rec.save()


ALL_PRECISIONS = ("unimatch", "daw")  # the cases measured in plain bf16 too; the rest: fp32 and bf16 + channels_last


def section_steps(rec: Recorder, sizes: Sizes, mode: str = "steps") -> None:
    """mode steps: every case; compile: UniMatch compiled, bf16 + channels_last; profile: UniMatch's kernel
    time per step in each precision (the GPU-busy share against the steps section's time)."""
    import torch

    from sslseg.methods import method_class
    from sslseg.perf.bench import synthetic_batch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # sslseg's matmul_precision
    peak = peak_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    # The dry run compiles with the eager backend: the same path through torch.compile without inductor's
    # minute of C++ compilation on a CPU.
    compile_with = ("eager" if sizes.dry else True) if mode == "compile" else False
    margin = 8 if sizes.dry or mode != "compile" else 25  # seconds a row needs to be worth starting
    for name, overrides, extra, streams, description in (STEP_CASES if mode == "steps" else STEP_CASES[:1]):
        cfg = compose(overrides, sizes)
        cls = method_class(cfg)
        torch.manual_seed(0)
        template = cls(cfg, load_pretrained=False)
        batch_size, crop = per_step_batch(cfg), int(cfg.dataset.crop_size)
        batch = synthetic_batch(streams or cls.data_streams(cfg.method), batch_size, crop,
                                template.num_classes, device)
        if mode == "compile":
            precisions = ["bf16+cl"]
        elif mode == "profile" or name in ALL_PRECISIONS:
            precisions = ["fp32", "bf16", "bf16+cl", *extra]
        else:
            precisions = ["fp32", "bf16+cl", *extra]
        flops = None
        for label in precisions:
            row = {"case": name, "description": description, "precision": label, "batch": batch_size, "crop": crop,
                   "backbone": str(cfg.backbone.name), "decoder": str(cfg.model.name)}
            if rec.time_left() < margin:
                rec.add(row | {"skipped": "the section's time limit"})
                continue
            precision, channels_last = PRECISIONS[label]
            if precision == "16-mixed" and device.type != "cuda":
                rec.add(row | {"skipped": "fp16 autocast with a grad scaler needs CUDA"})
                continue
            module = copy.deepcopy(template)
            module.cfg.perf = {"channels_last": channels_last, "compile": compile_with, "matmul_precision": "high"}
            warmup = sizes.warmup + (2 if mode == "compile" else 0)  # compiled: the first steps compile
            try:
                m = run_steps(module, batch, precision, warmup, 1 if mode == "profile" else sizes.steps,
                              probed=mode != "compile", count_flops=mode == "steps" and flops is None,
                              profile_kernels=mode == "profile")  # FLOPs: the same in every precision
            except torch.cuda.OutOfMemoryError:
                rec.add(row | {"skipped": "out of memory"})
                continue
            except Exception as e:  # one broken case must not cost the others their measurement
                rec.add(row | {"skipped": f"failed: {type(e).__name__}: {str(e)[:300]}"})
                continue
            finally:
                del module
                gc.collect()  # the trainer's reference cycles hold the last case's tensors
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if mode == "profile":
                kernel = m["kernel_seconds"]
                rec.add(row | {"kernel_ms": kernel * 1e3 if kernel is not None else None})
                continue
            flops = m["flops"] or flops
            tflops = flops / m["seconds"] / 1e12 if flops else None
            rec.add(row | {"step_ms": m["seconds"] * 1e3, "pairs_per_s": batch_size / m["seconds"],
                           "gflop_per_step": flops / 1e9 if flops else None, "tflops": tflops,
                           "share_of_bf16_peak": tflops / peak if (tflops and peak) else None,
                           "peak_mem_gib": m["peak_mem_gib"], "host_syncs": m["host_syncs"],
                           "sync_sites": m["sync_sites"]})


def section_compile(rec: Recorder, sizes: Sizes) -> None:
    section_steps(rec, sizes, mode="compile")


def section_profile(rec: Recorder, sizes: Sizes) -> None:
    section_steps(rec, sizes, mode="profile")


def make_pascal_like(root: Path, images: int, dry: bool) -> Path:
    """A Pascal-layout tree of smooth random images (VOC's sizes: 500 x 375 or 375 x 500; 96 x 128 dry) with
    21-class masks of random boxes, and split `gen` (1/8 labeled). Written once per folder."""
    import cv2
    import numpy as np

    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(images):
        h, w = ((96, 128) if dry else (375, 500))[:: (1 if i % 3 else -1)]
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            mask[y : y + h // 3, x : x + w // 3] = rng.integers(1, 21)
        stem = f"gen_{i:05d}"
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(root / "SegmentationClass" / f"{stem}.png"), mask)
        lines.append(f"JPEGImages/{stem}.jpg SegmentationClass/{stem}.png")
    split = root / "splits" / "gen"
    split.mkdir(parents=True, exist_ok=True)
    labeled = max(2, images // 8)
    (split / "labeled.txt").write_text("\n".join(lines[:labeled]) + "\n")
    (split / "unlabeled.txt").write_text("\n".join(lines[labeled:]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(lines[: max(2, images // 12)]) + "\n")
    done.touch()
    return root


def tree_overrides(root: Path) -> list[str]:
    return [f"paths.data_root={root}", f"dataset.splits_dir={root / 'splits'}", "split=gen"]


def section_pipeline(rec: Recorder, sizes: Sizes, tree: Path) -> None:
    from sslseg.methods import method_class
    from sslseg.run.fitting import build_datamodule

    cfg = compose(["method=unimatch", "dataset=pascal", *tree_overrides(tree)], sizes)
    cls = method_class(cfg)
    recipe_workers = int(cfg.data.num_workers)
    for workers in sizes.workers or (recipe_workers, 8):
        if rec.time_left() < 5:
            rec.add({"workers": workers, "skipped": "the section's time limit"})
            continue
        cfg.data.num_workers = workers
        dm = build_datamodule(cfg, cls.data_streams(cfg.method), split="gen")
        dm.prepare_data()
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        next(it)  # worker start-up is not throughput
        start, n = time.perf_counter(), 0
        for _ in range(sizes.pipeline_batches):
            try:
                next(it)
            except StopIteration:
                it = iter(dm.train_dataloader())
                next(it)
            n += 1
            if rec.time_left() < 2:
                break
        seconds = time.perf_counter() - start
        rec.add({"workers": workers, "recipe_workers": recipe_workers, "steps_per_s": n / seconds,
                 "batch": per_step_batch(cfg), "crop": int(cfg.dataset.crop_size), "streams": list(dm.streams),
                 "batches": n, "cpu_count": os.cpu_count()})
        del it


def section_inference(rec: Recorder, sizes: Sizes) -> None:
    import torch

    from sslseg.methods import method_class
    from sslseg.perf.bench import inference_throughput

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    runs = (("whole", ["method=unimatch", "dataset=pascal"], sizes.whole_size),
            ("sliding", ["method=unimatch", "dataset=cityscapes"], sizes.sliding_size))
    for mode, overrides, size in runs:
        cfg = compose(overrides, sizes)
        module = method_class(cfg)(cfg, load_pretrained=False).to(device)
        module.cfg.perf = {"channels_last": device.type == "cuda", "compile": False}
        module.configure_model()
        for bf16 in (False, True):
            row = {"mode": mode, "size": list(size), "window": sizes.window if mode == "sliding" else None,
                   "precision": "bf16" if bf16 else "fp32", "backbone": str(cfg.backbone.name)}
            if rec.time_left() < 4:
                rec.add(row | {"skipped": "the section's time limit"})
                continue
            try:
                ips = inference_throughput(module, device, size, mode, sizes.window, bf16, sizes.inference_repeats)
            except Exception as e:  # noqa: BLE001 - recorded, and the next row still runs
                rec.add(row | {"skipped": f"failed: {type(e).__name__}: {str(e)[:300]}"})
                continue
            rec.add(row | {"images_per_s": ips, "ms_per_image": 1e3 / ips})


def section_curves(rec: Recorder, sizes: Sizes, tree: Path) -> None:
    import lightning.pytorch as pl
    import torch

    from sslseg.methods import method_class
    from sslseg.run.fitting import build_datamodule

    device_gpu = torch.cuda.is_available()
    workers = min(8, (os.cpu_count() or 3) // 3) if device_gpu else 0  # per stream: 3 streams
    curves = {}
    for label, precision in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
        cfg = compose(["method=unimatch", "dataset=pascal", *tree_overrides(tree), f"data.num_workers={workers}",
                       "data.persistent_workers=false"], sizes)
        cls = method_class(cfg)
        pl.seed_everything(0, workers=True, verbose=False)
        module = cls(cfg, load_pretrained=False)
        dm = build_datamodule(cfg, cls.data_streams(cfg.method), split="gen")
        budget = rec.time_left() / (2 if label == "fp32" else 1) - 3
        recorder = LossCurve(time.time() + budget)
        trainer = pl.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=sizes.curve_steps,
                             max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             benchmark=True, callbacks=[recorder])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=dm)
        curves[label] = [float(v) for v in torch.stack(recorder.losses).cpu()] if recorder.losses else []
        rec.data["curves"] = curves
        rec.save()
    n = min(len(c) for c in curves.values())
    if n == 0:
        rec.note("no step completed")
        return
    fp32, bf16 = curves["fp32"][:n], curves["bf16"][:n]
    gaps = [abs(b - a) / abs(a) for a, b in zip(fp32, bf16)]
    window = max(1, min(20, n // 5))
    smooth = lambda c: [sum(c[i : i + window]) / window for i in range(n - window + 1)]
    smooth_gaps = [abs(b - a) / abs(a) for a, b in zip(smooth(fp32), smooth(bf16))]
    rec.add({"steps_compared": n, "steps_asked": sizes.curve_steps, "max_relative_gap": max(gaps),
             "max_relative_gap_at_step": gaps.index(max(gaps)), "first_step_relative_gap": gaps[0],
             "smoothing_window": window, "max_relative_gap_smoothed": max(smooth_gaps),
             "final_loss_fp32": fp32[-1], "final_loss_bf16": bf16[-1],
             "mean_last_20_fp32": sum(fp32[-20:]) / len(fp32[-20:]),
             "mean_last_20_bf16": sum(bf16[-20:]) / len(bf16[-20:])})


class LossCurve:
    """A Lightning callback keeping every step's loss (on the device: no sync per step); stops the fit at
    the deadline so that the run after it keeps its time."""

    def __new__(cls, deadline: float):
        import lightning.pytorch as pl

        class _Curve(pl.Callback):
            def __init__(self):
                self.losses = []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.losses.append(loss.detach().float())
                if time.time() > deadline:
                    trainer.should_stop = True

        return _Curve()


def run_section(name: str, result: Path, deadline: float, dry: bool, work: Path) -> None:
    rec = Recorder(result, deadline)
    rec.save()
    sizes = Sizes(dry)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if name in ("pipeline", "curves"):
        tree = make_pascal_like(work / "pascal_like", sizes.images, dry)
        {"pipeline": section_pipeline, "curves": section_curves}[name](rec, sizes, tree)
    else:
        {"tests": section_tests, "steps": section_steps, "compile": section_compile, "profile": section_profile,
         "inference": section_inference}[name](rec, sizes)


# The modules every section imports, imported once by the forkserver that forks the sections' processes: a
# section starts in milliseconds instead of paying the stack's imports (8 s on 2 CPU cores) each time. None of
# them initialises CUDA (a forked process could not use it then); each section does, in its own process.
PRELOAD = ("torch", "lightning.pytorch", "torchmetrics", "hydra", "albumentations", "pytest", "sslseg.methods",
           "sslseg.run.fitting", "sslseg.perf.bench")


def _section_entry(name: str, result: Path, deadline: float, dry: bool, work: Path, log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)  # the section's output (and a traceback) go to its log, shown if it fails
    os.dup2(fd, 2)
    os.close(fd)
    run_section(name, result, deadline, dry, work)


def forkserver():
    """The multiprocessing context whose server has imported PRELOAD; started here (its imports are no section's
    time)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    warm = context.Process(target=time.sleep, args=(0,))  # returns once the server has imported PRELOAD
    warm.start()
    warm.join()
    return context


def run_section_process(context, name: str, result: Path, deadline: float, dry: bool, work: Path,
                        kill_after: float) -> str:
    """Run one section in its own process (forked by `context`'s server), killed `kill_after` seconds on; its
    status for the report."""
    from sslseg.perf import gpu_check  # by its module name, also when this file runs as __main__ (pickled target)

    log = work / f"{name}.log"
    process = context.Process(target=gpu_check._section_entry, args=(name, result, deadline, dry, work, log),
                              name=f"gpu-check-{name}")
    process.start()
    process.join(kill_after)
    if process.is_alive():
        process.kill()
        process.join()
        return "killed at its time limit"
    if process.exitcode != 0:
        text = log.read_text(errors="replace") if log.is_file() else ""
        print(text[-3000:], file=sys.stderr)
        return f"failed (exit {process.exitcode}): " + (text.strip().splitlines() or [""])[-1]
    return "ok"


# -- the run and its report ---------------------------------------------------------------------------------
def environment() -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host": platform.node(), "cpu_count": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
        env["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["dense_bf16_peak_tflops"] = peak_tflops(env["device"])
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return env


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="sslseg GPU check (docs/gpu.md)")
    p.add_argument("--dry", action="store_true", help="every section on the CPU at tiny sizes (< 3 minutes)")
    p.add_argument("--out", default=None, help="report folder (default docs/, dry run outputs/gpu-check-dry/)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    p.add_argument("--limit-scale", type=float, default=1.0, help="multiply every section's time limit")
    p.add_argument("--keep", default=None, help="an earlier gpu.json: the sections not run now are taken from it")
    p.add_argument("--render", default=None, metavar="GPU_JSON", help="only write gpu.md anew from a gpu.json")
    a = p.parse_args(argv)
    if a.render:
        report = json.loads(Path(a.render).read_text())
        Path(a.render).with_suffix(".md").write_text(markdown(report))
        return report

    import torch

    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if not a.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; `make gpu-check DRY=1` runs every section on the CPU")
    out = Path(a.out or ("outputs/gpu-check-dry" if a.dry else ROOT / "docs"))
    out.mkdir(parents=True, exist_ok=True)
    limits = DRY_LIMITS if a.dry else LIMITS
    report = {"environment": environment(), "dry": a.dry, "sections": {},
              "command": "python -m sslseg.perf.gpu_check" + (" --dry" if a.dry else "")}
    started = time.time()
    sections_context = forkserver()
    with tempfile.TemporaryDirectory(prefix="sslseg-gpu-check-") as work:
        for name in sections:
            limit = limits[name] * a.limit_scale
            result = Path(work) / f"{name}.json"
            t0 = time.time()
            print(f"[gpu-check] {name} (limit {limit:.0f} s) ...", flush=True)
            status = run_section_process(sections_context, name, result, t0 + limit, a.dry, Path(work),
                                         limit + GRACE_SECONDS)
            data = json.loads(result.read_text()) if result.is_file() else {"rows": [], "notes": []}
            data |= {"status": status, "seconds": round(time.time() - t0, 1), "limit_seconds": limit}
            report["sections"][name] = data
            print(f"[gpu-check] {name}: {status}, {data['seconds']:.0f} s", flush=True)
    report["total_seconds"] = round(time.time() - started, 1)
    if a.keep:  # the sections this run left out, as an earlier run on this device measured them
        earlier = json.loads(Path(a.keep).read_text())
        for name in SECTIONS:
            if name not in report["sections"] and name in earlier["sections"]:
                kept = earlier["sections"][name]
                kept["from_run"] = kept.get("from_run") or f"{earlier['environment']['date']}, {earlier['command']}"
                report["sections"][name] = kept
        report["sections"] = {name: report["sections"][name] for name in SECTIONS if name in report["sections"]}
        report["command"] += f" --sections {','.join(sections)} --keep {a.keep}"
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "gpu.md").write_text(markdown(report))
    print(f"[gpu-check] {report['total_seconds']:.0f} s in all; report: {out / 'gpu.md'} and {out / 'gpu.json'}")
    return report


# -- the report --------------------------------------------------------------------------------------------
def _f(value, fmt: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _head(name: str, data: dict, title: str) -> list[str]:
    timing = f", {data['seconds']:.0f} s (limit {data['limit_seconds']:.0f} s)" if "seconds" in data else ""
    origin = f"; measured by the run of {data['from_run']}." if data.get("from_run") else "."
    lines = ["", f"## {title}", "", f"Section `{name}`: {data['status']}{timing}{origin}"]
    lines += [f"Note: {n}" for n in data.get("notes", [])]
    return lines + [""]


def fastest(report: dict, case: str) -> dict | None:
    rows = [r for r in report["sections"].get("steps", {}).get("rows", []) if r.get("case") == case and "step_ms" in r]
    return min(rows, key=lambda r: r["step_ms"]) if rows else None


def markdown(report: dict) -> str:
    env, s = report["environment"], report["sections"]
    lines = [f"# GPU check{' (dry run: CPU, tiny sizes; not figures)' if report['dry'] else ''}", "",
             f"Measured by `{report['command']}` on {env['date']}, {report['total_seconds']:.0f} s in all.", "",
             f"- device: {env['device']}" + (f", {env['memory_gib']} GiB" if env.get("memory_gib") else ""),
             f"- driver {env.get('driver') or '–'}, torch {env['torch']}, CUDA {env.get('cuda') or '–'}, "
             f"cuDNN {env.get('cudnn') or '–'}, Python {env['python']}, {env['cpu_count']} CPU cores",
             f"- dense bf16 peak used for the share column: {_f(env.get('dense_bf16_peak_tflops'), '.0f')} TFLOP/s "
             "(NVIDIA datasheet)",
             "- networks are randomly initialised (no weight files needed); the step's speed does not depend on "
             "the weights. fp32 runs with TF32 matmuls and convolutions (sslseg's `perf.matmul_precision=high`)."]
    if "tests" in s:
        lines += _head("tests", s["tests"], "1. CUDA tests")
        for r in s["tests"]["rows"]:
            lines.append(f"`{r['command']}`: exit {r['exit_code']}, {r['summary']}")
            lines += [f"- {f}" for f in r["failures"]]
    kernel_ms = {(r["case"], r["precision"]): r["kernel_ms"] for r in s.get("profile", {}).get("rows", [])
                 if r.get("kernel_ms")}
    for name, title in (("steps", "2. Training steps"), ("compile", "2b. Compiled UniMatch step")):
        if name not in s:
            continue
        lines += _head(name, s[name], title)
        lines += ["| case | network, crop, batch | precision | step (ms) | pairs/s | GFLOP/step | TFLOP/s | "
                  "share of bf16 peak | GPU busy | peak mem (GiB) | host syncs/step |", "|" + "---|" * 11]
        for r in s[name]["rows"]:
            if name == "compile" and r.get("step_ms") and not r.get("gflop_per_step"):
                counted = [q for q in s.get("steps", {}).get("rows", []) if q.get("case") == r["case"]
                           and q.get("gflop_per_step")]  # a compiled step is not counted: the eager one's FLOPs
                if counted:
                    r["gflop_per_step"] = counted[0]["gflop_per_step"]
                    r["tflops"] = r["gflop_per_step"] / r["step_ms"]
                    peak = env.get("dense_bf16_peak_tflops")
                    r["share_of_bf16_peak"] = r["tflops"] / peak if peak else None
            net = f"{r['backbone']} {r['decoder']}, {r['crop']}, {r['batch']}"
            if "skipped" in r:
                lines.append(f"| {r['case']} | {net} | {r['precision']} | skipped: {r['skipped']} |||||||")
                continue
            share = f"{100 * r['share_of_bf16_peak']:.1f}%" if r.get("share_of_bf16_peak") else "–"
            kernel = kernel_ms.get((r["case"], r["precision"])) if name == "steps" else None
            busy = f"{100 * kernel / r['step_ms']:.0f}%" if kernel else "–"
            lines.append(f"| {r['case']} | {net} | {r['precision']} | {r['step_ms']:.1f} | {r['pairs_per_s']:.1f} | "
                         f"{_f(r['gflop_per_step'], '.0f')} | {_f(r['tflops'], '.1f')} | {share} | {busy} | "
                         f"{_f(r['peak_mem_gib'])} | {_f(r['host_syncs'], 'd')} |")
        speedups = []
        for case in dict.fromkeys(r["case"] for r in s[name]["rows"]):
            by = {r["precision"]: r["step_ms"] for r in s[name]["rows"] if r["case"] == case and "step_ms" in r}
            if "fp32" in by and len(by) > 1:
                faster = (f"{p} {by['fp32'] / v:.2f}x" for p, v in by.items() if p != "fp32")
                speedups.append(f"{case} " + ", ".join(faster))
        if speedups:
            lines += ["", "Speed-up over fp32: " + "; ".join(speedups) + "."]
        if name == "compile":
            eager = {r["precision"]: r["step_ms"] for r in s.get("steps", {}).get("rows", [])
                     if r.get("case") == "unimatch" and "step_ms" in r}
            for r in s[name]["rows"]:
                if "step_ms" in r and eager.get(r["precision"]):
                    same, fp32 = eager[r["precision"]] / r["step_ms"], eager.get("fp32", math.nan) / r["step_ms"]
                    lines += ["", f"Compiled against eager ({r['precision']}): {same:.2f}x; against eager fp32: "
                              f"{fp32:.2f}x."]
        sites = Counter()
        for r in s[name]["rows"]:
            sites.update(r.get("sync_sites") or {})
        if sites:
            lines += ["", "Host synchronisations seen (call site: count over the probed steps): "
                      + ", ".join(f"`{k}` {v}" for k, v in sites.most_common(8)) + "."]
    if "profile" in s:
        lines += _head("profile", s["profile"], "2c. Where the UniMatch step's time goes")
        lines += ["GPU busy = the step's kernel time (torch's profiler, one step, in a process of its own) over the "
                  "steps section's step time. Far below 100%, the GPU waits on the host (Python, dispatch, launches).",
                  "", "| case | precision | kernel time per step (ms) | step (ms) | GPU busy |", "|" + "---|" * 5]
        steps = {(r["case"], r["precision"]): r.get("step_ms") for r in s.get("steps", {}).get("rows", [])}
        for r in s["profile"]["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['case']} | {r['precision']} | skipped: {r['skipped']} |||")
                continue
            step = steps.get((r["case"], r["precision"]))
            busy = f"{100 * r['kernel_ms'] / step:.0f}%" if (step and r.get("kernel_ms")) else "–"
            lines.append(f"| {r['case']} | {r['precision']} | {_f(r.get('kernel_ms'))} | {_f(step)} | {busy} |")
    if "pipeline" in s:
        lines += _head("pipeline", s["pipeline"], "3. Data pipeline (UniMatch Pascal recipe's loaders)")
        best = fastest(report, "unimatch")
        need = 1e3 / best["step_ms"] if best else None
        lines += ["| workers | streams | batch, crop | steps/s delivered | fastest UniMatch step needs (steps/s) |",
                  "|---|---|---|---|---|"]
        for r in s["pipeline"]["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['workers']} | skipped: {r['skipped']} ||||")
                continue
            lines.append(f"| {r['workers']}{' (recipe)' if r['workers'] == r['recipe_workers'] else ''} | "
                         f"{'+'.join(r['streams'])} | {r['batch']}, {r['crop']} | {r['steps_per_s']:.2f} | "
                         f"{_f(need, '.2f')} |")
    if "inference" in s:
        lines += _head("inference", s["inference"], "4. Inference (R101 DeepLabV3+, channels_last)")
        lines += ["| mode | image | precision | ms/image | images/s |", "|---|---|---|---|---|"]
        for r in s["inference"]["rows"]:
            what = f"{r['size'][0]}x{r['size'][1]}" + (f", window {r['window']}" if r["window"] else "")
            if "skipped" in r:
                lines.append(f"| {r['mode']} | {what} | {r['precision']} | skipped: {r['skipped']} ||")
                continue
            lines.append(f"| {r['mode']} | {what} | {r['precision']} | {r['ms_per_image']:.1f} | "
                         f"{r['images_per_s']:.2f} |")
    if "curves" in s:
        lines += _head("curves", s["curves"], "5. fp32 against bf16: UniMatch loss curves from one seed")
        for r in s["curves"]["rows"]:
            lines += [f"{r['steps_compared']} of {r['steps_asked']} steps compared. Largest relative gap of the "
                      f"per-step losses: {100 * r['max_relative_gap']:.1f}% (step {r['max_relative_gap_at_step']}); "
                      f"at step 0: {100 * r['first_step_relative_gap']:.2f}%; of the {r['smoothing_window']}-step "
                      f"moving averages: {100 * r['max_relative_gap_smoothed']:.1f}%. Mean of the last 20 losses: "
                      f"fp32 {r['mean_last_20_fp32']:.4f}, bf16 {r['mean_last_20_bf16']:.4f}."]
        curves = s["curves"].get("curves", {})
        if curves:
            lines += ["", "Loss every 25 steps:", "", "| step | " + " | ".join(curves) + " |",
                      "|---|" + "---|" * len(curves)]
            n = max(len(c) for c in curves.values())
            for i in sorted(set(range(0, n, 25)) | {n - 1}):
                lines.append(f"| {i} | " + " | ".join(_f(c[i] if i < len(c) else None, ".4f") for c in curves.values())
                             + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
