import random
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sslseg.data.datamodule import SemiSegDataModule, ShardedEvalSampler
from sslseg.data.datasets import EpochSampler
from sslseg.data.splits import read_split_file
from sslseg.data.toy import CLASS_NAMES, LABELED_SPLITS, NUM_TRAIN, NUM_VAL, ensure_toy_dataset, render
from sslseg.errors import UserError
from tests.conftest import SHARED, compose_cfg


def _datamodule(cfg, streams=("labeled", "unlabeled"), split=None):
    return SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root,
                             cfg.split if split is None else split, streams, seed=0)


def test_toy_is_deterministic_and_in_range():
    image, mask = render(7)
    image2, mask2 = render(7)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(mask, mask2)
    assert set(np.unique(mask)) <= set(range(len(CLASS_NAMES))) | {255}
    assert not np.array_equal(render(8)[0], image)


def test_toy_layout_and_splits(data_dir):
    root = data_dir / "toy"
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == NUM_TRAIN + NUM_VAL
    for n in LABELED_SPLITS:
        labeled = read_split_file(root / "splits" / str(n) / "labeled.txt", need_masks=True)
        unlabeled = read_split_file(root / "splits" / str(n) / "unlabeled.txt", need_masks=False)
        assert len(labeled) == n and len(unlabeled) == NUM_TRAIN - n
        assert not {s.image for s in labeled} & {s.image for s in unlabeled}
        assert all(s.mask is None for s in unlabeled)  # image-only unlabeled lines
    assert len(read_split_file(root / "splits" / "val.txt", need_masks=True)) == NUM_VAL
    with Image.open(root / labeled[0].mask) as mask:
        assert mask.mode == "P"  # VOC-style palette PNG


def test_toy_generator_never_writes_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="holds no toy dataset"):
        ensure_toy_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "x"


def test_training_batches(data_dir):
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "data.num_workers=0", "split=16"])
    dm = _datamodule(cfg, ("labeled", "unlabeled", "mix"))
    dm.setup("fit")
    n_unlabeled = NUM_TRAIN - 16
    assert len(dm.train_sets["labeled"]) == len(dm.train_sets["unlabeled"]) == len(dm.train_sets["mix"]) == n_unlabeled
    loader = dm.train_dataloader()
    batch, _, _ = next(iter(loader))
    bs, crop = cfg.data.batch_size, cfg.dataset.crop_size
    assert batch["labeled"]["image"].shape == (bs, 3, crop, crop) and batch["labeled"]["image"].dtype == torch.uint8
    assert batch["labeled"]["mask"].dtype == torch.int64
    assert batch["unlabeled"]["box1"].shape == (bs, crop, crop)
    assert set(batch["mix"]) == set(batch["unlabeled"])


def test_labeled_list_is_repeated_to_the_unlabeled_length(data_dir):
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=16"])
    dm = _datamodule(cfg)
    dm.setup("fit")
    index = dm.train_sets["labeled"].index
    assert len(index) == NUM_TRAIN - 16 and np.bincount(index).min() >= (NUM_TRAIN - 16) // 16


def test_mix_stream_draws_other_images(data_dir):
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=16", "data.num_workers=0"])
    dm = _datamodule(cfg, ("labeled", "unlabeled", "mix"))
    dm.setup("fit")
    samplers = dm.train_dataloader().iterables
    unlabeled, mix = samplers["unlabeled"].sampler.order(0), samplers["mix"].sampler.order(0)
    assert sorted(mix) == sorted(unlabeled) == list(range(NUM_TRAIN - 16))  # both streams cover the list ...
    assert np.mean(unlabeled == mix) < 0.01  # ... pairing each image with another one


def test_epoch_sampler_shards_without_duplicates_and_reshuffles_every_epoch():
    ranks = [EpochSampler(10, (0, 1), rank, world_size=3) for rank in range(3)]
    keys = [list(sampler) for sampler in ranks]
    assert [len(k) for k in keys] == [3, 3, 3] == [len(s) for s in ranks]  # 10 cut to 9, 3 per rank
    indices = [i for k in keys for _, i in k]
    assert len(set(indices)) == 9 and all(epoch == 0 for k in keys for epoch, _ in k)
    assert list(EpochSampler(10, (0, 1), 0, 3)) == keys[0]  # reproducible
    ranks[0].set_epoch(1)
    assert [e for e, _ in ranks[0]] == [1, 1, 1] and list(ranks[0].order(1)) != list(ranks[0].order(0))


