"""conf/debug/: each config runs on the toy set and ends as a run does (results.json, the val mIoU line)."""

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sslseg.data.datamodule import SemiSegDataModule
from tests.conftest import compose_cfg, last_line, mini_split, run_cli

SHORT = ["trainer.enable_progress_bar=false"]


def _common(data_dir: Path, out: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", f"paths.output_dir={out}"]


def _one_result(out: Path) -> tuple[Path, dict]:
    (path,) = sorted(out.rglob("results.json"))
    return path.parent, json.loads(path.read_text())


@pytest.mark.slow
def test_fast_dev_run_ends_with_the_best_checkpoints_evaluation(data_dir, tmp_path):
    """Lightning saves no checkpoint under fast_dev_run; the run still evaluates a best.ckpt (its final weights)."""
    run = run_cli("train.py", "debug=fast_dev_run", *_common(data_dir, tmp_path), *SHORT)  # DAW: student + teacher
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir, results = _one_result(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:2] == ("debug", "daw")  # kept apart from real runs
    assert results["steps"] == 1 and results["debug"] == "fast_dev_run"
    assert Path(results["best_checkpoint"]) == run_dir / "checkpoints" / "best.ckpt"
    assert Path(results["best_checkpoint"]).is_file()
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"


@pytest.mark.slow
def test_fast_dev_run_of_a_staged_method_labels_every_unlabeled_image(data_dir, tmp_path):
    """A generate stage predicts the whole unlabeled list under fast_dev_run: the next round reads every label."""
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=16)
    run = run_cli("train.py", "debug=fast_dev_run", "method=dars", f"dataset.splits_dir={splits}", "split=mini",
                  *_common(data_dir, tmp_path / "out"), *SHORT)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = next((tmp_path / "out").rglob("pseudo2")).parent
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["stages"]) == ["round0", "pseudo1", "round1", "pseudo2", "round2"]
    # one step per round; the rounds continue each other's step count
    assert [results["stages"][r]["steps"] for r in ("round0", "round1", "round2")] == [1, 2, 3]
    assert results["debug"] == "fast_dev_run"
    labels = sorted((run_dir / "pseudo2" / "labels").rglob("*.png"))
    assert len(labels) == 16


@pytest.mark.slow
def test_overfit_drives_the_training_loss_down(data_dir, tmp_path):
    run = run_cli("train.py", "debug=overfit", "method=supervised", "trainer.max_epochs=10",
                  "trainer.check_val_every_n_epoch=10", *_common(data_dir, tmp_path), *SHORT)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir, results = _one_result(tmp_path)
    assert results["debug"] == "overfit" and results["steps"] == 30  # 3 batches x 10 epochs
    with open(run_dir / "csv" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 30  # logged every step
    # The same 3 batches every epoch: the last epoch's loss is a fraction of the first's (measured: 1.72 -> 0.47;
    # 30 steps over new batches end near 0.85).
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])


@pytest.mark.slow
def test_profiler_writes_its_report_into_the_run_directory(data_dir, tmp_path):
    run = run_cli("train.py", "debug=profiler", "method=supervised", "trainer.limit_train_batches=3",
                  *_common(data_dir, tmp_path), *SHORT)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir, results = _one_result(tmp_path)
    assert results["debug"] == "profiler" and results["steps"] == 3
    report = (run_dir / "fit-profile.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    (row,) = [line for line in report.splitlines() if "run_training_batch" in line]
    assert [cell.strip() for cell in row.split("|")][3] == "3"  # Num calls: one per training step
    assert "VALIDATE Profiler Report" in (run_dir / "validate-profile.txt").read_text()


class _Recorder(pl.LightningModule):
    """Records the labeled images of every training step (no training)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["labeled"]["image"].clone()))
        return self.weight.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_overfit_batches_are_the_same_images_and_draws_every_epoch(data_dir, tmp_path):
    """debug=overfit's premise: with Lightning's overfit_batches the streams give identical batches (images and
    augmentation draws) in every epoch, where a normal epoch draws new ones."""
    cfg = compose_cfg(["method=supervised", f"paths.data_dir={data_dir}", "data.num_workers=0"])

    def batches(**trainer_args) -> dict[int, list[torch.Tensor]]:
        datamodule = SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, cfg.split, ("labeled",), 0)
        module = _Recorder()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             use_distributed_sampler=False, default_root_dir=tmp_path, **trainer_args)
        trainer.fit(module, datamodule=datamodule)
        by_epoch: dict[int, list[torch.Tensor]] = {}
        for epoch, images in module.seen:
            by_epoch.setdefault(epoch, []).append(images)
        return by_epoch

    overfit = batches(overfit_batches=2)
    assert [len(overfit[e]) for e in (0, 1)] == [2, 2]
    assert all(torch.equal(a, b) for a, b in zip(overfit[0], overfit[1]))
    normal = batches(limit_train_batches=2)
    assert not torch.equal(normal[0][0], normal[1][0])
