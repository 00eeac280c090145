"""Split lists in UniMatch's format.

One sample per line, `<image path> <mask path>` relative to the dataset root, e.g.
`JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png`. Unlabeled lines may name only the
image. Layout: `<splits_dir>/<split>/labeled.txt`, `<splits_dir>/<split>/unlabeled.txt` and
`<splits_dir>/val.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslseg.errors import UserError


@dataclass(frozen=True)
class Sample:
    image: str
    mask: str | None


@dataclass(frozen=True)
class SplitFiles:
    labeled: Path
    unlabeled: Path
    val: Path


def split_files(splits_dir: str | Path, split: str | int) -> SplitFiles:
    """Paths of a split's lists; a missing split names the ones that exist."""
    splits_dir = Path(splits_dir)
    split = str(split)
    if not splits_dir.is_dir():
        raise UserError(f"split folder not found: {splits_dir} (set paths.splits or dataset.splits_dir)")
    if not (splits_dir / split).is_dir():
        available = sorted(p.name for p in splits_dir.iterdir() if (p / "labeled.txt").is_file())
        raise UserError(f"split '{split}' not found in {splits_dir} (available: {', '.join(available) or 'none'})")
    return SplitFiles(splits_dir / split / "labeled.txt", splits_dir / split / "unlabeled.txt", splits_dir / "val.txt")


def read_split_file(path: str | Path, need_masks: bool) -> list[Sample]:
    """Parse one list. `need_masks=False` accepts image-only lines (unlabeled data)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path}")
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2 or (need_masks and len(fields) < 2):
            expected = "'<image> <mask>'" if need_masks else "'<image> [<mask>]'"
            raise UserError(f"{path}:{lineno}: expected {expected}, got {line!r}")
        samples.append(Sample(fields[0], fields[1] if len(fields) == 2 else None))
    if not samples:
        raise UserError(f"split file is empty: {path}")
    return samples


def check_files_exist(samples: list[Sample], root: Path, list_path: Path, with_masks: bool) -> None:
    """Fail before training, naming the first listed file that is not on disk."""
    for sample in samples:
        paths = [sample.image] + ([sample.mask] if with_masks and sample.mask else [])
        for rel in paths:
            if not (root / rel).is_file():
                raise UserError(f"{list_path} names a missing file: {root / rel}")


def write_split_file(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s.image} {s.mask}" if s.mask else s.image for s in samples]
    path.write_text("\n".join(lines) + "\n")
