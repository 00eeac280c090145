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
