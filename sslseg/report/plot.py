"""`python -m sslseg.report.results --plot`: best val mIoU against the labeled split, one subplot per dataset and one
line per method and combination of the overrides that differ between the runs; every seed is a dot, the bar spans
the seeds' min–max (with 2–3 seeds an sd says little), the marker is the mean. A module of its own so that the table
does not import matplotlib."""

from __future__ import annotations

import os
from pathlib import Path

from sslseg.report.rows import Row, mean_sd, split_order

SEED_DOT = {"marker": ".", "s": 40, "alpha": 0.6, "linewidths": 0, "zorder": 5}


def plot_rows(path: Path, keys: list[str], rows: list[Row], baseline: str) -> None:
    """Write the figure to `path` (format from its suffix) through a temporary file, like write_results. Uses the
    Agg canvas directly: no pyplot, no global backend switched under a caller."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = sorted({row.dataset for row in rows})
    fig = Figure(figsize=(7.2 * len(datasets), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        lines = plot_lines([row for row in rows if row.dataset == dataset], keys)
        splits = sorted({split for _, by_split in lines for split in by_split}, key=split_order)
        if len(splits) == 1:
            _methods_at_one_split(ax, lines, baseline)
            ax.set_title(f"{dataset}, split {splits[0]}")
        else:
            _lines_over_splits(ax, lines, splits)
            ax.set_title(dataset)
        ax.set_ylabel("best val mIoU (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("marker: mean over seeds · bar: min–max · dots: single seeds", fontsize=8, color="0.35")
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=100)
    os.replace(tmp, path)


def plot_lines(rows: list[Row], keys: list[str]) -> list[tuple[str, dict[str, Row]]]:
    """(label, {split: row}) per method and differing-key combination. Rows of one line and split that differ only
    in steps (several schedules) would fall on one point: that line is split by steps, never averaged."""
    lines: dict[tuple, dict[str, list[Row]]] = {}
    for row in rows:
        lines.setdefault((row.label, row.keys), {}).setdefault(row.split, []).append(row)
    out = []
    for (label, values), by_split in lines.items():
        name = ", ".join([label, *(f"{k}={v}" for k, v in zip(keys, values))])
        if all(len(found) == 1 for found in by_split.values()):
            out.append((name, {split: found[0] for split, found in by_split.items()}))
            continue
        for steps in sorted({row.steps or 0 for found in by_split.values() for row in found}):
            out.append((f"{name}, {steps} steps", {split: row for split, found in by_split.items() for row in found
                                                   if (row.steps or 0) == steps}))
    return out


def _spread(row: Row) -> tuple[float, float, float, list[float]]:
    values = row.values()
    mean = mean_sd(values)[0]
    return mean, mean - min(values), max(values) - mean, values


def _methods_at_one_split(ax, lines: list[tuple[str, dict[str, Row]]], baseline: str) -> None:
    """One split only (the toy table): the methods side by side on the x axis, the baseline's mean as a dashed line
    across them, each mean written beside its marker."""
    for i, (label, by_split) in enumerate(lines):
        (row,) = by_split.values()
        mean, below, above, values = _spread(row)
        color = f"C{i % 10}"
        ax.errorbar([i], [mean], yerr=[[below], [above]], fmt="o", color=color, capsize=5, markersize=7, zorder=4)
        ax.scatter([i + 0.12] * len(values), values, color=color, **SEED_DOT)
        ax.annotate(f"{mean:.1f}", (i, mean), xytext=(-8, 0), textcoords="offset points", ha="right", va="center",
                    fontsize=8)
        if row.method == baseline:
            ax.axhline(mean, color=color, linestyle="--", linewidth=1, alpha=0.6, zorder=1, label=f"{label} (mean)")
            ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(lines)), [label for label, _ in lines], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(lines) - 0.4)


def _lines_over_splits(ax, lines: list[tuple[str, dict[str, Row]]], splits: list[str]) -> None:
    """Several splits: label counts on a log axis, other splits (fractions such as 1_16) as categories in order of
    their value. Lines are nudged apart sideways so that their bars do not cover each other."""
    numeric = all(split.isdigit() for split in splits)
    position = {split: float(split) if numeric else float(i) for i, split in enumerate(splits)}
    for i, (label, by_split) in enumerate(lines):
        nudge = i - (len(lines) - 1) / 2  # in decades on the log axis, in categories otherwise
        order = sorted(by_split, key=split_order)
        xs = [position[s] * 10 ** (0.015 * nudge) if numeric else position[s] + 0.06 * nudge for s in order]
        spreads = [_spread(by_split[s]) for s in order]
        color = f"C{i % 10}"
        ax.errorbar(xs, [m for m, *_ in spreads], yerr=[[b for _, b, _, _ in spreads], [a for _, _, a, _ in spreads]],
                    fmt="-o", color=color, capsize=3, markersize=5, label=label, zorder=4)
        for x, (*_, values) in zip(xs, spreads):
            ax.scatter([x] * len(values), values, color=color, **SEED_DOT)
    if numeric:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xlabel("labeled images (log scale)")
    else:
        ax.set_xlabel("labeled split")
    ax.set_xticks(list(position.values()), splits)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
