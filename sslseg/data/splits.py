"""Split lists in UniMatch's format, and the ID-only lists of U2PL, CPS and DDFP read as they are.

One sample per line, `<image path> <mask path>` relative to the dataset root, e.g.
`JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png`. Unlabeled lines may name only the
image. Layout: `<splits_dir>/<split>/labeled.txt`, `<splits_dir>/<split>/unlabeled.txt` and
`<splits_dir>/val.txt`.

ID-only lines, one field each, are expanded to the same samples:
- a bare image id (no `/`, no suffix), the Pascal lists of U2PL, CPS and DDFP (`2007_000032`):
  `JPEGImages/<id>.jpg SegmentationClass/<id>.png` (sslseg's and UniMatch's folder for the
  SBD-augmented masks; U2PL names it SegmentationClassAug, written by `prepare_pascal` as
  SegmentationClass);
- a Cityscapes image path, the Cityscapes lists of U2PL and DDFP
  (`leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png`): its mask is
  `gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png`, as U2PL derives it.
Any other one-field line names an image without a mask (unlabeled data).
"""

from __future__ import annotations

import re
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


def available_splits(splits_dir: str | Path) -> list[str]:
    """The split folders (those holding a labeled.txt) of a splits folder, sorted; none if it is missing."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        return []
    return sorted(p.name for p in splits_dir.iterdir() if (p / "labeled.txt").is_file())


def require_splits_dir(splits_dir: str | Path) -> Path:
    """The splits folder, or one line naming the path looked at and the option that moves it."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise UserError(f"split folder not found: {splits_dir} (set dataset.splits_dir=<folder of val.txt and "
                        "<split>/labeled.txt>, or write one with python -m sslseg.data.make_splits)")
    return splits_dir


def no_split_chosen(splits_dir: str | Path) -> UserError:
    """The error of a run given no split (dataset=custom picks the only one there is): which ones exist."""
    names = available_splits(splits_dir)
    if names:
        return UserError(f"{splits_dir} holds several splits: choose one with split=<{' | '.join(names)}>")
    return UserError(f"{splits_dir} holds no split (no <split>/labeled.txt): write one with python -m "
                     "sslseg.data.make_splits, or set dataset.splits_dir=<folder of the split lists>")


def split_files(splits_dir: str | Path, split: str | int) -> SplitFiles:
    """Paths of a split's lists; a missing split names the ones that exist."""
    splits_dir = require_splits_dir(splits_dir)
    split = str(split)
    if not (splits_dir / split).is_dir():
        available = available_splits(splits_dir)
        raise UserError(f"split '{split}' not found in {splits_dir} (available: {', '.join(available) or 'none'})")
    return SplitFiles(splits_dir / split / "labeled.txt", splits_dir / split / "unlabeled.txt", splits_dir / "val.txt")


BARE_ID = re.compile(r"^[^/.]+$")
CITYSCAPES_IMAGE = re.compile(r"^leftImg8bit/(?P<stem>[^ ]+)_leftImg8bit\.png$")


def sample_from_id(field: str) -> Sample:
    """The sample an ID-only line names (module docstring); other single fields are image-only."""
    if BARE_ID.match(field):
        return Sample(f"JPEGImages/{field}.jpg", f"SegmentationClass/{field}.png")
    city = CITYSCAPES_IMAGE.match(field)
    if city:
        return Sample(field, f"gtFine/{city['stem']}_gtFine_labelTrainIds.png")
    return Sample(field, None)


def read_split_file(path: str | Path, need_masks: bool) -> list[Sample]:
    """Parse one list (UniMatch's two-field lines or ID-only lines). `need_masks=False` accepts
    image-only lines (unlabeled data)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path}")
    samples, first_line = [], {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        sample = sample_from_id(fields[0]) if len(fields) == 1 else Sample(*fields[:2])
        if len(fields) > 2 or (need_masks and sample.mask is None):
            expected = "'<image> <mask>' or an image id" if need_masks else "'<image> [<mask>]' or an image id"
            spaces = " (fields are separated by spaces: a path may not contain one)" if len(fields) > 2 else ""
            raise UserError(f"{path}:{lineno}: expected {expected}, got {line!r}{spaces}")
        if sample.image in first_line:  # a repeated image would be drawn twice as often, silently
            raise UserError(f"{path}:{lineno}: {sample.image} is listed again (first on line "
                            f"{first_line[sample.image]}); a split lists each image once")
        first_line[sample.image] = lineno
        samples.append(sample)
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
