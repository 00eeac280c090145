"""Training-step, data-pipeline and inference benchmark: `make bench` / `python -m sslseg.perf.bench`.

For each method on the available device it measures, after warm-up: step time and images/s, peak
memory (GPU), the FLOPs of one step (torch's FlopCounterMode: forward + backward + partner pass)
and the achieved TFLOP/s; then the unlabeled data pipeline's samples/s per worker (all views)
against what the step consumes, and inference throughput for whole images and sliding windows.
Methods are also given relative to the supervised step, which stays meaningful on a noisy machine.
Writes <out>/bench.json and <out>/bench.md and prints the table.

    python -m sslseg.perf.bench                                   # CPU-sized defaults (tiny, crop 64, batch 8)
    python -m sslseg.perf.bench --backbone resnet101 --crop 321 --batch 8 --methods unimatch,daw \\
        --sliding-size 1024x2048 --window 801                # the GPU setting of docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from sslseg.data.datasets import UnlabeledDataset, seed_worker
from sslseg.data.splits import read_split_file
from sslseg.data.toy import ensure_toy_dataset
from sslseg.methods import method_class
from sslseg.predict.inference import predict
from sslseg.run.cli import compose_config


def synthetic_batch(streams, batch: int, crop: int, num_classes: int, device) -> dict:
    """A batch of every stream a method reads, uint8 images and masks as the loaders deliver them: labeled (with
    the image tags when a tagged stream is read: PCT), unlabeled and mix (weak, two strong views, CutMix boxes),
    pseudo (image and pseudo-label) and tagged (image, tags, no mask)."""
    gen = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=gen).to(device)
    box = lambda: (torch.rand(batch, crop, crop, generator=gen) > 0.7).to(torch.uint8).to(device)
    masks = lambda: torch.randint(0, num_classes, (batch, crop, crop), generator=gen).to(device)
    tags = lambda: (torch.rand(batch, num_classes, generator=gen) > 0.7).to(device)
    mask = masks()
    out = {"labeled": {"image": img(), "mask": mask}}
    for name in streams[1:]:
        if name == "pseudo":
            out[name] = {"image": img(), "mask": masks()}
        elif name == "tagged":
            out[name] = {"image": img(), "mask": masks(), "tags": tags(),
                         "has_mask": torch.zeros(batch, dtype=torch.bool, device=device)}
            out["labeled"]["tags"] = tags()
        else:  # unlabeled, mix
            out[name] = {"weak": img(), "strong1": img(), "strong2": img(), "box1": box(), "box2": box(),
                         "ignore": torch.zeros(batch, crop, crop, dtype=torch.long, device=device)}
    return out


class StepRunner:
    """One training step as Lightning's automatic optimisation runs it: autocast training_step, then
    zero_grad (Lightning zeroes inside its closure, after the forward and before backward, so the
    gradients are not freed and faulted back in between steps), backward, SGD step, the module's
    end-of-step hook (the teacher's update), then the per-step schedule."""

    def __init__(self, module, batch: dict, device: torch.device, bf16: bool, channels_last: bool,
                 compile_model: bool = False):
        self.module, self.batch, self.device, self.bf16 = module.to(device), batch, device, bf16
        module.cfg.perf = {"channels_last": channels_last, "compile": compile_model}
        module.configure_model()  # the module's own fast-path switches, as in training
        module._trainer = SimpleNamespace(estimated_stepping_batches=10_000)
        conf = module.configure_optimizers()
        module._trainer = None
        self.optimizer, self.schedule = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        module.train()
        self.index = 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def step(self) -> torch.Tensor:
        with self.autocast():
            loss = self.module.training_step(self.batch, self.index)
        self.module.optimizer_zero_grad(0, self.index, self.optimizer)
        loss.backward()
        self.optimizer.step()
        self.module.on_train_batch_end(loss, self.batch, self.index)
        self.schedule.step()
        self.index += 1
        return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(runner: StepRunner, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        runner.step()
    _sync(runner.device)
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    _sync(runner.device)
    return (time.perf_counter() - start) / steps


def step_flops(runner: StepRunner) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        runner.step()
    return counter.get_total_flops()


def pipeline_throughput(root: Path, crop: int, workers: int, batch: int, batches: int = 30) -> float:
    """Unlabeled samples/s (weak + 2 strong views + boxes) delivered by `workers` DataLoader workers."""
    samples = read_split_file(root / "splits" / "32" / "unlabeled.txt", need_masks=False)
    dataset = UnlabeledDataset(root, samples, crop)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        worker_init_fn=seed_worker if workers else None, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["weak"].shape[0]
    return n / (time.perf_counter() - start)


@torch.no_grad()
def inference_throughput(module, device, size: tuple[int, int], mode: str, window: int, bf16: bool,
                         repeats: int) -> float:
    module.eval()
    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, device=device)
    model = module.inference_model()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def run():
        with ctx:
            x = module.normalize(image)
            return predict(lambda t: model(t).logits, x, mode, module.num_classes, window, 2 / 3, window_batch=4)

    run()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    _sync(device)
    module.train()
    return repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="sslseg benchmark")
    p.add_argument("--methods", default="supervised,fixmatch,unimatch,daw,dssn",
                   help="automatic-optimisation methods (DDFP, DARS and PCT step two optimizers or run stages)")
    p.add_argument("--backbone", default=None, help="default: resnet101 on GPU, tiny on CPU")
    p.add_argument("--crop", type=int, default=None, help="default: 321 on GPU, 64 (the toy's) on CPU")
    p.add_argument("--batch", type=int, default=8, help="labeled = unlabeled batch")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10 GPU, 2 CPU)")
    p.add_argument("--fast", choices=["on", "off"], default="on", help="bf16 autocast + channels_last (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the segmentor")
    p.add_argument("--workers", type=int, default=2, help="data-pipeline workers to measure")
    p.add_argument("--whole-size", default=None, help="HxW for whole-image inference (default 512x512 / 96x96)")
    p.add_argument("--sliding-size", default=None,
                   help="HxW for sliding-window inference (default 1024x2048 / 192x384)")
    p.add_argument("--window", type=int, default=None, help="sliding window (default 801 GPU, 64 CPU)")
    p.add_argument("--out", default="bench", help="output folder for bench.json and bench.md")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: logging is a no-op

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    backbone = a.backbone or ("resnet101" if gpu else "tiny")
    crop = a.crop or (321 if gpu else 64)
    steps, warmup = a.steps or (20 if gpu else 5), a.warmup if a.warmup is not None else (10 if gpu else 2)
    fast = a.fast == "on"
    bf16 = fast and (gpu or os.environ.get("SSLSEG_BENCH_CPU_BF16") == "1")
    channels_last = fast and gpu
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    parse = lambda s, d: tuple(int(v) for v in (s or d).split("x"))
    whole = parse(a.whole_size, "512x512" if gpu else "96x96")
    sliding = parse(a.sliding_size, "1024x2048" if gpu else "192x384")
    window = a.window or (801 if gpu else 64)

    overrides = [f"backbone={backbone}", "backbone.pretrained=null", f"dataset.crop_size={crop}"]
    if backbone != "tiny":
        overrides.append("model=deeplabv3plus")
    rows, module = [], None
    for name in a.methods.split(","):
        cfg = compose_config([f"method={name}", *overrides])
        cls = method_class(cfg)
        module = cls(cfg, load_pretrained=False)
        batch = synthetic_batch(cls.data_streams(cfg.method), a.batch, crop, module.num_classes, device)
        runner = StepRunner(module, batch, device, bf16, channels_last, a.compile)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        seconds = time_steps(runner, warmup, steps)
        flops = step_flops(runner)
        rows.append({
            "method": name, "step_ms": seconds * 1e3, "pairs_per_s": a.batch / seconds,
            "unlabeled_per_s": a.batch * (len(batch) - 1) / seconds,
            "gflop_per_step": flops / 1e9, "tflops": flops / seconds / 1e12,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        })
        print(f"{name}: {seconds * 1e3:.1f} ms/step", flush=True)
    base = next((r["step_ms"] for r in rows if r["method"] == "supervised"), rows[0]["step_ms"])
    for r in rows:
        r["x_supervised"] = r["step_ms"] / base

    root = ensure_toy_dataset(Path(os.environ.get("SSLSEG_ROOT", ".")) / "data" / "toy")
    pipe = pipeline_throughput(root, crop, a.workers, a.batch)
    inference = {
        "whole_images_per_s": inference_throughput(module, device, whole, "whole", window, bf16, 5 if gpu else 3),
        "sliding_images_per_s": inference_throughput(module, device, sliding, "sliding", window, bf16, 3 if gpu else 2),
    }
    toy_need = max(r["unlabeled_per_s"] for r in rows) if not gpu else None
    result = {
        "device": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()}, "
                                                           f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "backbone": backbone, "crop": crop, "batch": a.batch,
        "precision": "bf16-mixed" if bf16 else "32-true", "channels_last": channels_last, "compile": a.compile,
        "steps": steps, "warmup": warmup, "methods": rows,
        "pipeline": {"workers": a.workers, "crop": crop, "unlabeled_samples_per_s": pipe,
                     "per_worker": pipe / max(a.workers, 1), "max_step_consumption_per_s": toy_need},
        "inference": inference | {"whole_size": whole, "sliding_size": sliding, "window": window},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "bench.md").write_text(table + "\n")
    print(table)
    return result


