"""COCO 2017 instance annotations -> the 81-class semantic masks of the UniMatch line.

    python -m sslseg.data.prepare_coco data/coco          # reads data/coco/annotations/instances_*2017.json

Writes `masks/<image stem>.png` (single-channel; 0 = background, 1..80 = the thing classes) for every
image of train2017 and val2017, beside `train2017/` and `val2017/` (UniMatch's layout). Then
`python -m sslseg.data.make_splits coco data/coco splits/coco --fractions 1_512 ...` writes splits,
or UniMatch's published lists (`splits/coco`) read as they are.

The conversion, with pycocotools (`pip install 'sslseg[coco]'`):
- class ids: the 80 category ids sorted ascending (1..90 with gaps) become 1..80, which is the order of
  `conf/dataset/coco.yaml`'s class names (person = 1 ... toothbrush = 80);
- every annotation, crowd regions included, is painted with its class in the file's annotation order,
  so where instances overlap the later annotation wins;
- an image without annotations gets an all-background mask (it stays usable as unlabeled data).
UniMatch ships its masks pre-processed and does not publish the script that made them; the class order
is the one its 81 class names imply, while the overlap and crowd rules are this converter's choice
(the common pycocotools recipe), so a pixel where instances overlap may differ from UniMatch's file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sslseg.errors import UserError, exit_on_user_error

SUBSETS = ("train2017", "val2017")


def _coco_api():
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise UserError("prepare_coco needs pycocotools: pip install 'sslseg[coco]'") from exc
    return COCO


def load_annotations(path: Path):
    """A pycocotools COCO object for one instances_*.json, with one-line errors naming the file."""
    coco_cls = _coco_api()
    if not path.is_file():
        raise UserError(f"not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return coco_cls(str(path))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read COCO annotations {path} ({exc.__class__.__name__}: {exc})") from exc


def class_index(coco) -> dict[int, int]:
    """COCO category id -> class index: sorted ids become 1, 2, ... (0 is background)."""
    ids = sorted(coco.getCatIds())
    if len(ids) > 254:
        raise UserError(f"{len(ids)} categories do not fit an 8-bit mask with 255 reserved")
    return {cat: i + 1 for i, cat in enumerate(ids)}


def semantic_mask(coco, image_id: int, classes: dict[int, int]) -> np.ndarray:
    """One image's (H, W) uint8 class map: annotations painted in file order, the later one on top."""
    info = coco.imgs[image_id]
    mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    for ann in coco.imgToAnns.get(image_id, []):  # in the order of the file's `annotations` list
        mask[coco.annToMask(ann) > 0] = classes[ann["category_id"]]
    return mask


def convert(annotations: Path, out: Path) -> int:
    """Write the masks of every image in one instances_*.json into `out`; returns the count."""
    coco = load_annotations(annotations)
    classes = class_index(coco)
    out.mkdir(parents=True, exist_ok=True)
    for image_id in sorted(coco.imgs):
        stem = Path(coco.imgs[image_id]["file_name"]).stem
        Image.fromarray(semantic_mask(coco, image_id, classes)).save(out / f"{stem}.png")
    return len(coco.imgs)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="COCO root holding annotations/instances_{train,val}2017.json")
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), help="default: train2017 val2017")
    parser.add_argument("--out", type=Path, default=None, help="mask folder (default: <root>/masks)")
    args = parser.parse_args(argv)
    out = args.out or args.root / "masks"
    for subset in args.subsets:
        written = convert(args.root / "annotations" / f"instances_{subset}.json", out)
        print(f"{subset}: wrote {written} masks to {out}", flush=True)


if __name__ == "__main__":
    main()
