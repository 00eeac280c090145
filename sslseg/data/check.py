"""Check a dataset folder and a weights folder before a run: `python -m sslseg.data.check <data root>`.

    python -m sslseg.data.check data/pascal                      # layout, split lists, images, masks, weights
    python -m sslseg.data.check data/cityscapes --split 1_16 --backbones resnet101
    python -m sslseg.data.check /data/mine   # a dataset=custom folder (images/, masks/, classes.txt)
    python -m sslseg.data.check data/ade20k --split 1_64 --backbones dinov2_base   # ADEChallengeData2016

It names every problem in one line: a listed image or mask that is missing, a mask that is not single-channel class
ids (or has labels outside 0..K-1 other than 255, or another size than its image), a split folder that is missing,
a weight file that is missing, unreadable, or whose keys do not fit the backbone (the same strict check a run
makes). Exit code 0 when nothing is wrong, 1 when something is, 2 on bad usage. See docs/data.md for where each
file comes from.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = {"pascal": 21, "cityscapes": 19, "coco": 81, "toy": 6, "ade20k": 150}
# Folders that tell the layouts apart.
MARKERS = (("pascal", "JPEGImages"), ("cityscapes", "leftImg8bit"), ("coco", "train2017"),
           ("ade20k", "annotations"))
# Layouts whose masks hold 0 = ignore and the classes from 1 (conf/dataset/<name>.yaml: reduce_zero_label).
ZERO_IS_IGNORED = {"ade20k"}
META_DINOV2 = "Meta's DINOv2 release (github.com/facebookresearch/dinov2, linked in docs/data.md)"
# The weight file each backbone config reads from the weights folder, and where it comes from (docs/data.md).
WEIGHTS = {
    "resnet101": ("resnet101.pth", "UniMatch's release, linked in docs/data.md"),
    "resnet50": ("resnet50.pth", "UniMatch's release, linked in docs/data.md"),
    "xception65": ("xception.pth", "UniMatch's release, linked in docs/data.md"),
    "resnet50_psp": ("resnet50_v2.pth", "semseg's initmodel/, linked in docs/data.md"),
    "resnet101_deeplabv2": ("resnet101-5d3b4d8f.pth",
                            "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth"),
    "dinov2_small": ("dinov2_vits14_pretrain.pth", META_DINOV2),
    "dinov2_base": ("dinov2_vitb14_pretrain.pth", META_DINOV2),
    "dinov2_large": ("dinov2_vitl14_pretrain.pth", META_DINOV2),
}
DEFAULT_BACKBONES = {"pascal": ["resnet101"], "cityscapes": ["resnet101"], "custom": ["resnet101"],
                     "coco": ["xception65"], "toy": [], "ade20k": ["dinov2_base"]}
SHOWN_PER_KIND = 10  # lines of one kind of problem before "... and N more"


@dataclass
class Report:
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, line)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, line: str) -> None:
        self.problems.append((kind, line))

    def lines(self) -> list[str]:
        out, shown = [], Counter()
        counts = Counter(kind for kind, _ in self.problems)
        for kind, line in self.problems:
            shown[kind] += 1
            if shown[kind] <= SHOWN_PER_KIND:
                out.append(line)
            elif shown[kind] == SHOWN_PER_KIND + 1:
                out.append(f"... and {counts[kind] - SHOWN_PER_KIND} more: {kind}")
        return out


def detect_layout(root: Path) -> str | None:
    if (root / "images").is_dir() and (root / "classes.txt").is_file():
        return "custom"
    for name, marker in MARKERS:
        if (root / marker).is_dir():
            return "toy" if marker == "JPEGImages" and root.name == "toy" else name
    return None


def check_mask(mask_path: Path, image_path: Path | None, num_classes: int | None, report: Report,
               zero_is_ignored: bool = False) -> None:
    """Single-channel class ids (PNG mode P, L, I or I;16), labels in 0..K-1 or 255 (`zero_is_ignored`, ADE20K's
    official masks: 0..K, 0 = ignore, no 255), the image's size."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(mask_path) as img:
            mode, size = img.mode, img.size
            if mode not in ("P", "L", "I", "I;16"):
                report.add("wrong mask format", f"wrong mask format: {mask_path} is mode {mode}, expected "
                           "single-channel class ids (PNG mode P or L; 255 = ignore)")
                return
            mask = np.array(img)
    except OSError as exc:
        report.add("unreadable mask", f"unreadable mask: {mask_path} ({exc.__class__.__name__})")
        return
    if num_classes is not None and zero_is_ignored:
        bad = np.unique(mask[mask > num_classes])
        if bad.size:
            report.add("wrong mask labels", f"wrong mask labels: {mask_path} has {bad[:5].tolist()} outside "
                       f"0..{num_classes} (0 = ignore: dataset.reduce_zero_label; 255: a mask reduced already)")
    elif num_classes is not None:
        bad = np.unique(mask[(mask >= num_classes) & (mask != 255)])
        if bad.size:
            report.add("wrong mask labels", f"wrong mask labels: {mask_path} has {bad[:5].tolist()} outside "
                       f"0..{num_classes - 1} (and not 255)")
    if image_path is not None and image_path.is_file():
        try:
            with Image.open(image_path) as image:
                image_size = image.size
        except OSError:
            report.add("unreadable image", f"unreadable image: {image_path}")
            return
        if image_size != size:
            report.add("mask size", f"mask size: {mask_path} is {size[0]}x{size[1]}, its image {image_path} is "
                       f"{image_size[0]}x{image_size[1]}")


