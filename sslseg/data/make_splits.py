"""Write split lists in UniMatch's format from a dataset folder (seeded).

    python -m sslseg.data.make_splits pascal /data/VOC2012 splits/pascal --labeled 92 183 366 732 1464
    python -m sslseg.data.make_splits pascal /data/VOC2012 splits/pascal --first 92 183 366 732 1464
    python -m sslseg.data.make_splits cityscapes /data/cityscapes splits/cityscapes --fractions 1_16 1_8
    python -m sslseg.data.make_splits coco /data/coco splits/coco --fractions 1_512 1_256
    python -m sslseg.data.make_splits ade20k /data/ADEChallengeData2016 splits/ade20k --fractions 1_64 1_32 1_16 1_8
    python -m sslseg.data.make_splits custom /data/mine --labeled 50 --val-fraction 0.2   # -> /data/mine/splits

Layouts (paths relative to the dataset root, as in the lists):
  pascal      JPEGImages/<id>.jpg, SegmentationClass/<id>.png (SBD-augmented masks),
              ImageSets/Segmentation/{train,val}.txt. "Classic" splits: labeled images drawn from
              VOC's own train list (1464 fine annotations), unlabeled = every other image with a
              mask that is not in val (the 10582 train_aug set). `--blended` draws labeled images
              from the whole pool instead (the 1/16, 1/8, ... protocol). `--first N` writes split
              `first_N`: labeled = the first N ids of train.txt in file order, not a random draw
              (Learning-Pseudo-Label's protocol), unlabeled = the rest of the pool.
  cityscapes  leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png with
              gtFine/.../<name>_gtFine_labelTrainIds.png; labeled = a random fraction of train.
  coco        train2017/<id>.jpg, val2017/<id>.jpg, masks/<id>.png; unlabeled = train2017 minus
              the labeled images.
  ade20k      ADEChallengeData2016: images/{training,validation}/<id>.jpg, annotations/{training,validation}/<id>.png;
              labeled = a random fraction of training (the official masks, read with reduce_zero_label).
  custom      images/<name>.<jpg|png> and masks/<name>.png; val = a random --val-fraction of the images with
              a mask, labeled ones drawn from the rest of those (an image without a mask is unlabeled). The output
              folder defaults to <root>/splits, where `python train.py dataset=custom paths.data_root=<root>`
              looks (sslseg/data/custom.py).
A fraction `1_16` means ceil(N/16) labeled images (this reproduces every published split size:
Pascal 662/1323/2646, Cityscapes 186/372/744/1488 and 100 for 1_30, COCO 232/463/925/1849/3697);
ADE20K's fractions give UniMatch V2's published sizes of its 20,210 training images (`PUBLISHED_SIZES`: 316, 631,
1263, 2526, 5052, 10105 for 1_64 ... 1_2, which no single rounding rule gives); `--labeled N` gives counts instead.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from sslseg.data.custom import CLASSES_FILE, read_classes_file
from sslseg.data.splits import Sample, write_split_file
from sslseg.errors import UserError, exit_on_user_error


def _require(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"not found: {path}")
    return path


def pascal_pool(root: Path) -> tuple[list[Sample], list[Sample], list[str]]:
    """(train pool, val, ids of VOC's fine train list in file order)."""
    sets = _require(root / "ImageSets" / "Segmentation")
    val_ids = (sets / "val.txt").read_text().split()
    fine_ids = _require(sets / "train.txt").read_text().split()
    masks = sorted(p.stem for p in _require(root / "SegmentationClass").glob("*.png"))
    sample = lambda i: Sample(f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png")
    val_set = set(val_ids)
    return [sample(i) for i in masks if i not in val_set], [sample(i) for i in val_ids], fine_ids


def cityscapes_pool(root: Path) -> tuple[list[Sample], list[Sample]]:
    def listing(subset: str) -> list[Sample]:
        images = sorted(_require(root / "leftImg8bit" / subset).glob("*/*_leftImg8bit.png"))
        out = []
        for image in images:
            rel = image.relative_to(root).as_posix()
            mask = rel.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            out.append(Sample(rel, mask))
        return out

    return listing("train"), listing("val")


def coco_pool(root: Path) -> tuple[list[Sample], list[Sample]]:
    def listing(subset: str) -> list[Sample]:
        return [Sample(f"{subset}/{p.name}", f"masks/{p.stem}.png")
                for p in sorted(_require(root / subset).glob("*.jpg"))]

    return listing("train2017"), listing("val2017")


def custom_pool(root: Path, val_fraction: float,
                rng: random.Random) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train pool, val, labeled candidates). An image without masks/<name>.png can only be unlabeled (an
    image-only line); val and the labeled images are drawn from those with a mask."""
    images = sorted(p for p in _require(root / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    samples = [Sample(f"images/{p.name}", f"masks/{p.stem}.png" if (root / "masks" / f"{p.stem}.png").is_file()
                      else None) for p in images]
    annotated = [s for s in samples if s.mask]
    if not annotated:
        raise UserError(f"no image in {root / 'images'} has its mask {root / 'masks'}/<image name>.png")
    rng.shuffle(annotated)
    val = set(annotated[: round(len(annotated) * val_fraction)])
    by_image = lambda s: s.image
    return (sorted((s for s in samples if s not in val), key=by_image), sorted(val, key=by_image),
            sorted((s for s in annotated if s not in val), key=by_image))


# Labeled counts a release published for a fraction of the full training set (layout -> {fraction: count}), where
# ceil(N·a/b) differs: UniMatch-V2 splits/ade20k/<fraction>/labeled.txt (1/64 rounded up, the others down).
PUBLISHED_SIZES = {"ade20k": {20210: {"1_64": 316, "1_32": 631, "1_16": 1263, "1_8": 2526, "1_4": 5052,
                                      "1_2": 10105}}}


def ade20k_pool(root: Path) -> tuple[list[Sample], list[Sample]]:
    def listing(subset: str) -> list[Sample]:
        return [Sample(f"images/{subset}/{p.name}", f"annotations/{subset}/{p.stem}.png")
                for p in sorted(_require(root / "images" / subset).glob("*.jpg"))]

    return listing("training"), listing("validation")


def count(name: str, pool_size: int, layout: str | None = None) -> int:
    published = PUBLISHED_SIZES.get(layout or "", {}).get(pool_size, {})
    if name in published:
        return published[name]
    if "_" in name:
        num, den = name.split("_")
        return math.ceil(pool_size * int(num) / int(den))
    return int(name)


def write_splits(out: Path, pool: list[Sample], val: list[Sample], names: list[str], seed: int,
                 candidates: list[Sample] | None = None, layout: str | None = None) -> None:
    """Labeled = a seeded sample of `candidates` (default: the pool); unlabeled = pool - labeled."""
    candidates = candidates if candidates is not None else pool
    for name in names:
        n = count(name, len(pool), layout)
        if not 0 < n <= len(candidates):
            raise UserError(f"split {name}: {n} labeled images requested, {len(candidates)} available")
        labeled = sorted(random.Random(f"{seed}-{name}").sample(candidates, n), key=lambda s: s.image)
        chosen = {s.image for s in labeled}
        write_split_file(out / name / "labeled.txt", labeled)
        write_split_file(out / name / "unlabeled.txt", [s for s in pool if s.image not in chosen])
    write_split_file(out / "val.txt", val)


def write_first_splits(out: Path, root: Path, pool: list[Sample], fine_ids: list[str], counts: list[int]) -> None:
    """Learning-Pseudo-Label's protocol: split `first_<N>` has the first N ids of VOC's
    train.txt as labeled images, in file order (the official list is sorted), and the rest of the pool
    (train_aug) as unlabeled. The `first_` prefix keeps these apart from the random splits (`92`)."""
    by_id = {Path(s.image).stem: s for s in pool}
    train_txt = root / "ImageSets" / "Segmentation" / "train.txt"
    for n in counts:
        if not 0 < n <= len(fine_ids):
            raise UserError(f"--first {n}: {train_txt} lists {len(fine_ids)} images")
        missing = [i for i in fine_ids[:n] if i not in by_id]
        if missing:
            raise UserError(f"{train_txt} names {missing[0]}, which has no mask in {root / 'SegmentationClass'} "
                            "or is in val.txt")
        chosen = set(fine_ids[:n])
        write_split_file(out / f"first_{n}" / "labeled.txt", [by_id[i] for i in fine_ids[:n]])
        write_split_file(out / f"first_{n}" / "unlabeled.txt", [s for s in pool if Path(s.image).stem not in chosen])


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", choices=["pascal", "cityscapes", "coco", "ade20k", "custom"])
    parser.add_argument("root", type=Path, help="dataset root")
    parser.add_argument("out", type=Path, nargs="?", default=None,
                        help="output folder, e.g. splits/pascal (custom: default <root>/splits)")
    parser.add_argument("--labeled", nargs="*", default=[], help="labeled counts, e.g. 92 183")
    parser.add_argument("--fractions", nargs="*", default=[], help="labeled fractions, e.g. 1_16 1_8")
    parser.add_argument("--first", nargs="*", type=int, default=[], metavar="N",
                        help="pascal: splits first_N, labeled = the first N ids of ImageSets/Segmentation/train.txt "
                             "in file order (Learning-Pseudo-Label's protocol, not a random draw), e.g. 92 183")
    parser.add_argument("--blended", action="store_true",
                        help="pascal: draw --labeled/--fractions labels from the whole pool")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="custom: share of images for val")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    drawn = args.labeled + args.fractions  # seeded random splits
    if not drawn and not args.first:
        parser.error("give --labeled, --fractions and/or --first")
    if args.first and args.layout != "pascal":
        parser.error("--first is for the pascal layout (it reads ImageSets/Segmentation/train.txt)")
    if args.out is None:
        if args.layout != "custom":
            parser.error(f"give the output folder, e.g. splits/{args.layout}")
        args.out = args.root / "splits"
    root = _require(args.root)
    candidates = None
    if args.layout == "pascal":
        pool, val, fine_ids = pascal_pool(root)
        write_first_splits(args.out, root, pool, fine_ids, args.first)
        if not args.blended:
            fine = set(fine_ids)
            candidates = [s for s in pool if Path(s.image).stem in fine]
    elif args.layout == "cityscapes":
        pool, val = cityscapes_pool(root)
    elif args.layout == "coco":
        pool, val = coco_pool(root)
    elif args.layout == "ade20k":
        pool, val = ade20k_pool(root)
    else:
        pool, val, candidates = custom_pool(root, args.val_fraction, random.Random(args.seed))
    write_splits(args.out, pool, val, drawn, args.seed, candidates, args.layout)
    names = drawn + [f"first_{n}" for n in args.first]
    print(f"wrote {', '.join(names)} and val.txt ({len(pool)} train / {len(val)} val images) to {args.out}")
    if args.layout == "custom":
        print(classes_note(root))


def classes_note(root: Path) -> str:
    """What training will take for the classes of a custom folder (conf/dataset/custom.yaml)."""
    path = root / CLASSES_FILE
    if path.is_file():
        names = read_classes_file(path)
        return f"{path}: {len(names)} classes ({', '.join(names)})"
    return (f"no {path}: write one class name per line (the first line is class 0), or train with "
            "dataset.num_classes=<number of classes>")


if __name__ == "__main__":
    main()