def test_batches_do_not_depend_on_the_workers(data_dir):
    batches = []
    for workers in (0, 2):
        cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=16", f"data.num_workers={workers}"])
        dm = _datamodule(cfg, ("labeled", "unlabeled"))
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        batches.append([next(it)[0] for _ in range(3)])
    for a, b in zip(*batches):
        for stream in a:
            for key in a[stream]:
                assert torch.equal(a[stream][key], b[stream][key]), (stream, key)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_data_position_resumes_at_that_epoch_and_step(data_dir, workers):
    """A checkpoint's (epoch, steps run) is restored before Lightning builds the loaders: the first batch is
    the one the uninterrupted run takes next, also with persistent workers, which draw their indices when
    the iterator is made (before Lightning sets the epoch)."""
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=16", f"data.num_workers={workers}"])
    dm = _datamodule(cfg, ("labeled", "unlabeled"))
    dm.setup("fit")
    dm.load_state_dict({"epoch": 2, "batches": 3})
    loader = dm.train_dataloader()
    batch = next(iter(loader))[0]
    for stream in ("labeled", "unlabeled"):
        sampler = loader.iterables[stream].sampler
        expected = [(2, int(i)) for i in sampler.order(2)[24:32]]  # the 4th batch of epoch 2 (batches of 8)
        dataset = dm.train_sets[stream]
        first = "image" if stream == "labeled" else "weak"
        assert torch.equal(batch[stream][first], torch.stack([dataset[key][first] for key in expected]))
    dm.load_state_dict({})  # a checkpoint saved outside training has no position: nothing changes
    assert dm.resume_position == (2, 3)


def test_an_item_is_a_function_of_epoch_and_index(data_dir):
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=16"])
    dm = _datamodule(cfg, ("labeled", "unlabeled"))
    dm.setup("fit")
    unlabeled = dm.train_sets["unlabeled"]
    first, again, next_epoch = unlabeled[(0, 5)], unlabeled[(0, 5)], unlabeled[(1, 5)]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["weak"], next_epoch["weak"])
    assert not torch.equal(first["strong1"], first["strong2"])  # two strong views of one crop


@pytest.mark.parametrize("world,size", [(2, 7), (3, 10), (4, 3)])
def test_sharded_eval_sampler_counts_every_image_once(world, size):
    seen = [i for rank in range(world) for i in ShardedEvalSampler(list(range(size)), world, rank)]
    assert sorted(seen) == list(range(size))


def test_missing_data_root_and_split_are_one_line_errors(data_dir, tmp_path):
    cfg = compose_cfg(["dataset=pascal", f"paths.data_root={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match=r"dataset root not found: .*nope"):
        _datamodule(cfg).prepare_data()
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "split=999"])
    with pytest.raises(UserError, match=r"split '999' not found .*available: 128, 16, 32, 64"):
        _datamodule(cfg).setup("fit")


def test_split_naming_a_missing_image_fails_before_training(data_dir, tmp_path):
    root = tmp_path / "toy"
    ensure_toy_dataset(root)
    (root / "JPEGImages" / "toy_train_00003.jpg").unlink()
    cfg = compose_cfg([f"paths.data_root={root}", "split=128"])
    dm = _datamodule(cfg)
    lists = [root / "splits" / "128" / f for f in ("labeled.txt", "unlabeled.txt")]
    with pytest.raises(UserError, match=r"(labeled|unlabeled).txt names a missing file: .*toy_train_00003.jpg"):
        dm.setup("fit")
    assert all(p.is_file() for p in lists)


# -- the real split lists (UniMatch format), read against a tiny tree of the files they name --------
def _tiny_tree(root: Path, lines: list[str], num_classes: int):
    for line in lines:
        image, *mask = line.split()
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(root / image)
        if mask:
            (root / mask[0]).parent.mkdir(parents=True, exist_ok=True)
            labels = np.random.default_rng(0).integers(0, num_classes, (40, 60)).astype(np.uint8)
            labels[:2] = 255
            Image.fromarray(labels).save(root / mask[0])


@pytest.mark.parametrize("dataset,split", [("pascal", "1464"), ("cityscapes", "1_16")])
def test_reads_the_published_split_lists(tmp_path, dataset, split):
    src = SHARED / "splits" / dataset
    if not src.is_dir():
        pytest.skip("../shared/splits not present")
    rng = random.Random(0)
    splits_dir = tmp_path / "splits" / dataset
    (splits_dir / split).mkdir(parents=True)
    cfg = compose_cfg([f"dataset={dataset}", f"split={split}", f"paths.data_root={tmp_path / 'data'}",
                       f"paths.splits={tmp_path / 'splits'}", "data.num_workers=0", "dataset.crop_size=32",
                       "data.global_batch_size=2"])  # 6 images per list
    for name in ("labeled.txt", "unlabeled.txt"):
        lines = (src / split / name).read_text().splitlines()
        assert len(lines) > 0 and all(len(line.split()) == 2 for line in lines)
        sample = rng.sample(lines, 6)
        (splits_dir / split / name).write_text("\n".join(sample))  # no trailing newline, like the originals
        _tiny_tree(tmp_path / "data", sample, cfg.dataset.num_classes)
    val = rng.sample((src / "val.txt").read_text().splitlines(), 3)
    (splits_dir / "val.txt").write_text("\n".join(val))
    _tiny_tree(tmp_path / "data", val, cfg.dataset.num_classes)

    dm = _datamodule(cfg, ("labeled", "unlabeled"))
    dm.setup("fit")
    item = dm.train_sets["labeled"][0]
    assert item["image"].shape == (3, 32, 32)
    assert set(item["mask"].unique().tolist()) <= set(range(cfg.dataset.num_classes)) | {255}
    assert dm.train_sets["unlabeled"][0]["strong1"].shape == (3, 32, 32)
    assert dm.val_set[0]["image"].shape == (3, 40, 60)
    assert OmegaConf.select(cfg, "split") == split
