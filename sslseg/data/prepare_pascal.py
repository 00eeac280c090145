"""Build Pascal VOC 2012 + SBD ("SegmentationClassAug", 10,582 training images) from the official downloads.

    python -m sslseg.data.prepare_pascal VOCdevkit/VOC2012 benchmark_RELEASE/dataset data/pascal

Inputs: VOC 2012 trainval (`JPEGImages/`, `SegmentationClass/` palette PNGs whose 255 marks object
borders, `ImageSets/Segmentation/{train,val}.txt`) and SBD (`cls/<id>.mat`, MATLAB structs `GTcls` with
the class map in field `Segmentation`; `img/` is used only for an image VOC lacks).

Output, the layout UniMatch and sslseg read (`paths.data_root`):
  JPEGImages/<id>.jpg          symlinks to the VOC (or SBD) images (`--images copy` copies them)
  SegmentationClass/<id>.png   single-channel class ids 0..20, 255 = ignore, for train_aug and val
  ImageSets/Segmentation/      train.txt (VOC's 1464), val.txt (VOC's 1449), train_aug.txt
train_aug = (SBD train + val ∪ VOC train) minus VOC val: 10,582 images with the official downloads.

Where both annotate an image, VOC's mask is used: it keeps VOC's 255 border band, which SBD's masks
do not have, and it is what the widely used SegmentationClassAug set holds (DeepLab's recipe copies
the VOC masks over the converted SBD ones). Images only SBD annotates get SBD's mask, without borders.
Val masks are always VOC's. Then `python -m sslseg.data.make_splits pascal data/pascal splits/pascal ...`
writes splits, or the published lists (UniMatch's, or U2PL/CPS ID lists) read as they are.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from sslseg.errors import UserError, exit_on_user_error

NUM_CLASSES = 21
IGNORE = 255


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"not found: {path}")
    return path.read_text().split()


def _check_labels(mask: np.ndarray, path: Path, allow_ignore: bool) -> np.ndarray:
    bad = mask[(mask >= NUM_CLASSES) & ~((mask == IGNORE) & allow_ignore)]
    if bad.size:
        raise UserError(f"{path}: labels {np.unique(bad)[:5].tolist()} outside 0..{NUM_CLASSES - 1}"
                        + (f" and {IGNORE}" if allow_ignore else ""))
    return mask.astype(np.uint8)


def read_voc_mask(path: Path) -> np.ndarray:
    """A VOC palette PNG's class indices (255 = border), as an (H, W) uint8 array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise UserError(f"{path}: expected a palette (class-index) PNG, got mode {img.mode}")
            mask = np.array(img)
    except OSError as exc:
        raise UserError(f"cannot read mask: {path} ({exc.__class__.__name__})") from exc
    return _check_labels(mask, path, allow_ignore=True)


def read_sbd_mask(path: Path) -> np.ndarray:
    """SBD's `GTcls.Segmentation` class map of one `cls/<id>.mat` file."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise UserError("reading SBD's .mat files needs scipy: pip install 'sslseg[pascal]'") from exc
    try:
        mask = np.asarray(loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation)
    except Exception as exc:  # not a MATLAB file, or no GTcls.Segmentation in it
        raise UserError(f"cannot read SBD mask {path}: expected a .mat with GTcls.Segmentation "
                        f"({exc.__class__.__name__})") from exc
    if mask.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation has shape {mask.shape}, expected a 2-D class map")
    return _check_labels(mask, path, allow_ignore=False)


def _place_image(image_id: str, sources: list[Path], out: Path, copy: bool) -> None:
    target = out / f"{image_id}.jpg"
    for folder in sources:
        source = folder / f"{image_id}.jpg"
        if source.is_file():
            if target.is_symlink() or target.exists():
                target.unlink()
            if copy:
                shutil.copyfile(source, target)
            else:
                target.symlink_to(source.resolve())
            return
    raise UserError(f"image {image_id}.jpg not found in {' or '.join(str(f) for f in sources)}")


def prepare(voc: Path, sbd: Path, out: Path, copy_images: bool = False) -> dict[str, int]:
    """Write the merged set into `out` (module docstring); returns the counts."""
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", sbd / "cls"):
        if not folder.is_dir():
            raise UserError(f"not found: {folder}")
    if out.resolve() in (voc.resolve(), sbd.resolve()):
        raise UserError(f"the output folder must not be an input folder: {out}")
    sets = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = _read_ids(sets / "train.txt"), _read_ids(sets / "val.txt")
    sbd_ids = sorted(p.stem for p in (sbd / "cls").glob("*.mat"))
    val_set = set(voc_val)
    train_aug = sorted((set(sbd_ids) | set(voc_train)) - val_set)

    masks = out / "SegmentationClass"
    images = out / "JPEGImages"
    masks.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    image_sources = [voc / "JPEGImages", sbd / "img"]
    from_voc = from_sbd = 0
    for image_id in train_aug + voc_val:
        voc_mask = voc / "SegmentationClass" / f"{image_id}.png"
        if voc_mask.is_file():
            mask = read_voc_mask(voc_mask)
            from_voc += 1
        elif image_id in val_set:
            raise UserError(f"val image {image_id} has no VOC mask: {voc_mask} not found")
        else:
            mask = read_sbd_mask(sbd / "cls" / f"{image_id}.mat")
            from_sbd += 1
        Image.fromarray(mask).save(masks / f"{image_id}.png")
        _place_image(image_id, image_sources, images, copy_images)

    out_sets = out / "ImageSets" / "Segmentation"
    out_sets.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", voc_train), ("val", voc_val), ("train_aug", train_aug)):
        (out_sets / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return {"train_aug": len(train_aug), "val": len(voc_val), "from_voc": from_voc, "from_sbd": from_sbd}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("voc", type=Path, help="VOC 2012 folder (VOCdevkit/VOC2012)")
    parser.add_argument("sbd", type=Path, help="SBD folder holding cls/ (benchmark_RELEASE/dataset)")
    parser.add_argument("out", type=Path, help="output dataset root, e.g. data/pascal")
    parser.add_argument("--images", choices=["link", "copy"], default="link",
                        help="symlink (default) or copy the JPEG images into out/JPEGImages")
    args = parser.parse_args(argv)
    counts = prepare(args.voc, args.sbd, args.out, copy_images=args.images == "copy")
    print(f"wrote {counts['train_aug']} train_aug + {counts['val']} val masks to {args.out / 'SegmentationClass'} "
          f"({counts['from_voc']} from VOC, {counts['from_sbd']} from SBD)")


if __name__ == "__main__":
    main()
