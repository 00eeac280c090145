import numpy as np
import pytest
from PIL import Image

from sslseg.data.splits import Sample
from sslseg.data.tags import image_tags, mask_for_image, read_tags_file, tags_from_mask
from sslseg.errors import UserError


def _bools(num_classes: int, *present: int) -> list[bool]:
    return [c in present for c in range(num_classes)]


def test_tags_from_mask_counts_ignore_and_out_of_range_labels_as_background():
    # No 0 pixel: background is present only through the 255 border, as seg2cls maps it to 0.
    mask = np.array([[3, 3, 255], [5, 255, 255]], dtype=np.uint8)
    assert tags_from_mask(mask, 6).tolist() == _bools(6, 0, 3, 5)
    # A label >= K (7 with K = 6) also counts as background; classes 1, 2, 4 are absent.
    assert tags_from_mask(np.array([[7, 3]], dtype=np.uint8), 6).tolist() == _bools(6, 0, 3)
    # Only foreground: no background tag.
    assert tags_from_mask(np.array([[1, 2], [2, 1]], dtype=np.uint8), 6).tolist() == _bools(6, 1, 2)
    assert tags_from_mask(np.zeros((4, 4), np.uint8), 3).tolist() == [True, False, False]


def _write(path, text):
    path.write_text(text)
    return path


def test_tag_file_lines(tmp_path):
    path = _write(tmp_path / "tags.txt",
                  "JPEGImages/a.jpg 0 15 1\n\n2007_000032 4\n"
                  "leftImg8bit/train/x/x_1_leftImg8bit.png 2 2\n")
    tags = read_tags_file(path, 21)
    assert sorted(tags) == ["JPEGImages/2007_000032.jpg", "JPEGImages/a.jpg",  # bare id expanded as in lists
                            "leftImg8bit/train/x/x_1_leftImg8bit.png"]
    assert np.flatnonzero(tags["JPEGImages/a.jpg"]).tolist() == [0, 1, 15]
    assert np.flatnonzero(tags["JPEGImages/2007_000032.jpg"]).tolist() == [4]
    assert np.flatnonzero(tags["leftImg8bit/train/x/x_1_leftImg8bit.png"]).tolist() == [2]
    assert tags["JPEGImages/a.jpg"].dtype == bool and tags["JPEGImages/a.jpg"].shape == (21,)


@pytest.mark.parametrize("text,message", [
    ("a.jpg 0\nb.jpg\n", r"tags\.txt:2: expected '<image> <class id> \[<class id> \.\.\.\]', got 'b\.jpg'"),
    ("a.jpg 0 cat\n", r"tags\.txt:1: expected .*got 'a\.jpg 0 cat'"),
    ("a.jpg 0 1.5\n", r"tags\.txt:1: expected"),
    ("\na.jpg 0 21\n", r"tags\.txt:2: class id 21 outside 0\.\.20$"),
    ("a.jpg -1\n", r"tags\.txt:1: class id -1 outside 0\.\.20$"),
    ("a.jpg 0\na.jpg 3\n", r"tags\.txt:2: a\.jpg is listed twice"),
    ("\n\n", r"tag file is empty: .*tags\.txt"),
])
def test_bad_tag_file_is_one_line_naming_file_and_line(tmp_path, text, message):
    path = _write(tmp_path / "tags.txt", text)
    with pytest.raises(UserError, match=message) as exc:
        read_tags_file(path, 21)
    assert str(tmp_path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_tag_file(tmp_path):
    with pytest.raises(UserError, match=r"^tag file not found: .*nope\.txt$"):
        read_tags_file(tmp_path / "nope.txt", 21)


@pytest.mark.parametrize("image,layout,mask", [
    ("JPEGImages/2007_000032.jpg", "pascal", "SegmentationClass/2007_000032.png"),
    ("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", "cityscapes",
     "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"),
    ("JPEGImages/2007_000032.png", "pascal", None),  # not Pascal's image form
    ("images/2007_000032.jpg", "pascal", None),
    ("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", "pascal", None),  # layouts do not mix
    ("JPEGImages/2007_000032.jpg", "cityscapes", None),
    ("train2017/000000000009.jpg", "coco", None),
    ("images/a.png", "custom", None),
])
def test_mask_for_image(image, layout, mask):
    assert mask_for_image(image, layout) == mask


def _mask(root, rel, values):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(values, dtype=np.uint8)).save(root / rel)


def test_image_tags_sources_in_order(tmp_path):
    _mask(tmp_path, "SegmentationClass/a.png", [[0, 1], [1, 255]])  # listed mask
    _mask(tmp_path, "SegmentationClass/b.png", [[2, 2], [2, 2]])  # implied by the layout, not listed
    _mask(tmp_path, "SegmentationClass/c.png", [[3, 3], [3, 3]])  # overridden by the tag file
    tags_file = _write(tmp_path / "tags.txt", "JPEGImages/c.jpg 0 4\nJPEGImages/d.jpg 5\n")
    samples = [Sample("JPEGImages/a.jpg", "SegmentationClass/a.png"), Sample("JPEGImages/b.jpg", None),
               Sample("JPEGImages/c.jpg", "SegmentationClass/c.png"), Sample("JPEGImages/d.jpg", None)]
    tags = image_tags(samples, tmp_path, 6, "pascal", tags_file)
    assert [t.tolist() for t in tags] == [_bools(6, 0, 1), _bools(6, 2), _bools(6, 0, 4), _bools(6, 5)]
    # Without the tag file, c's own mask gives its tags.
    tags = image_tags(samples[:3], tmp_path, 6, "pascal")
    assert tags[2].tolist() == _bools(6, 3)


def test_image_without_any_tag_source_is_one_line_naming_it(tmp_path):
    _mask(tmp_path, "SegmentationClass/a.png", [[0]])
    samples = [Sample("JPEGImages/a.jpg", None), Sample("JPEGImages/e.jpg", None)]
    with pytest.raises(UserError) as exc:
        image_tags(samples, tmp_path, 6, "pascal")
    assert str(exc.value) == (f"no image-level tags for JPEGImages/e.jpg: no tag file, no mask at "
                              f"{tmp_path / 'SegmentationClass/e.png'} (set dataset.tags_file to a tag file "
                              f"that lists it, or give it a mask)")
    tags_file = _write(tmp_path / "tags.txt", "JPEGImages/other.jpg 1\n")
    with pytest.raises(UserError, match=rf"^no image-level tags for images/e\.png: not in the tag file "
                                        rf"{tags_file}, no mask implied by layout 'custom' \(set dataset\.tags_file"):
        image_tags([Sample("images/e.png", None)], tmp_path, 6, "custom", tags_file)


def test_listed_mask_that_is_missing_or_out_of_range_is_named(tmp_path):
    with pytest.raises(UserError, match=r"cannot read mask: .*SegmentationClass/a\.png"):
        image_tags([Sample("JPEGImages/a.jpg", "SegmentationClass/a.png")], tmp_path, 6, "pascal")
    _mask(tmp_path, "SegmentationClass/a.png", [[0, 9]])
    with pytest.raises(UserError, match=r"mask has labels \[9\] outside 0\.\.5"):
        image_tags([Sample("JPEGImages/a.jpg", None)], tmp_path, 6, "pascal")
