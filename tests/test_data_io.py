import numpy as np
import pytest
from PIL import Image

from sslseg.data.io import read_image, read_mask
from sslseg.errors import UserError


def test_palette_mask_gives_indices_not_colours(tmp_path):
    labels = np.array([[0, 1], [20, 255]], dtype=np.uint8)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([(i * 7) % 256 for i in range(768)])
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", num_classes=21), labels)


def test_mask_label_out_of_range_names_file(tmp_path):
    Image.fromarray(np.array([[0, 21]], dtype=np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(UserError, match=r"labels \[21\] outside 0..20.*bad.png"):
        read_mask(tmp_path / "bad.png", num_classes=21)


def test_rgb_mask_is_rejected(tmp_path):
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="not single-channel.*rgb.png"):
        read_mask(tmp_path / "rgb.png", num_classes=21)


def test_unreadable_image_names_file(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot read image: .*x.jpg"):
        read_image(tmp_path / "x.jpg")


def _smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_refused(tmp_path, suffix):
    """OpenCV decodes a truncated file into a partly grey image (libjpeg only warns on stderr); it must
    not reach training or the mIoU."""
    Image.fromarray(_smooth_image()).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) * 2 // 3])
    assert read_image(tmp_path / f"full{suffix}").shape == (48, 64, 3)
    with pytest.raises(UserError, match=f"image file is truncated: .*cut{suffix}"):
        read_image(tmp_path / f"cut{suffix}")


def test_bytes_after_the_jpeg_end_marker_are_accepted(tmp_path):
    """Some writers append data after the end marker; the image itself is complete."""
    Image.fromarray(_smooth_image()).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes() + b"trailing metadata")
    np.testing.assert_array_equal(read_image(tmp_path / "b.jpg"), read_image(tmp_path / "a.jpg"))
