"""The validation cadence through the command line: a staged run that validates on its reference's epochs
(semseg's evaluate_start/evaluate_freq), and a step budget that ends mid-epoch, whose final weights are scored
and reported (eval.py on last.ckpt gives the same number)."""

import json

import pytest

from tests.conftest import last_line, mini_split, run_cli

pytestmark = pytest.mark.slow

def _cadence(stage: str, epochs: int, after: int, every: int) -> list[str]:
    """A round's epochs and its validations (semseg's evaluate_start, evaluate_freq)."""
    return [f"method.stages.{stage}.epochs={epochs}",
            f"+method.stages.{stage}.overrides.validation={{after_epoch: {after}, every_n_epochs: {every}}}"]


COMMON = ["logger=none", "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2"]


def test_a_dars_run_validates_on_its_cadence_and_says_what_its_best_came_from(data_dir, tmp_path):
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=16)  # 2 steps per epoch
    run_dir = tmp_path / "run"
    run = run_cli("train.py", "method=dars", f"paths.data_dir={data_dir}", f"dataset.splits_dir={splits}", "split=mini",
                  f"hydra.run.dir={run_dir}", *COMMON,
                  # epochs 1-3, 4-5, 6-9 over the rounds: validations at 3 | 4, 5 | 7, 9
                  *_cadence("round0", 3, 1, 2), *_cadence("round1", 2, 3, 1), *_cadence("round2", 4, 5, 2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[0].startswith("no published recipe for dars on toy: sslseg's defaults "
                                                 "(conf/recipe/default_toy.yaml): tiny + deeplabv3plus, crop 64, ")
    counts = {name: json.loads((run_dir / name / "results.json").read_text())["best_from_validations"]
              for name in ("round0", "round1", "round2")}
    assert counts == {"round0": 1, "round1": 2, "round2": 2}
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["recipe"], results["reported"], results["best_from_validations"]) == (None, "best", 2)
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"


def test_a_budget_that_ends_mid_epoch_reports_its_final_weights(data_dir, tmp_path):
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=32)  # 4 steps per epoch
    run_dir = tmp_path / "run"
    run = run_cli("train.py", "method=supervised", f"paths.data_dir={data_dir}", f"dataset.splits_dir={splits}",
                  "split=mini", f"hydra.run.dir={run_dir}", "logger=none", "data.num_workers=0",
                  "trainer.enable_progress_bar=false", "trainer.max_steps=6")  # epoch 1 validates at step 4
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6 and results["best_from_validations"] == 2  # step 4, and the final weights at 6
    evaluated = run_cli("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "dataset=toy",
                        f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'eval'}", "data.num_workers=0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert last_line(evaluated.stdout) == f"val mIoU: {results['final_val_mIoU']:.2f}"