def markdown(r: dict) -> str:
    lines = [f"{r['device']}, torch {r['torch']}, {r['backbone']} crop {r['crop']}, batch {r['batch']}+{r['batch']}, "
             f"{r['precision']}{', channels_last' if r['channels_last'] else ''}{', compiled' if r['compile'] else ''}",
             "",
             "| method | step (ms) | × supervised | pairs/s | GFLOP/step | TFLOP/s | peak mem (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for m in r["methods"]:
        mem = f"{m['peak_mem_gib']:.1f}" if m["peak_mem_gib"] is not None else "–"
        lines.append(f"| {m['method']} | {m['step_ms']:.1f} | {m['x_supervised']:.2f} | {m['pairs_per_s']:.1f} | "
                     f"{m['gflop_per_step']:.1f} | {m['tflops']:.3g} | {mem} |")
    p, i = r["pipeline"], r["inference"]
    need = p["max_step_consumption_per_s"]
    lines += ["", f"Unlabeled pipeline ({p['workers']} workers, crop {p['crop']}, weak + 2 strong views): "
              f"{p['unlabeled_samples_per_s']:.0f} samples/s ({p['per_worker']:.0f} per worker)"
              + (f"; the most demanding step above consumes {need:.0f}/s" if need else ""),
              f"Inference: whole image {i['whole_size'][0]}x{i['whole_size'][1]}: {i['whole_images_per_s']:.1f} img/s; "
              f"sliding window {i['window']} over {i['sliding_size'][0]}x{i['sliding_size'][1]}: "
              f"{i['sliding_images_per_s']:.2f} img/s"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