def check_lists(root: Path, splits_dir: Path, split: str | None, num_classes: int | None, report: Report,
                limit: int | None, zero_is_ignored: bool = False) -> None:
    from sslseg.data.splits import available_splits, read_split_file
    from sslseg.errors import UserError

    if not splits_dir.is_dir():
        report.add("split lists", f"split lists not found: {splits_dir} (UniMatch's splits/ folder, or python -m "
                   "sslseg.data.make_splits; docs/data.md)")
        return
    names = [split] if split else available_splits(splits_dir)
    lists = [(splits_dir / "val.txt", True)]
    for name in names:
        if not (splits_dir / name).is_dir():
            report.add("split lists", f"split not found: {splits_dir / name} (available: "
                       f"{', '.join(available_splits(splits_dir)) or 'none'})")
            continue
        lists += [(splits_dir / name / "labeled.txt", True), (splits_dir / name / "unlabeled.txt", False)]
    masks_seen: set[Path] = set()
    for path, need_masks in lists:
        try:
            samples = read_split_file(path, need_masks=need_masks)
        except UserError as exc:
            report.add("split lists", str(exc))
            continue
        report.notes.append(f"{path}: {len(samples)} images listed")
        for sample in samples[:limit] if limit else samples:
            image = root / sample.image
            if not image.is_file():
                report.add("missing image", f"missing image: {image} (listed in {path})")
            if need_masks and sample.mask:
                mask = root / sample.mask
                if not mask.is_file():
                    report.add("missing mask", f"missing mask: {mask} (listed in {path})")
                elif mask not in masks_seen:
                    masks_seen.add(mask)
                    check_mask(mask, image, num_classes, report, zero_is_ignored)


def check_weights(folder: Path, backbones: list[str], report: Report) -> None:
    for name in backbones:
        if name not in WEIGHTS:
            report.add("usage", f"--backbones: {name} reads no weight file (one of {', '.join(WEIGHTS)})")
            continue
        filename, source = WEIGHTS[name]
        path = folder / filename
        if not path.is_file():
            report.add("missing weight file", f"missing weight file: {path} (backbone={name}; from {source})")
            continue
        problem = weights_problem(name, path)
        if problem:
            report.add("malformed weight file", f"malformed weight file: {problem}")
        else:
            report.notes.append(f"{path} loads into backbone={name}")


def weights_problem(backbone: str, path: Path) -> str | None:
    """The strict key check of a run (sslseg.models.pretrained), on the backbone built from its config."""
    from omegaconf import OmegaConf

    from sslseg.errors import UserError
    from sslseg.models.backbones import build_backbone_from_config
    from sslseg.models.pretrained import load_backbone_weights

    module = build_backbone_from_config(OmegaConf.load(REPO / "conf" / "backbone" / f"{backbone}.yaml"))
    try:
        load_backbone_weights(module, path)
    except UserError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sslseg.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the dataset folder (paths.data_root)")
    parser.add_argument("--dataset", choices=sorted([*NUM_CLASSES, "custom"]), help="its layout (default: detected)")
    parser.add_argument("--splits", type=Path, help="its split lists: val.txt and <split>/{labeled,unlabeled}.txt "
                        "(default: splits/<dataset> of this checkout; <root>/splits for custom and toy)")
    parser.add_argument("--split", help="check this split only (default: every split in the folder)")
    parser.add_argument("--num-classes", type=int, help="class count (default: the dataset's; custom: classes.txt)")
    parser.add_argument("--weights", type=Path, default=REPO / "pretrained",
                        help="the weights folder (paths.pretrained_dir; default: pretrained/ of this checkout)")
    parser.add_argument("--backbones", help="comma-separated backbones whose weight files to check, or all "
                        "(default: the dataset's: resnet101; coco: xception65), or none")
    parser.add_argument("--limit", type=int, help="check the first N lines of each list only")
    args = parser.parse_args(argv)

    if not args.root.is_dir():
        print(f"error: data root not found: {args.root}", file=sys.stderr)
        return 2
    dataset = args.dataset or detect_layout(args.root)
    if dataset is None:
        print(f"error: {args.root} has none of JPEGImages/ (pascal), leftImg8bit/ (cityscapes), train2017/ (coco), "
              "annotations/ (ade20k), images/ + classes.txt (custom): set --dataset", file=sys.stderr)
        return 2
    num_classes = args.num_classes or NUM_CLASSES.get(dataset)
    report = Report()
    if dataset == "custom" and num_classes is None:
        classes = args.root / "classes.txt"
        if classes.is_file():
            num_classes = len([line for line in classes.read_text().splitlines() if line.strip()])
        else:
            report.add("classes", f"missing classes.txt: {classes} (one class name per line) or --num-classes")
    splits_dir = args.splits or (args.root / "splits" if dataset in ("custom", "toy") else REPO / "splits" / dataset)
    print(f"checking {args.root} as dataset={dataset} ({num_classes} classes), split lists {splits_dir}, "
          f"weights {args.weights}")
    check_lists(args.root, splits_dir, args.split, num_classes, report, args.limit, dataset in ZERO_IS_IGNORED)
    if args.backbones in (None, ""):
        backbones = DEFAULT_BACKBONES.get(dataset, [])
    elif args.backbones == "all":
        backbones = list(WEIGHTS)
    elif args.backbones == "none":
        backbones = []
    else:
        backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    check_weights(args.weights, backbones, report)
    for note in report.notes:
        print(note)
    for line in report.lines():
        print(line)
    if report.problems:
        kinds = Counter(kind for kind, _ in report.problems)
        print(f"{len(report.problems)} problem(s): " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
