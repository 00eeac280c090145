"""results.json (written atomically) and the console per-class table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def write_results(path: Path, results: dict) -> None:
    """Write to a temporary file and rename: an interrupted run never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def format_iou_table(per_class: dict[str, float], miou: float) -> str:
    width = max(len(n) for n in per_class) if per_class else 5
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    for name, value in per_class.items():
        lines.append(f"{name:<{width}}  {'   n/a' if math.isnan(value) else f'{value:6.2f}'}")
    lines += ["-" * (width + 9), f"{'mIoU':<{width}}  {miou:6.2f}"]
    return "\n".join(lines)


def collect(root: Path) -> list[dict]:
    """Every results.json of a training run under `root`: eval runs (no `seed`), the stages of a
    staged run (a `stage` without the run's `stages` summary) and debug runs (conf/debug/: cut short,
    validated on a few batches) are left out."""
    found = []
    for path in sorted(Path(root).rglob("results.json")):
        results = json.loads(path.read_text())
        stage_of_a_run = "stage" in results and "stages" not in results
        if "seed" in results and "best_val_mIoU" in results and not stage_of_a_run and "debug" not in results:
            found.append(results)
    return found


def summary_table(runs: list[dict], seeds: list[int] | None = None, baseline: str = "supervised") -> str:
    """Markdown table of best val mIoU per (dataset, split, method) and seed: mean ± sample sd over
    the seeds, the difference of means to `baseline` on the same dataset and split, wall time/run."""
    if seeds is not None:
        runs = [r for r in runs if r["seed"] in seeds]
    if not runs:
        raise ValueError("no training results.json found" + (f" for seeds {seeds}" if seeds else ""))
    groups: dict[tuple[str, str, str], dict[int, dict]] = {}
    for r in runs:
        # semi-and-weakly supervised rows (PCT) are marked: they do not compare with the others
        method = r["method"] + (" (image tags)" if r.get("uses_image_tags") else "")
        groups.setdefault((r["dataset"], str(r["split"]), method), {})[r["seed"]] = r  # last one wins
    all_seeds = sorted({s for g in groups.values() for s in g})

    def mean_sd(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
        return mean, sd

    header = ["dataset", "split", "method", *(f"seed {s}" for s in all_seeds), "mean ± sd", f"vs {baseline}",
              "wall time / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2] != baseline, k[2]))  # baseline first
    for dataset, split, method in order:
        by_seed = groups[(dataset, split, method)]
        mean, sd = mean_sd([r["best_val_mIoU"] for r in by_seed.values()])
        base = groups.get((dataset, split, baseline))
        delta = "" if method == baseline or base is None else \
            f"{mean - mean_sd([r['best_val_mIoU'] for r in base.values()])[0]:+.2f}"
        minutes = sum(r["wall_seconds"] for r in by_seed.values()) / len(by_seed) / 60
        cells = [dataset, split, method, *(f"{by_seed[s]['best_val_mIoU']:.2f}" if s in by_seed else "–"
                                           for s in all_seeds),
                 f"{mean:.2f}" + ("" if math.isnan(sd) else f" ± {sd:.2f}"), delta, f"{minutes:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m sslseg.results <folder> [--seeds 0 1]`: the summary table of the runs under a folder."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m sslseg.results", description=main.__doc__)
    parser.add_argument("root", type=Path, help="a folder holding run directories (e.g. outputs/)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    parser.add_argument("--baseline", default="supervised", help="method the differences are taken to")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: results folder not found: {args.root}", file=sys.stderr)
        return 2
    try:
        print(summary_table(collect(args.root), args.seeds, args.baseline))
    except ValueError as exc:
        print(f"error: {exc} under {args.root}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
