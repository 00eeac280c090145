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
