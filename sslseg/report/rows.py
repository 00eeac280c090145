"""The rows of the results report (`python -m sslseg.report.results`): the runs of one table row, their mean and
spread, and the order of splits and values. Shared by the table (results.py) and the plot (plot.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Row:
    """The runs of one table row: same dataset, split, method, values of the differing keys and steps."""

    dataset: str
    split: str
    method: str  # the method's name; `label` marks semi-and-weakly supervised ones
    label: str
    keys: tuple[str, ...]
    steps: int | None
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> the newest run of that seed
    superseded: list[dict] = field(default_factory=list)  # older runs of a seed in `runs`, left out of the numbers

    def values(self) -> list[float]:
        return [r["best_val_mIoU"] for r in self.runs.values()]


def split_order(split: str) -> tuple:
    """Label counts numerically (16 < 92 < 1464); fractions such as 1_16 by value; anything else by name."""
    numerator, _, denominator = split.partition("_")
    if split.isdigit():
        return 0, int(split), split
    if numerator.isdigit() and denominator.isdigit() and int(denominator):
        return 1, int(numerator) / int(denominator), split
    return 2, 0, split


def natural(value: str) -> tuple:
    try:
        return 0, float(value), value
    except ValueError:
        return 1, 0.0, value


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the sd is NaN for a single value."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, sd
