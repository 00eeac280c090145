"""Data preparation from the official downloads, on tiny trees built here: Pascal VOC + SBD, COCO 2017."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.data.splits import read_split_file

A, B, C, D, E, F = "2007_000001", "2007_000002", "2008_000003", "2008_000004", "2009_000005", "2008_000006"
VOC_MASKS = {  # VOC's palette masks (255 = border band)
    A: [[0, 0, 255, 15], [0, 15, 15, 15], [255, 255, 0, 0]],
    B: [[1, 1, 1, 1], [255, 0, 0, 0], [0, 0, 0, 20]],
    D: [[5, 5, 5, 255], [5, 5, 255, 0], [0, 0, 0, 0]],
}
SBD_MASKS = {  # SBD's class maps (no borders); A and B also have VOC masks, which win
    A: [[7] * 4] * 3,
    B: [[3] * 4] * 3,
    C: [[0, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]],
    F: [[12] * 4] * 3,
}


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((3, 4, 3), 128, np.uint8)).save(path)


def _voc_sbd_tree(root: Path) -> tuple[Path, Path]:
    scipy_io = pytest.importorskip("scipy.io", reason="SBD's .mat files need scipy (pip install 'sslseg[pascal]')")
    voc, sbd = root / "VOC2012", root / "SBD"
    for image_id in (A, B, C, D, E):  # E: a VOC image that nobody annotates
        _jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
    _jpeg(sbd / "img" / f"{F}.jpg")  # F: an image only SBD has
    (voc / "SegmentationClass").mkdir(parents=True)
    for image_id, mask in VOC_MASKS.items():
        png = Image.fromarray(np.array(mask, np.uint8), mode="P")
        png.putpalette([0, 0, 0, 128, 0, 0] + [200] * (256 * 3 - 6))
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text(f"{A}\n{D}\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(f"{B}\n")
    (sbd / "cls").mkdir(parents=True)
    for image_id, mask in SBD_MASKS.items():
        scipy_io.savemat(sbd / "cls" / f"{image_id}.mat",
                {"GTcls": {"Segmentation": np.array(mask, np.uint8), "CategoriesPresent": np.array([1])}})
    return voc, sbd


def test_pascal_merges_sbd_and_voc_into_train_aug(tmp_path, capsys):
    from sslseg.data.prepare_pascal import main

    voc, sbd = _voc_sbd_tree(tmp_path)
    out = tmp_path / "pascal"
    main([str(voc), str(sbd), str(out)])
    sets = out / "ImageSets" / "Segmentation"
    # train_aug = (SBD {A, B, C, F} ∪ VOC train {A, D}) - VOC val {B}
    assert (sets / "train_aug.txt").read_text().split() == sorted([A, C, D, F])
    assert (sets / "val.txt").read_text().split() == [B] and (sets / "train.txt").read_text().split() == [A, D]
    expected = {A: VOC_MASKS[A], B: VOC_MASKS[B], C: SBD_MASKS[C], D: VOC_MASKS[D], F: SBD_MASKS[F]}
    assert sorted(p.stem for p in (out / "SegmentationClass").glob("*.png")) == sorted(expected)
    for image_id, mask in expected.items():
        with Image.open(out / "SegmentationClass" / f"{image_id}.png") as png:
            assert png.mode == "L"  # single channel
            assert np.array(png).tolist() == mask
    assert sorted(p.stem for p in (out / "JPEGImages").iterdir()) == sorted(expected)  # not E
    assert (out / "JPEGImages" / f"{F}.jpg").resolve() == (sbd / "img" / f"{F}.jpg").resolve()
    assert "wrote 4 train_aug + 1 val masks" in capsys.readouterr().out

    # The result is a dataset root make_splits and the ID lists read.
    from sslseg.data.make_splits import main as make_splits

    make_splits(["pascal", str(out), str(tmp_path / "splits"), "--labeled", "1"])
    labeled = read_split_file(tmp_path / "splits" / "1" / "labeled.txt", need_masks=True)
    unlabeled = read_split_file(tmp_path / "splits" / "1" / "unlabeled.txt", need_masks=False)
    assert len(labeled) == 1 and Path(labeled[0].image).stem in (A, D)  # classic: from VOC's train list
    assert len(unlabeled) == 3


def test_pascal_copy_images(tmp_path):
    from sslseg.data.prepare_pascal import main

    voc, sbd = _voc_sbd_tree(tmp_path)
    main([str(voc), str(sbd), str(tmp_path / "out"), "--images", "copy"])
    image = tmp_path / "out" / "JPEGImages" / f"{A}.jpg"
    assert image.is_file() and not image.is_symlink()


def test_pascal_bad_inputs_name_the_file(tmp_path, capsys):
    from sslseg.data.prepare_pascal import main

    voc, sbd = _voc_sbd_tree(tmp_path)
    (sbd / "cls" / f"{C}.mat").write_text("not a MATLAB file")
    with pytest.raises(SystemExit) as exc:
        main([str(voc), str(sbd), str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read SBD mask {sbd / 'cls' / C}.mat")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nope"), str(sbd), str(tmp_path / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: not found: {tmp_path / 'nope' / 'JPEGImages'}"


# -- COCO ---------------------------------------------------------------------------------------------
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _box(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[rows, cols] = 1
    return m


def coco_annotations(images: dict[str, tuple[int, int]], start_id: int) -> tuple[dict, dict[str, np.ndarray]]:
    """An instances_*.json for `images` (file name -> (h, w)) and the masks the converter must write.

    Categories are listed out of order with COCO's gappy ids 90, 1, 5: sorted they become classes 3, 1, 2.
    Per image: a polygon over the whole image (id 5 -> class 2), a box of toothbrush (90 -> 3), then an
    overlapping box of person (1 -> 1, later, so on top), then a crowd region of person; the last image
    has no annotation (all background)."""
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    data = {"images": [], "annotations": [], "categories": categories}
    expected = {}
    for n, (name, (h, w)) in enumerate(images.items()):
        image_id = start_id + n
        data["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
        mask = np.zeros((h, w), np.uint8)
        if n < len(images) - 1:
            toothbrush = _box(h, w, slice(0, 3), slice(0, 4))
            person = _box(h, w, slice(2, 5), slice(2, 6))
            crowd = _box(h, w, slice(h - 2, h), slice(w - 3, w))
            anns = [{"segmentation": [[0, 0, w, 0, w, h, 0, h]], "category_id": 5, "iscrowd": 0},
                    {"segmentation": _rle(toothbrush), "category_id": 90, "iscrowd": 0},
                    {"segmentation": _rle(person), "category_id": 1, "iscrowd": 0},
                    {"segmentation": _rle(crowd), "category_id": 1, "iscrowd": 1}]
            for k, ann in enumerate(anns):
                data["annotations"].append(ann | {"id": image_id * 10 + k, "image_id": image_id, "area": 1.0,
                                                  "bbox": [0, 0, 1, 1]})
            mask[:] = 2
            mask[toothbrush == 1] = 3
            mask[person == 1] = 1
            mask[crowd == 1] = 1
        expected[Path(name).stem] = mask
    return data, expected


def make_coco_tree(root: Path, train: int = 6, val: int = 2, size: tuple[int, int] = (48, 64)) -> dict:
    """A COCO 2017 download in miniature: train2017/, val2017/ (JPEGs) and annotations/instances_*.json.
    Returns the masks the converter must write, by image stem."""
    pytest.importorskip("pycocotools", reason="COCO conversion needs pycocotools (pip install 'sslseg[coco]')")
    rng = np.random.default_rng(0)
    expected = {}
    for subset, count, start in (("train2017", train, 1), ("val2017", val, 1000)):
        names = {f"{start + i:012d}.jpg": size for i in range(count)}
        (root / subset).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / subset / name)
        data, masks = coco_annotations(names, start)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{subset}.json").write_text(json.dumps(data))
        expected |= masks
    return expected


def test_coco_instances_to_81_class_style_masks(tmp_path, capsys):
    from sslseg.data.prepare_coco import main

    expected = make_coco_tree(tmp_path, train=2, val=2, size=(6, 8))
    main([str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [f"train2017: wrote 2 masks to {tmp_path / 'masks'}",
                                                    f"val2017: wrote 2 masks to {tmp_path / 'masks'}"]
    assert sorted(p.stem for p in (tmp_path / "masks").glob("*.png")) == sorted(expected)
    first = np.array(Image.open(tmp_path / "masks" / "000000000001.png"))
    # Rows 0-2 x cols 0-3 toothbrush (3), rows 2-4 x cols 2-5 person (1) on top, crowd person at the
    # bottom-right 2 x 3, the whole-image airplane polygon (2) underneath.
    assert first.tolist() == [[3, 3, 3, 3, 2, 2, 2, 2],
                              [3, 3, 3, 3, 2, 2, 2, 2],
                              [3, 3, 1, 1, 1, 1, 2, 2],
                              [2, 2, 1, 1, 1, 1, 2, 2],
                              [2, 2, 1, 1, 1, 1, 1, 1],
                              [2, 2, 2, 2, 2, 1, 1, 1]]
    for stem, mask in expected.items():
        assert np.array_equal(np.array(Image.open(tmp_path / "masks" / f"{stem}.png")), mask), stem
    assert not np.array(Image.open(tmp_path / "masks" / "000000000002.png")).any()  # no annotations


def test_coco_missing_annotations_is_one_line(tmp_path, capsys):
    pytest.importorskip("pycocotools", reason="COCO conversion needs pycocotools (pip install 'sslseg[coco]')")
    from sslseg.data.prepare_coco import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: not found: {tmp_path / 'annotations' / 'instances_train2017.json'}")
