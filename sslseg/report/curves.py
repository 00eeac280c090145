"""Per-epoch curves of one run from its CSV log (`logger=csv`): `python -m sslseg.report.curves <run dir>
[--keys train/mask_ratio val/mIoU_teacher ...]` prints a markdown table, one line per epoch, each key's mean over
the rows logged in that epoch (a train key: the logged steps; a val key: the epoch's validation). A run that
evaluates its best checkpoint after training logs that evaluation one epoch past the last."""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

from sslseg.errors import UserError, exit_on_user_error

DEFAULT_KEYS = ("train/loss", "train/mask_ratio", "val/mIoU")


def metrics_file(run: Path) -> Path:
    """The CSV log of a run directory (`<run>/csv/metrics.csv`), or the file itself."""
    path = run if run.is_file() else run / "csv" / "metrics.csv"
    if not path.is_file():
        raise UserError(f"{run}: no CSV log (csv/metrics.csv); train with logger=csv")
    return path


def epoch_means(path: Path, keys: list[str]) -> dict[int, dict[str, float]]:
    """epoch -> key -> the mean of the key's values logged in that epoch (NaN where none)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in ["epoch", "step", *keys] if k not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: no column {', '.join(missing)} (it has {', '.join(reader.fieldnames or [])})")
        rows = list(reader)
    # The lr monitor's rows carry no epoch: they take that of the first row logged at the same step (none: left out).
    epoch_at: dict[str, str] = {}
    for row in rows:
        if row["epoch"]:
            epoch_at.setdefault(row["step"], row["epoch"])
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line, row in enumerate(rows, start=2):
        try:
            epoch = row["epoch"] or epoch_at.get(row["step"])
            if epoch is None:
                continue
            for key in keys:
                if row[key] not in ("", None):
                    values[int(epoch)][key].append(float(row[key]))
        except ValueError as exc:
            raise UserError(f"{path}, line {line}: {exc}") from None
    return {epoch: {k: sum(v[k]) / len(v[k]) if v[k] else math.nan for k in keys}
            for epoch, v in sorted(values.items())}


def cell(key: str, value: float) -> str:
    """mIoU and IoU in points to 2 decimals; losses, ratios and learning rates to 4 significant digits."""
    if math.isnan(value):
        return ""
    return f"{value:.2f}" if key.startswith("val/") else f"{value:.4g}"


def markdown(means: dict[int, dict[str, float]], keys: list[str]) -> str:
    lines = ["| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for epoch, row in means.items():
        lines.append(f"| {epoch} | " + " | ".join(cell(k, row[k]) for k in keys) + " |")
    return "\n".join(lines)


def present_keys(path: Path) -> list[str]:
    """The default keys this log has, and every val/mIoU_<network> (a method that validates two networks)."""
    with path.open(newline="") as f:
        fields = next(csv.reader(f), [])
    return [k for k in DEFAULT_KEYS if k in fields] + [k for k in fields if k.startswith("val/mIoU_")]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sslseg.report.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (trained with logger=csv) or its metrics.csv")
    parser.add_argument("--keys", nargs="+", help="the columns to show (default: loss, mask ratio, val mIoU)")
    args = parser.parse_args(argv)
    path = metrics_file(args.run)
    keys = args.keys or present_keys(path)
    print(markdown(epoch_means(path, keys), keys))


if __name__ == "__main__":
    main()
