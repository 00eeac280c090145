import numpy as np
import pytest
from PIL import Image

from sslseg.data.datasets import LabeledDataset, UnlabeledDataset
from sslseg.data.splits import Sample
from sslseg.data.transforms import cutmix_box, geometric_transform


def _write_pair(root, h, w, seed=0):
    """An image whose red channel encodes its label, so alignment can be checked after augmentation."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 5, (h // 8 + 1, w // 8 + 1)), np.ones((8, 8), int))[:h, :w].astype(np.uint8)
    image = np.stack([labels * 50, np.full_like(labels, 100), np.full_like(labels, 7)], -1).astype(np.uint8)
    (root / "img").mkdir(exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    Image.fromarray(image).save(root / "img" / "a.png")
    Image.fromarray(labels).save(root / "gt" / "a.png")
    return Sample("img/a.png", "gt/a.png")


def test_labeled_crop_keeps_image_and_mask_aligned(tmp_path):
    sample = _write_pair(tmp_path, 64, 96)
    ds = LabeledDataset(tmp_path, [sample], num_classes=5, crop_size=48, scale_range=(0.5, 2.0), seed=3)
    for _ in range(10):
        out = ds[0]
        image, mask = out["image"].numpy(), out["mask"].numpy()
        # Interior pixels (one label in the 3x3 neighbourhood): the bilinear image value rounds to the
        # nearest-neighbour mask label (a one-pixel shift would be off by a whole label step).
        m = np.pad(mask.astype(int), 1, mode="edge")
        same = np.ones_like(mask, bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                same &= m[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
        interior = same & (mask != 255)
        assert interior.sum() > 200
        np.testing.assert_array_equal(np.rint(image[0][interior] / 50), mask[interior])


def test_padding_is_black_image_and_ignored_mask(tmp_path):
    sample = _write_pair(tmp_path, 20, 30)
    ds = LabeledDataset(tmp_path, [sample], num_classes=5, crop_size=40, scale_range=(1.0, 1.0), seed=0)
    out = ds[0]
    image, mask = out["image"].numpy(), out["mask"].numpy()
    assert (mask[20:, :] == 255).all()  # padded at the bottom ...
    padded_cols = (mask[:20] == 255).all(0)
    assert padded_cols.sum() == 10  # ... and on one side (flip may move it left)
    assert (image[:, 20:, :] == 0).all() and (image[:, :20, padded_cols] == 0).all()


def test_unlabeled_views_share_geometry_and_mark_padding(tmp_path):
    sample = _write_pair(tmp_path, 20, 30)
    ds = UnlabeledDataset(tmp_path, [Sample(sample.image, None)], crop_size=40, scale_range=(1.0, 1.0), seed=1)
    out = ds[0]
    assert set(out) == {"weak", "strong1", "strong2", "ignore", "box1", "box2"}
    ignore = out["ignore"].numpy()
    assert set(np.unique(ignore)) == {0, 255} and (ignore[20:] == 255).all() and (ignore == 0).sum() == 20 * 30
    # The strong views are photometric changes of the weak crop: the padded (black) area is the same.
    weak_content = out["weak"].numpy().sum(0) > 0
    np.testing.assert_array_equal(weak_content, ignore == 0)
    for key in ("strong1", "strong2"):
        assert out[key].shape == out["weak"].shape and out[key].dtype == out["weak"].dtype


def test_same_seed_same_augmentation_other_seed_differs(tmp_path):
    sample = _write_pair(tmp_path, 64, 96)
    a = UnlabeledDataset(tmp_path, [sample], crop_size=48, seed=5)[0]
    b = UnlabeledDataset(tmp_path, [sample], crop_size=48, seed=5)[0]
    c = UnlabeledDataset(tmp_path, [sample], crop_size=48, seed=6)[0]
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


def test_strong_view_follows_its_settings(tmp_path):
    sample = Sample(_write_pair(tmp_path, 64, 96).image, None)
    off = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    out = UnlabeledDataset(tmp_path, [sample], crop_size=48, seed=2, strong_aug=off)[0]
    assert (out["strong1"] == out["weak"]).all() and (out["strong2"] == out["weak"]).all()
    gray = UnlabeledDataset(tmp_path, [sample], crop_size=48, seed=2, strong_aug=off | {"grayscale_p": 1.0})[0]
    strong = gray["strong1"].int()
    assert (strong[0] == strong[1]).all() and (strong[1] == strong[2]).all()
    assert (gray["weak"][0] != gray["weak"][2]).any()  # the input had colour


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_box_area_and_bounds(seed):
    rng = np.random.default_rng(seed)
    box = cutmix_box(100, rng, p=1.0)
    ys, xs = np.nonzero(box)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert box.sum() == h * w  # one solid rectangle inside the crop
    assert 0.02 * 100 * 100 * 0.9 <= h * w <= 0.4 * 100 * 100 * 1.05  # int() truncation of sides
    assert cutmix_box(100, rng, p=0.0).sum() == 0


def test_geometric_scale_range_is_respected():
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    out = geometric_transform(400, (0.5, 0.5))(image=image, mask=mask)  # scale exactly 0.5, pad to 400
    assert out["image"].shape == (400, 400, 3)
    assert (out["mask"] == 0).sum() == 50 * 50
