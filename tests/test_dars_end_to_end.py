"""DARS through the command line on a small toy split: every stage, the pseudo-labels' class
distribution against its target, and a run killed in round 1 that resumes there."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import kill_train_when, last_line, mini_split, run_cli, run_cli_subprocess

pytestmark = pytest.mark.slow


def _args(data_dir: Path, splits: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["method=dars", f"paths.data_dir={data_dir}", f"dataset.splits_dir={splits}", "split=mini", "logger=none",
            "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=100",
            "trainer.limit_val_batches=2", f"hydra.run.dir={run_dir}", *extra]


def _class_shares(folder: Path, num_classes: int = 6) -> np.ndarray:
    counts = sum(np.bincount(np.asarray(Image.open(p)).ravel(), minlength=256) for p in folder.rglob("*.png"))
    return counts[:num_classes] / counts[:num_classes].sum()


def test_dars_runs_every_stage_and_aligns_the_pseudo_label_distribution(data_dir, tmp_path):
    splits = mini_split(data_dir, tmp_path / "splits")
    run_dir = tmp_path / "run"
    # Round 0 long enough that every class is predicted on more pixels than its target (no overflow).
    budget = ["method.stages.round0.epochs=25", "method.stages.round1.epochs=1", "method.stages.round2.epochs=1"]
    run = run_cli("train.py", *_args(data_dir, splits, run_dir, *budget))
    assert run.returncode == 0, run.stderr[-3000:]
    stages = ["round0", "pseudo1", "round1", "pseudo2", "round2"]
    assert [line.split(":")[0] for line in run.stdout.splitlines() if line.startswith("stage ")] == [
        f"stage {s}" for s in stages]
    results = json.loads((run_dir / "results.json").read_text())
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"
    assert results["stage"] == "round2" and list(results["stages"]) == stages

    for name, ratio in (("pseudo1", 0.4), ("pseudo2", 0.5)):
        stats = json.loads((run_dir / name / "stats.json").read_text())
        listed = (run_dir / name / "pseudo.txt").read_text().split("\n")
        assert len([line for line in listed if line]) == 64
        labels = np.stack([np.asarray(Image.open(p)) for p in sorted((run_dir / name / "labels").rglob("*.png"))])
        kept = (labels != 255).mean()
        assert abs(kept - ratio) < 0.01  # the labeling ratio of all unlabeled pixels carries a pseudo-label
        target = np.array(stats["targets"]) / sum(stats["targets"])  # the labeled class distribution
        assert np.abs(_class_shares(run_dir / name / "labels") - target).max() < 0.02, (name, stats)
        assert not (run_dir / name / "raw").exists() or not any((run_dir / name / "raw").iterdir())


def test_dars_killed_in_round1_resumes_in_round1(data_dir, tmp_path):
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=16)
    run_dir = tmp_path / "run"
    args = _args(data_dir, splits, run_dir, "method.stages.round0.epochs=1", "method.stages.round1.epochs=4",
                 "method.stages.round2.epochs=1")
    checkpoint = run_dir / "round1" / "checkpoints" / "last.ckpt"
    kill_train_when(checkpoint, *args)
    assert checkpoint.is_file() and not (run_dir / "round1" / "results.json").exists(), "not killed inside round 1"
    round0 = (run_dir / "round0" / "results.json").stat().st_mtime_ns
    # Pseudo-labels damaged while the run was down: one deleted, one truncated.
    labels = sorted((run_dir / "pseudo1" / "labels").rglob("*.png"))
    labels[0].unlink()
    labels[1].write_bytes(labels[1].read_bytes()[:40])

    second = run_cli("train.py", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [line for line in second.stdout.splitlines() if line.startswith("stage ")]
    assert lines[0] == "stage round0: done, skipped"
    assert lines[1].startswith(f"stage pseudo1: 2 damaged pseudo-label file(s), first cannot read mask: {labels[0]}")
    assert lines[1].endswith("generating the stage again")
    assert lines[2:4] == ["stage pseudo1: generating pseudo-labels", "stage round1: resuming (labeled, pseudo)"]
    assert all(p.is_file() for p in labels)
    assert (run_dir / "round0" / "results.json").stat().st_mtime_ns == round0
    assert json.loads((run_dir / "results.json").read_text())["stages"]["round1"]["steps"] > 0


def test_dars_on_two_cpu_processes_labels_every_image_once(data_dir, tmp_path):
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=24)
    run_dir = tmp_path / "run"
    run = run_cli_subprocess("train.py", *_args(data_dir, splits, run_dir, "method.stages.round0.epochs=1",
                                                "method.stages.round1.epochs=1", "method.stages.round2.epochs=1",
                                                "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"))
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((run_dir / "pseudo1" / "stats.json").read_text())
    assert stats["unlabeled_pixels"] == 24 * 96 * 96  # both ranks' histograms, each image once
    assert len(list((run_dir / "pseudo1" / "labels").rglob("*.png"))) == 24
    assert sum(stats["kept_pixels"]) == sum(int((np.asarray(Image.open(p)) != 255).sum())
                                            for p in (run_dir / "pseudo1" / "labels").rglob("*.png"))
