"""results.json (written atomically, with the run's provenance), the console per-class table, and the report
over a folder of runs: `python -m sslseg.report.results <folder>` (markdown table, `--csv`, `--plot`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from sslseg.errors import UserError
from sslseg.report.rows import Row, mean_sd, natural, split_order  # noqa: F401 (split_order: the report's API)

CODE_DIR = Path(__file__).resolve().parents[2]  # the repository root when sslseg runs from a checkout
VERSIONED = ("python", "sslseg", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics",
             "albumentations", "wandb", "numpy")
GIT_TIMEOUT_S = 5  # a hung git (network file system, lock) must not hold up the end of a training run
# Overrides that cannot change a run's numbers (where it writes, how it logs or resumes, loader workers), the seed
# (a column of its own) and method/dataset/split (columns already): not keys that runs are told apart by.
IGNORED_KEYS = {"ckpt_path", "data.num_workers", "trainer.enable_progress_bar", "seed", "method", "dataset", "split"}
IGNORED_PREFIXES = ("hydra", "paths", "callbacks")  # the key itself, anything under it, its config groups (hydra/x)
PLOT_FORMATS = (".png", ".svg", ".pdf")


def write_results(path: Path, results: dict) -> None:
    """Write to a temporary file and rename: an interrupted run never leaves a truncated file."""
    write_atomically(path, json.dumps(results, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_iou_table(per_class: dict[str, float], miou: float, columns: int = 3) -> str:
    """The per-class IoU in `columns` columns (a 21-class table in 8 lines instead of 25); the mean is the run's last
    line (`val mIoU: ...`), so it is not repeated here."""
    items = list(per_class.items())
    width = max((len(n) for n in per_class), default=5)
    columns = max(1, min(columns, len(items)))
    cell = width + 9

    def fmt(name: str, value: float) -> str:
        return f"{name:<{width}}  {'   n/a' if math.isnan(value) else f'{value:6.2f}'} "

    rows = math.ceil(len(items) / columns)
    lines = ["   ".join(f"{'class':<{width}}  IoU (%)".ljust(cell) for _ in range(columns)).rstrip()]
    for r in range(rows):  # column-major, so that the classes read down each column in their order
        cells = [fmt(*items[c * rows + r]) for c in range(columns) if c * rows + r < len(items)]
        lines.append("   ".join(c.ljust(cell) for c in cells).rstrip())
    return "\n".join(lines)


# --- provenance: what a results.json alone could not say about how it was made ---------------------------------

def provenance(overrides: list[str], code_dir: Path = CODE_DIR) -> dict:
    """The run's command-line overrides (the rest of its config is the code's at `commit`), library versions, and the
    code's git commit with whether the checkout had changes the commit does not hold (`dirty`). Never raises: what
    cannot be found (no git, not a checkout, a package not installed) is None."""
    commit, dirty = _git_state(Path(code_dir))
    return {"overrides": [str(o) for o in overrides], "versions": {name: _version(name) for name in VERSIONED},
            "commit": commit, "dirty": dirty}


def _version(name: str) -> str | None:
    if name == "python":
        return platform.python_version()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(code_dir: Path, *args: str) -> str | None:
    """stdout of a git command in `code_dir`, or None when git is missing, fails or times out. --no-optional-locks:
    `status` must not take the index lock from a git command the user runs meanwhile."""
    try:
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(code_dir), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _git_state(code_dir: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout whose root is `code_dir`; (None, None) when it is not one, also when the
    package is installed inside some other repository's tree (that repository's commit would say nothing). Untracked
    files that git does not ignore count as dirty: a new module or config file changes what runs."""
    out = _git(code_dir, "rev-parse", "--show-toplevel", "HEAD")
    lines = out.splitlines() if out else []
    if len(lines) != 2 or Path(lines[0]).resolve() != code_dir.resolve():
        return None, None
    status = _git(code_dir, "status", "--porcelain")
    return lines[1], None if status is None else bool(status.strip())


