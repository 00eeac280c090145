"""Image-level class tags: the classes present in an image, as a bool vector over the K classes.

Learning-Pseudo-Label (PCT) restricts its class-aware softmax to these classes for every
image, unlabeled ones included (its setting is semi- *and weakly* supervised). The reference derives
them from the full, uncropped ground-truth mask (`seg2cls` after mapping values >= K to 0); sslseg
does the same where a mask exists and also reads them from a tag file, for images without masks.

Tag file: one line per image, its path as in the split lists (or a bare Pascal id, expanded as the
split lists expand it) followed by its class ids, separated by spaces:

    JPEGImages/2007_000032.jpg 0 1 15
    leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png 0 2 13

Blank lines are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sslseg.data.io import read_mask
from sslseg.data.splits import BARE_ID, Sample, sample_from_id
from sslseg.errors import UserError

PASCAL_IMAGE = re.compile(r"^JPEGImages/(?P<id>[^/]+)\.jpg$")


def tags_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) bool: the classes present in a full (uncropped) class-index mask. As the reference's
    `seg2cls`, every value >= K, the ignore label 255 included, counts as background (class 0), so
    background is tagged whenever the mask has any background or ignore pixel."""
    values = np.unique(mask)
    if values.size and values[0] < 0:
        raise ValueError(f"mask has negative labels: {values[values < 0][:5].tolist()}")
    tags = np.zeros(num_classes, dtype=bool)
    tags[values[values < num_classes]] = True
    if (values >= num_classes).any():
        tags[0] = True
    return tags


def read_tags_file(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """{image path: (K,) bool tags} from a tag file (module docstring). Keys are image paths as the
    split lists' samples carry them (`Sample.image`): a bare id becomes `JPEGImages/<id>.jpg`.
    A malformed line (no class id, a non-integer id, an image listed twice) or an id outside
    [0, K) is one UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tag file not found: {path}")
    tags: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) < 2 or not all(re.fullmatch(r"-?\d+", f) for f in fields[1:]):
            raise UserError(f"{where}: expected '<image> <class id> [<class id> ...]', got {line.strip()!r}")
        ids = [int(f) for f in fields[1:]]
        bad = [i for i in ids if not 0 <= i < num_classes]
        if bad:
            raise UserError(f"{where}: class id {bad[0]} outside 0..{num_classes - 1}")
        image = sample_from_id(fields[0]).image
        if image in tags:
            raise UserError(f"{where}: {image} is listed twice")
        tags[image] = np.zeros(num_classes, dtype=bool)
        tags[image][ids] = True
    if not tags:
        raise UserError(f"tag file is empty: {path}")
    return tags


def mask_for_image(image: str, layout: str) -> str | None:
    """The mask path a dataset layout implies for an image listed without one, or None.

    pascal: `JPEGImages/<id>.jpg` -> `SegmentationClass/<id>.png`; cityscapes:
    `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` -> `gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`.
    Both are the mappings the split lists apply to ID-only lines (`sslseg.data.splits.sample_from_id`).
    Other layouts (coco, custom) imply none."""
    if layout == "pascal":
        match = PASCAL_IMAGE.match(image)
        return sample_from_id(match["id"]).mask if match and BARE_ID.match(match["id"]) else None
    if layout == "cityscapes":
        return sample_from_id(image).mask  # None unless the path has Cityscapes' form
    return None


def image_tags(samples: Sequence[Sample], root: str | Path, num_classes: int, layout: str,
               tags_file: str | Path | None = None, zero_is_ignored: bool = False) -> list[np.ndarray]:
    """(K,) bool tags for every sample, in order. Per image, the first source that has it: the tag
    file's line (it wins over any mask), the sample's own mask, the mask the layout implies
    (`mask_for_image`) when that file exists under `root`. An image with none of these is one
    UserError naming it and the options to set.

    Masks are read with `sslseg.data.io.read_mask`, which (as the training data path) rejects labels
    >= K other than 255; `tags_from_mask` alone would count them as background, as `seg2cls`."""
    root = Path(root)
    from_file = read_tags_file(tags_file, num_classes) if tags_file is not None else {}
    out = []
    for sample in samples:
        if sample.image in from_file:
            out.append(from_file[sample.image])
            continue
        mask = sample.mask or mask_for_image(sample.image, layout)
        if mask is None or (sample.mask is None and not (root / mask).is_file()):
            # A mask the list names must exist (read_mask says so); an implied one is only a fallback.
            looked = f"no mask at {root / mask}" if mask else f"no mask implied by layout '{layout}'"
            listed = f"not in the tag file {tags_file}" if tags_file is not None else "no tag file"
            raise UserError(f"no image-level tags for {sample.image}: {listed}, {looked} "
                            f"(set dataset.tags_file to a tag file that lists it, or give it a mask)")
        out.append(tags_from_mask(read_mask(root / mask, num_classes, zero_is_ignored), num_classes))
    return out


def dataset_tags(samples: Sequence[Sample], root: str | Path, dataset_cfg) -> list[np.ndarray]:
    """`image_tags` with a dataset config's class count, layout and `tags_file`."""
    tags_file = dataset_cfg.get("tags_file")
    return image_tags(samples, root, int(dataset_cfg.num_classes), dataset_cfg.get("layout", ""),
                      tags_file=Path(tags_file) if tags_file else None,
                      zero_is_ignored=bool(dataset_cfg.get("reduce_zero_label", False)))
