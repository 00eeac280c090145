import pytest

from sslseg.data.make_splits import count, main
from sslseg.data.splits import read_split_file


@pytest.mark.parametrize("name,pool,expected", [
    ("1_16", 10582, 662), ("1_8", 10582, 1323), ("1_4", 10582, 2646),  # Pascal blended (U2PL)
    ("1_16", 2975, 186), ("1_8", 2975, 372), ("1_4", 2975, 744), ("1_2", 2975, 1488), ("1_30", 2975, 100),
    ("1_512", 118287, 232), ("1_256", 118287, 463), ("1_128", 118287, 925), ("1_64", 118287, 1849),
    ("1_32", 118287, 3697), ("92", 10582, 92),
])
def test_split_sizes_match_the_published_lists(name, pool, expected):
    assert count(name, pool) == expected


def test_pascal_classic_splits_from_a_voc_layout(data_dir, tmp_path):
    root = data_dir / "toy"  # the toy set is written in VOC's layout, ImageSets included
    fine = set((root / "ImageSets/Segmentation/train.txt").read_text().split()[:300])
    (tmp_path / "voc").mkdir()
    for sub in ("JPEGImages", "SegmentationClass"):
        (tmp_path / "voc" / sub).symlink_to(root / sub)
    (tmp_path / "voc/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "voc/ImageSets/Segmentation/train.txt").write_text("\n".join(sorted(fine)))
    (tmp_path / "voc/ImageSets/Segmentation/val.txt").write_text(
        (root / "ImageSets/Segmentation/val.txt").read_text())
    main(["pascal", str(tmp_path / "voc"), str(tmp_path / "out"), "--labeled", "20", "--fractions", "1_16"])
    labeled = read_split_file(tmp_path / "out/20/labeled.txt", need_masks=True)
    unlabeled = read_split_file(tmp_path / "out/20/unlabeled.txt", need_masks=False)
    assert len(labeled) == 20 and all(s.image.split("/")[1][:-4] in fine for s in labeled)  # classic: fine set
    assert len(labeled) + len(unlabeled) == 1000 and not {s.image for s in labeled} & {s.image for s in unlabeled}
    assert len(read_split_file(tmp_path / "out/1_16/labeled.txt", need_masks=True)) == 63  # ceil(1000/16)
    assert len(read_split_file(tmp_path / "out/val.txt", need_masks=True)) == 200
    # Seeded: the same command writes the same lists.
    main(["pascal", str(tmp_path / "voc"), str(tmp_path / "again"), "--labeled", "20"])
    assert (tmp_path / "again/20/labeled.txt").read_text() == (tmp_path / "out/20/labeled.txt").read_text()


def test_missing_dataset_folder_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["coco", str(tmp_path / "nope"), str(tmp_path / "out"), "--fractions", "1_512"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: not found: {tmp_path / 'nope'}"


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    import numpy as np
    from PIL import Image

    from sslseg.data.cityscapes_ids import main as convert

    folder = tmp_path / "gtFine" / "train" / "aachen"
    folder.mkdir(parents=True)
    ids = np.array([[7, 8, 26], [33, 0, 1], [6, 34, 255]], dtype=np.uint8)  # road, sidewalk, car; bicycle; voids
    Image.fromarray(ids).save(folder / "a_gtFine_labelIds.png")
    convert([str(tmp_path)])
    train_ids = np.array(Image.open(folder / "a_gtFine_labelTrainIds.png"))
    np.testing.assert_array_equal(train_ids, [[0, 1, 13], [18, 255, 255], [255, 255, 255]])


def _tiny_voc(root, train_ids, masks="abcdefgh", val_ids="gh"):
    """A VOC tree with empty files: the pascal generator only lists names."""
    (root / "SegmentationClass").mkdir(parents=True)
    for i in masks:
        (root / "SegmentationClass" / f"{i}.png").touch()
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(val_ids) + "\n")
    return root


def _ids(path):
    return [line.split()[0].split("/")[1][:-4] for line in path.read_text().splitlines()]


def test_pascal_first_n_keeps_train_txt_file_order(tmp_path):
    root = _tiny_voc(tmp_path / "voc", train_ids="ebfa")  # deliberately not sorted
    main(["pascal", str(root), str(tmp_path / "out"), "--first", "1", "3", "--labeled", "3"])
    out = tmp_path / "out"
    assert _ids(out / "first_1/labeled.txt") == ["e"]
    assert _ids(out / "first_3/labeled.txt") == ["e", "b", "f"]  # file order, not sorted, not drawn
    assert _ids(out / "first_3/unlabeled.txt") == ["a", "c", "d"]  # pool a..f (g, h are val) minus labeled
    assert _ids(out / "first_1/unlabeled.txt") == ["a", "b", "c", "d", "f"]
    assert (out / "first_3/labeled.txt").read_text().splitlines()[0] == "JPEGImages/e.jpg SegmentationClass/e.png"
    assert _ids(out / "val.txt") == ["g", "h"]
    # The random split of the same size sits beside it under its own name, drawn from train.txt's ids.
    random3 = _ids(out / "3/labeled.txt")
    assert len(random3) == 3 and set(random3) <= set("ebfa") and (out / "first_3").is_dir()


def test_pascal_first_n_errors(tmp_path, capsys):
    root = _tiny_voc(tmp_path / "voc", train_ids="ebfa")
    with pytest.raises(SystemExit) as exc:
        main(["pascal", str(root), str(tmp_path / "out"), "--first", "5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --first 5: {root / 'ImageSets/Segmentation/train.txt'} lists 4 images")
    bad = _tiny_voc(tmp_path / "bad", train_ids="bgx")  # g is a val image
    with pytest.raises(SystemExit):
        main(["pascal", str(bad), str(tmp_path / "out"), "--first", "2"])
    assert capsys.readouterr().err.strip() == (
        f"error: {bad / 'ImageSets/Segmentation/train.txt'} names g, which has no mask in "
        f"{bad / 'SegmentationClass'} or is in val.txt")
    with pytest.raises(SystemExit) as exc:
        main(["cityscapes", str(root), str(tmp_path / "out"), "--first", "2"])
    assert exc.value.code == 2 and "--first is for the pascal layout" in capsys.readouterr().err
