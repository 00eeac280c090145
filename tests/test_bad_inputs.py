"""Every bad input of the table in docs/troubleshooting.md, run as a user would: exit code 2, the one line sslseg
prints and nothing else on stderr, no traceback, and the run directory it names left as it was."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import mini_split, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """A finished supervised run (two steps) whose directory the bad inputs name."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run = run_cli("train.py", "method=supervised", f"paths.data_dir={data_dir}", "logger=csv", "trainer.max_steps=2",
                  "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "data.num_workers=0",
                  f"hydra.run.dir={run_dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def broken_data(data_dir, tmp_path_factory) -> Path:
    """A copy of the toy set with one mask of the wrong size and one unreadable image, each the only
    labeled image of a split ('mismatch', 'corrupt')."""
    root = tmp_path_factory.mktemp("broken") / "toy"
    shutil.copytree(data_dir / "toy", root)
    mask = root / "SegmentationClass" / "toy_train_00000.png"
    with Image.open(mask) as full:
        full.crop((0, 0, 40, 48)).save(mask)  # still a palette PNG, 40 wide, 48 high
    (root / "JPEGImages" / "toy_train_00001.jpg").write_bytes(b"not a jpeg")
    truncated = root / "JPEGImages" / "toy_train_00002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-200])  # decodes, partly grey, with a libjpeg warning only
    for split, index, times in (("mismatch", 0, 1), ("corrupt", 1, 1), ("truncated", 2, 1), ("repeated", 3, 2)):
        mini_split(data_dir, root / "splits_bad" / split, unlabeled=8)
        name = f"toy_train_{index:05d}"
        (root / "splits_bad" / split / "mini" / "labeled.txt").write_text(
            f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n" * times)
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cases(run: Path, data: Path, data_dir: Path, tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, overrides, the line printed). `run` is the finished run; every case that can names it."""
    last = run / "checkpoints" / "last.ckpt"
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "random.ckpt").write_bytes(bytes(range(256)) * 64)
    (tmp / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (tmp / "a_file").write_text("")
    in_run = [f"hydra.run.dir={run}", f"paths.data_dir={data_dir}"]  # refused before Hydra writes into it

    def fresh(name: str) -> list[str]:  # refused once the run has started: its own folder
        return [f"hydra.run.dir={tmp / name}", f"paths.data_dir={data_dir}"]

    trained = f"{last} was trained with"
    def bad_data(split: str) -> list[str]:  # each its own run folder
        return [f"paths.data_root={data}", "split=mini", "logger=none", "data.num_workers=0",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp / f'bad_data_{split}'}",
                f"dataset.splits_dir={data / 'splits_bad' / split}"]
    image, mask = data / "JPEGImages" / "toy_train_00000.jpg", data / "SegmentationClass" / "toy_train_00000.png"
    return [
        ("missing checkpoint", [*in_run, f"ckpt_path={tmp / 'none.ckpt'}"],
         f"checkpoint not found: {tmp / 'none.ckpt'}"),
        ("last without a file", [f"hydra.run.dir={tmp / 'fresh'}", "ckpt_path=last"],
         f"ckpt_path=last: no checkpoint at {tmp / 'fresh' / 'checkpoints' / 'last.ckpt'} "
         "(resume with hydra.run.dir=<the interrupted run's directory>)"),
        ("empty checkpoint", [*in_run, f"ckpt_path={tmp / 'empty.ckpt'}"],
         f"cannot read checkpoint {tmp / 'empty.ckpt'}: not an sslseg Lightning checkpoint (RuntimeError)"),
        ("random bytes", [*in_run, f"ckpt_path={tmp / 'random.ckpt'}"],
         f"cannot read checkpoint {tmp / 'random.ckpt'}: not an sslseg Lightning checkpoint (RuntimeError)"),
        ("truncated checkpoint", [*in_run, f"ckpt_path={tmp / 'truncated.ckpt'}"],
         f"cannot read checkpoint {tmp / 'truncated.ckpt'}: not an sslseg Lightning checkpoint (RuntimeError)"),
        ("another method", [*in_run, "ckpt_path=last", "method=daw"],
         f"{trained} method.name=supervised, this run has method.name=daw (a resumed run keeps its method)"),
        ("another class count", [*in_run, "ckpt_path=last", "method=supervised", "dataset.num_classes=7"],
         f"{trained} dataset.num_classes=6, this run has dataset.num_classes=7 (a resumed run keeps its class count)"),
        ("another backbone", [*in_run, "ckpt_path=last", "method=supervised", "backbone=resnet50"],
         f"{trained} backbone.name=tiny, this run has backbone.name=resnet50 (a resumed run keeps its backbone)"),
        ("batch size not a number", [*in_run, "data.batch_size=abc"],
         "data.batch_size=abc: expected a positive integer"),
        ("steps not a number", [*in_run, "trainer.max_steps=x"],
         "trainer.max_steps=x: expected an integer ≥ 1, or -1 for no limit"),
        ("epochs not a number", [*in_run, "trainer.max_epochs=ten"],
         "trainer.max_epochs=ten: expected an integer ≥ 1, or -1 for no limit"),
        ("lr not a number", [*in_run, "optim.lr=fast"], "optim.lr=fast: expected a positive number"),
        ("devices not a count", [*in_run, "trainer.devices=two"],
         "trainer.devices=two: expected a positive integer, -1, auto, or a list of device ids"),
        ("empty split", [*in_run, "split="], "split=: expected a split folder name (92, 1_16, ...)"),
        ("output folder under a file", [f"paths.output_dir={tmp / 'a_file' / 'out'}"],
         f"cannot create {tmp / 'a_file' / 'out'}/daw/toy_16/<time>_seed0 (paths.output_dir): "
         f"{tmp / 'a_file'} is a file, not a folder"),
        ("toy data folder under a file", [f"paths.data_dir={tmp / 'a_file'}", f"hydra.run.dir={tmp / 'toy_run'}"],
         f"cannot write the toy dataset to {tmp / 'a_file' / 'toy'} (paths.data_root): Not a directory"),
        ("wrong mix source", [*fresh("mix"), "method=unimatch", "method.mix_source=foo", "logger=none"],
         "method.mix_source must be one of ['loader', 'batch', 'flip'], got 'foo'"),
        ("method class typo", [*fresh("typo"), "method._target_=sslseg.methods.daw.DAv", "logger=none"],
         "method._target_=sslseg.methods.daw.DAv: sslseg.methods.daw has no SemiSegModule named DAv"),
        ("image and mask sizes differ", bad_data("mismatch"),
         f"mask {mask} is 40x48 but its image {image} is 96x96 (width x height)"),
        ("unreadable image", bad_data("corrupt"),
         f"cannot read image: {data / 'JPEGImages' / 'toy_train_00001.jpg'}"),
        ("truncated image", bad_data("truncated"),
         f"image file is truncated: {data / 'JPEGImages' / 'toy_train_00002.jpg'}"),
        ("an image listed twice", bad_data("repeated"),
         f"{data / 'splits_bad' / 'repeated' / 'mini' / 'labeled.txt'}:2: JPEGImages/toy_train_00003.jpg is listed "
         "again (first on line 1); a split lists each image once"),
        ("a finished run's folder", in_run,
         f"{run} holds a finished run ({run / 'results.json'}): give the new run another folder (hydra.run.dir)"),
        ("stages assigned an empty mapping", [*in_run, "method=dars", "method.stages={}"],
         "method.stages={} merges into the stages instead of removing them (Hydra merges mappings): "
         "~method.stages removes them"),
    ]


def test_each_bad_input_is_one_line_exit_2_and_leaves_the_run_directory_alone(finished_run, broken_data, data_dir,
                                                                               tmp_path):
    before = _snapshot(finished_run)
    cases = _cases(finished_run, broken_data, data_dir, tmp_path)
    runs = [run_cli("train.py", *overrides) for _, overrides, _ in cases]  # in this process: one at a time
    failures = []
    for (name, _, expected), run in zip(cases, runs):
        lines = run.stderr.strip().splitlines()
        if "<time>" in expected and len(lines) == 1:  # the run folder's name holds the time of the run
            head, tail = expected.split("<time>")
            expected = lines[0][len("error: "):] if lines[0].startswith(f"error: {head}") and \
                lines[0].endswith(tail) else expected
        if run.returncode != 2 or lines != [f"error: {expected}"] or "Traceback" in run.stdout:
            failures.append(f"{name}: exit {run.returncode}, stderr {run.stderr[-1500:]!r}")
    assert not failures, "\n".join(failures)
    assert _snapshot(finished_run) == before
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("checkpoints"))