# --- collecting and grouping the runs under a folder ------------------------------------------------------------

def collect(root: Path) -> list[dict]:
    """Every results.json of a training run under `root`: eval runs (no `seed`), the stages of a staged run (a
    `stage` without the run's `stages` summary) and debug runs (conf/debug/: cut short) are left out. Each run
    gets `_run_dir` (where its file was found; the `run_dir` inside may predate a move) and `_mtime`. A malformed
    file is a UserError naming it: skipping it would leave a run out of the numbers without anyone noticing."""
    found = []
    for path in sorted(Path(root).rglob("results.json")):
        results = _read(path)
        stage_of_a_run = "stage" in results and "stages" not in results
        if "seed" in results and "best_val_mIoU" in results and not stage_of_a_run and "debug" not in results:
            _check(path, results)
            recorded = results.get(CHOICES_KEY) or {}
            if any(group not in recorded for group in CHOSEN_GROUPS):  # written before the group was recorded
                results[CHOICES_KEY] = _hydra_choices(path.parent) | recorded
            found.append(results | {"_run_dir": str(path.parent.resolve()), "_mtime": path.stat().st_mtime})
    return found


def _hydra_choices(run_dir: Path) -> dict:
    """The backbone, model and optimizer of a run whose results.json predates `network_choices`, from Hydra's record
    of it."""
    try:
        choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
    except Exception:  # no record, or an unreadable one: the run is grouped by its overrides alone
        return {}
    return recipe_choices(choices)


CHOSEN_GROUPS = ("backbone", "model", "optim")  # the config groups a recipe picks (its `choose:` block)
CHOICES_KEY = "network_choices"  # results.json's key for them (named when it held the networks only; kept)


def recipe_choices(choices) -> dict:
    """The backbone, model and optimizer config names among Hydra's config-group choices (what results.json
    records under CHOICES_KEY): what a recipe chose, which no override names."""
    return {group: choices.get(group) for group in CHOSEN_GROUPS}


def _read(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"malformed results file {path}: {exc}") from None
    if not isinstance(results, dict):
        raise UserError(f"malformed results file {path}: not a JSON object")
    return results


def _check(path: Path, results: dict) -> None:
    def is_number(value, ints_only=False) -> bool:
        return isinstance(value, int if ints_only else (int, float)) and not isinstance(value, bool)

    checks = [("method", isinstance(results.get("method"), str), "a string"),
              ("dataset", isinstance(results.get("dataset"), str), "a string"),
              ("split", isinstance(results.get("split"), (str, int)), "a string"),
              ("seed", is_number(results["seed"], ints_only=True), "an integer"),
              ("best_val_mIoU", is_number(results["best_val_mIoU"]), "a number"),
              ("overrides", isinstance(results.get("overrides", []), list)
               and all(isinstance(o, str) for o in results.get("overrides", [])), 'a list of "key=value" strings')]
    checks += [(name, results.get(name) is None or is_number(results[name], ints_only=name == "steps"), "a number")
               for name in ("final_val_mIoU", "wall_seconds", "steps")]
    for name, ok, what in checks:
        if not ok:
            raise UserError(f"malformed results file {path}: `{name}` must be {what}")


def overrides_of(run: dict) -> dict[str, str]:
    """The run's overrides that can change its numbers, {key: value}; a run without `overrides` (results.json from
    before they were recorded) has none."""
    items = {}
    for text in run.get("overrides") or []:
        key, _, value = text.partition("=")
        if key.startswith("~"):  # Hydra's delete: ~key or ~key=value
            key, value = key[1:], "(deleted)"
        key = key.lstrip("+")  # +key / ++key add or force the same key
        if not (key in IGNORED_KEYS or key.startswith("logger")
                or any(key == p or key.startswith((p + ".", p + "/")) for p in IGNORED_PREFIXES)):
            items[key] = _unquote(value)
    return items


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def settings_of(run: dict) -> dict[str, str]:
    """The run's overrides (overrides_of) over the config groups its recipe chose (`network_choices`): a network or
    optimizer picked by a recipe tells runs apart as much as one named on the command line."""
    chosen = {group: str(value) for group, value in (run.get(CHOICES_KEY) or {}).items() if value}
    return chosen | overrides_of(run)


