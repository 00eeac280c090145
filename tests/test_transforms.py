import albumentations as A
import numpy as np
import pytest
from PIL import Image

from sslseg.data.datasets import LabeledDataset, UnlabeledDataset
from sslseg.data.splits import Sample
from sslseg.data.transforms import cutmix_box, geometric_transform, seed_transforms, strong_transform


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
    for epoch in range(10):
        out = ds[(epoch, 0)]
        image, mask = out["image"].numpy(), out["mask"].numpy()
        # Interior pixels (one label in the 3x3 neighbourhood): the bilinear image value rounds to the
        # nearest-neighbour mask label (a one-pixel shift would be off by a whole label step).
        m = np.pad(mask.astype(int), 1, constant_values=-1)  # crop-border pixels have unseen neighbours
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


@pytest.mark.parametrize("factor", [0.05, 0.5, 0.95, 1.7])
def test_sharpness_equals_pils_image_enhance(factor):
    from PIL import Image, ImageEnhance

    from sslseg.data.transforms import Sharpness

    image = np.random.default_rng(3).integers(0, 256, (31, 40, 3), dtype=np.uint8)
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor))
    np.testing.assert_array_equal(Sharpness().apply(image, factor=factor), expected)


class Record(A.ImageOnlyTransform):
    """Appends its name to a log when applied."""

    def __init__(self, log: list, name, p: float = 1.0):
        super().__init__(p=p)
        self.log, self.name = log, name

    def apply(self, img, **params):
        self.log.append(self.name)
        return img


def test_seeded_transforms_draw_independently_and_reproducibly():
    log: list[str] = []
    pipeline = A.Compose([Record(log, "a", p=0.5), Record(log, "b", p=0.5)])
    image = np.zeros((4, 4, 3), dtype=np.uint8)

    def outcomes(seed: int) -> list[tuple]:
        seed_transforms(pipeline, np.random.default_rng(seed))
        draws = []
        for _ in range(2000):
            log.clear()
            pipeline(image=image)
            draws.append(tuple(log))
        return draws

    draws = outcomes(0)
    # Independent p = 0.5 decisions: each of (), (a), (b), (a, b) about a quarter of the time.
    # (Compose.set_random_seed alone gives only () and (a, b): both transforms draw the same number.)
    for outcome in [(), ("a",), ("b",), ("a", "b")]:
        assert abs(draws.count(outcome) / 2000 - 0.25) < 0.04, outcome
    assert outcomes(0) == draws and outcomes(1) != draws


def test_labeled_flip_does_not_follow_the_scale(tmp_path):
    # An image whose brightness grows to the right, 48 wide, cropped at 32: crops scaled below 2/3 are padded.
    columns = np.arange(48, dtype=np.uint8) * 5
    Image.fromarray(np.tile(columns[None, :, None], (48, 1, 3))).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "m.png")
    ds = LabeledDataset(tmp_path, [Sample("a.png", "m.png")], num_classes=2, crop_size=32, scale_range=(0.5, 2.0),
                        length=1, seed=0)
    padded_flips, padded = 0, 0
    for epoch in range(1000):
        out = ds[(epoch, 0)]
        image, mask = out["image"].numpy()[0], out["mask"].numpy()
        if (mask == 255).any():
            row = image[0][mask[0] == 0].astype(int)
            padded += 1
            padded_flips += int(row[0] > row[-1])
    assert padded > 80 and 0.35 < padded_flips / padded < 0.65  # small crops are flipped half of the time


def test_random_ops_draw_one_to_n_ops_with_replacement_in_drawn_order():
    from sslseg.data.transforms import random_ops

    log: list[int] = []
    pipeline = A.Compose([random_ops([Record(log, i) for i in range(3)], max_ops=3)])
    seed_transforms(pipeline, np.random.default_rng(0))
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    draws = []
    for _ in range(3000):
        log.clear()
        pipeline(image=image)
        draws.append(tuple(log))
    counts = np.bincount([len(d) for d in draws], minlength=4)
    assert counts[0] == 0 and all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts[1:])  # n ~ U{1, 2, 3}
    assert any(len(set(d)) < len(d) for d in draws)  # with replacement
    assert any(list(d) != sorted(d) for d in draws)  # in the order drawn, not the list's
    ops = np.bincount([op for d in draws for op in d], minlength=3)
    assert all(abs(c / ops.sum() - 1 / 3) < 0.03 for c in ops)  # each op equally likely


def test_extra_ops_are_part_of_the_strong_view_only_when_asked():
    plain, extended = strong_transform(), strong_transform(extra_ops=3)
    assert len(extended.transforms) == len(plain.transforms) + 1
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seed_transforms(extended, np.random.default_rng(0))
    outputs = [extended(image=image)["image"] for _ in range(20)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)



def test_centre_padding_puts_a_small_image_in_the_middle_of_its_crop():
    """semseg's Crop pads around the image (pad // 2 before it); UniMatch's on the right and bottom."""
    import numpy as np

    from sslseg.data.transforms import geometric_transform

    image = np.full((10, 6, 3), 200, np.uint8)
    mask = np.ones((10, 6), np.uint8)
    for position, columns in (("centre", slice(2, 8)), ("corner", slice(0, 6))):  # random: anywhere
        out = geometric_transform(10, (1.0, 1.0), pad="mean", pad_position=position)(image=image, mask=mask)
        inside = np.zeros(10, bool)
        inside[columns] = True
        row = out["mask"][0]
        expected = [np.where(inside, 1, 255), np.where(inside[::-1], 1, 255)]  # the crop may be flipped
        assert any((row == e).all() for e in expected), (position, row)

    offsets = set()
    for seed in range(20):
        import random as _random

        _random.seed(seed)
        np.random.seed(seed)
        out = geometric_transform(10, (1.0, 1.0), pad="mean", pad_position="random",
                                  scale_interpolation="cubic")(image=image, mask=mask)
        offsets.add(int(np.argmax(out["mask"][0] == 1)))
    assert len(offsets) > 2  # Learning-Pseudo-Label's random placement