def differing_keys(runs: list[dict]) -> list[str]:
    """Setting keys (settings_of) whose value is not the same in every run (a run without the key counts as a value
    of its own)."""
    per_run = [settings_of(r) for r in runs]
    keys = sorted({k for overrides in per_run for k in overrides})
    return [k for k in keys if len({overrides.get(k) for overrides in per_run}) > 1]


def group_runs(runs: list[dict], baseline: str = "supervised") -> tuple[list[str], list[Row]]:
    """(differing keys, rows) in table order. Steps are part of a row's key: a short run (a smoke test, a schedule
    changed since) never averages into, or hides, a full one. Of two runs of one row and seed, the newer (results.json
    written last; by path on a tie) is kept and the older listed in `superseded`."""
    keys = differing_keys(runs)
    rows: dict[tuple, Row] = {}
    for run in sorted(runs, key=lambda r: (r.get("_mtime", 0.0), where(r))):
        settings = settings_of(run)
        # semi-and-weakly supervised rows (PCT) are marked: they do not compare with the others
        label = run["method"] + (" (image tags)" if run.get("uses_image_tags") else "")
        values = tuple(settings.get(k, "default") for k in keys)
        ident = (run["dataset"], str(run["split"]), label, values, run.get("steps"))
        row = rows.setdefault(ident, Row(*ident[:2], run["method"], label, values, run.get("steps")))
        if run["seed"] in row.runs:
            row.superseded.append(row.runs[run["seed"]])
        row.runs[run["seed"]] = run
    order = sorted(rows.values(), key=lambda r: (r.dataset, split_order(r.split), r.method != baseline, r.label,
                                                 [natural(v) for v in r.keys], r.steps or 0))
    return keys, order


def baseline_row(row: Row, rows: list[Row], keys: list[str], baseline: str) -> Row | None:
    """The baseline's row on the same dataset and split with the same shared settings: keys under `method.` are
    the method's own knobs and do not have to match. Steps need not match either (methods' schedules differ), but
    when the baseline has rows of several step counts, the one with the row's own count, else none."""
    if row.method == baseline:
        return None
    shared = [i for i, key in enumerate(keys) if not key.startswith("method.")]
    candidates = [b for b in rows if b.method == baseline and (b.dataset, b.split) == (row.dataset, row.split)
                  and all(b.keys[i] == row.keys[i] for i in shared)]
    same_steps = [b for b in candidates if b.steps == row.steps]
    for found in (same_steps, candidates):
        if len(found) == 1:
            return found[0]
    return None


def select(runs: list[dict], seeds: list[int] | None) -> list[dict]:
    return runs if seeds is None else [r for r in runs if r["seed"] in seeds]


# --- the reports ------------------------------------------------------------------------------------------------

def summary_table(runs: list[dict], seeds: list[int] | None = None, baseline: str = "supervised") -> str:
    """Markdown table of best val mIoU per (dataset, split, method, differing overrides, steps) and seed: mean ±
    sample sd over the seeds, the difference of means to `baseline`'s row (see baseline_row), wall time per run."""
    runs = select(runs, seeds)
    if not runs:
        raise UserError("no training results.json found" + (f" for seeds {seeds}" if seeds else ""))
    keys, rows = group_runs(runs, baseline)
    return format_table(keys, rows, baseline)


def format_table(keys: list[str], rows: list[Row], baseline: str) -> str:
    all_seeds = sorted({s for row in rows for s in row.runs})
    duplicates = any(row.superseded for row in rows)  # the column appears only when there are some
    header = ["dataset", "split", "method", *keys, "steps", *(f"seed {s}" for s in all_seeds), "mean ± sd",
              f"vs {baseline}", "wall time / run", *(["duplicates"] if duplicates else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mean, sd = mean_sd(row.values())
        base = baseline_row(row, rows, keys, baseline)
        walls = [r["wall_seconds"] for r in row.runs.values() if r.get("wall_seconds") is not None]
        cells = [row.dataset, row.split, row.label, *row.keys, "–" if row.steps is None else str(row.steps),
                 *(f"{row.runs[s]['best_val_mIoU']:.2f}" if s in row.runs else "–" for s in all_seeds),
                 f"{mean:.2f}" + ("" if math.isnan(sd) else f" ± {sd:.2f}"),
                 "" if base is None else f"{mean - mean_sd(base.values())[0]:+.2f}",
                 f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "–",
                 *([str(len(row.superseded)) if row.superseded else ""] if duplicates else [])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def duplicate_warnings(rows: list[Row]) -> list[str]:
    """One line per run left out because a newer run of the same row and seed exists."""
    lines = []
    for row in rows:
        for old in row.superseded:
            kept = row.runs[old["seed"]]
            lines.append(f"duplicate runs of {row.dataset} split {row.split} {row.label} seed {old['seed']}: "
                         f"{where(old)} and {where(kept)}; the table keeps the newer, {where(kept)}")
    return lines


def write_csv(path: Path, keys: list[str], rows: list[Row]) -> None:
    """One line per run (duplicates included, marked `superseded`), atomically like write_results."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "split", "method", *keys, "steps", "seed", "best_val_mIoU", "final_val_mIoU",
                     "wall_seconds", "superseded", "run_dir"])
    for row in rows:
        superseded = {id(r) for r in row.superseded}
        for run in sorted([*row.runs.values(), *row.superseded], key=lambda r: (r["seed"], r.get("_mtime", 0.0))):
            writer.writerow([row.dataset, row.split, row.label, *row.keys, _blank(row.steps), run["seed"],
                             run["best_val_mIoU"], _blank(run.get("final_val_mIoU")), _blank(run.get("wall_seconds")),
                             str(id(run) in superseded).lower(), where(run)])
    write_atomically(path, out.getvalue())


def where(run: dict) -> str:
    """The run's directory: where collect() found its results.json, else the one it recorded."""
    return run.get("_run_dir") or run.get("run_dir") or "?"


def _blank(value) -> str:
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    """`python -m sslseg.report.results <folder> [--seeds 0 1] [--csv runs.csv] [--plot miou.png]`: the summary table
    of the training runs under a folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sslseg.report.results", description=main.__doc__)
    parser.add_argument("root", type=Path, help="a folder holding run directories (e.g. outputs/)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds")
    parser.add_argument("--baseline", default="supervised", help="method the differences are taken to")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write one line per run to FILE")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="also plot mIoU against the split to FILE "
                        f"({', '.join(PLOT_FORMATS)})")
    args = parser.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise UserError(f"results folder not found: {args.root}")
        for option, path in (("--csv", args.csv), ("--plot", args.plot)):
            if path is not None and not path.resolve().parent.is_dir():
                raise UserError(f"{option}: folder not found: {path.parent}")
        if args.plot is not None and args.plot.suffix.lower() not in PLOT_FORMATS:
            raise UserError(f"--plot: {args.plot} must end in one of {', '.join(PLOT_FORMATS)}")
        runs = select(collect(args.root), args.seeds)
        if not runs:
            raise UserError("no training results.json found" + (f" for seeds {args.seeds}" if args.seeds else "")
                            + f" under {args.root}")
        keys, rows = group_runs(runs, args.baseline)
        for line in duplicate_warnings(rows):
            print(f"warning: {line}", file=sys.stderr)
        print(format_table(keys, rows, args.baseline), flush=True)
        try:
            if args.csv is not None:
                write_csv(args.csv, keys, rows)
            if args.plot is not None:
                from sslseg.report.plot import plot_rows

                plot_rows(args.plot, keys, rows, args.baseline)
        except OSError as exc:
            raise UserError(f"cannot write {exc.filename}: {exc.strerror}") from None
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
