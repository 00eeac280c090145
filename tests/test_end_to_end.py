"""Whole runs through the command line, as a user types them (CPU, toy set): in the test process (conftest.run_cli),
the DDP runs in processes of their own (Lightning starts rank 1 from the command line)."""

import json
import re
from pathlib import Path

import pytest

from sslseg.report import curves
from tests.conftest import last_line, run_cli, run_cli_subprocess

pytestmark = pytest.mark.slow

FIVE_STEPS = ["logger=csv", "trainer.max_steps=5", "trainer.enable_progress_bar=false", "data.num_workers=0"]
# Two validation batches: these runs check what a run does, not its mIoU (FIVE_STEPS where eval.py must reproduce the
# run's mIoU on the whole validation set).
FAST = [*FIVE_STEPS, "trainer.limit_val_batches=2"]


def _common(data_dir: Path, out: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", f"paths.output_dir={out}"]


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))]


def test_train_then_eval_reproduces_mIoU(data_dir, tmp_path, capsys):
    run = run_cli("train.py", *_common(data_dir, tmp_path), *FIVE_STEPS)  # the default method: DAW (EMA evaluated)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = _results(tmp_path)
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"
    assert results["steps"] == 5 and results["method"] == "daw" and results["dataset"] == "toy"
    assert set(results["per_class_IoU"]) == {"background", "disk", "square", "triangle", "ring", "cross"}
    ckpt = Path(results["best_checkpoint"])
    assert ckpt.is_file()

    evaluation = run_cli("eval.py", f"ckpt_path={ckpt}", "dataset=toy", *_common(data_dir, tmp_path / "eval"),
                         "data.num_workers=0", "trainer.enable_progress_bar=false")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert last_line(evaluation.stdout) == last_line(run.stdout)
    (eval_results,) = _results(tmp_path / "eval")
    assert eval_results["val_mIoU"] == pytest.approx(results["best_val_mIoU"], abs=1e-9)
    assert eval_results["network_from_checkpoint"]  # the network the run reported, not chosen again
    assert re.search(r"^disk\s+\d+\.\d\d\b", evaluation.stdout, re.M)  # the per-class table (three columns)

    curves.main([str(ckpt.parents[1])])  # the run's CSV log, per epoch
    header, _, *epochs = capsys.readouterr().out.splitlines()
    assert header == "| epoch | val/mIoU | val/mIoU_model | val/mIoU_teacher |"  # 5 steps log no train row
    assert f"| {results['best_val_mIoU']:.2f} |" in epochs[-1]


def test_resume_continues_the_step_count(data_dir, tmp_path):
    run_dir = "hydra.run.dir=" + str(tmp_path / "run")
    first = run_cli("train.py", "method=supervised", *_common(data_dir, tmp_path), *FAST, run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train.py", "method=supervised", *_common(data_dir, tmp_path), *FAST[:1], "trainer.max_steps=9",
                     *FAST[2:], run_dir, "ckpt_path=last")
    assert second.returncode == 0, second.stderr[-3000:]
    (results,) = _results(tmp_path)
    assert results["steps"] == 9


def test_multirun_writes_one_results_file_per_job(data_dir, tmp_path):
    run = run_cli("train.py", "-m", "method=supervised", "dataset=toy", "seed=0,1", *_common(data_dir, tmp_path), *FAST)
    assert run.returncode == 0, run.stderr[-3000:]
    results = _results(tmp_path)
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert len({r["run_dir"] for r in results}) == 2


# The command line's DDP path (Lightning's launcher, rank 0 alone writing the run, the global batch, the last line) for
# a method with two validated networks (DAW: student and teacher, the better one chosen across ranks); one validated
# network's (supervised) is tests/test_global_batch.py's DDP run. Each method's step under DDP is
# tests/test_method_contract.py's (every conf/method/*.yaml on two processes).
@pytest.mark.parametrize("method", ["daw"])
def test_ddp_on_two_cpu_processes(data_dir, tmp_path, method):
    run = run_cli_subprocess("train.py", f"method={method}", "trainer=ddp", "trainer.accelerator=cpu",
                             "trainer.devices=2", *_common(data_dir, tmp_path), *FAST)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = _results(tmp_path)  # one run dir, written by rank 0 only
    assert results["devices"] == 2 and results["global_batch_size"] == 16 and results["steps"] == 5
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"
    # The val scores come from confusion matrices already summed over the ranks: no advice to sync them again.
    assert "sync_dist" not in run.stdout + run.stderr


def test_bad_inputs_end_with_one_line(data_dir, tmp_path):
    run = run_cli("train.py", "dataset=pascal", "paths.data_root=/nonexistent", f"paths.output_dir={tmp_path}")
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["error: dataset root not found: /nonexistent "
                                               "(set paths.data_root=<folder of pascal>)"]
    run = run_cli("eval.py", f"ckpt_path={tmp_path / 'none.ckpt'}", f"paths.output_dir={tmp_path}")
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith("error: checkpoint not found")
    run = run_cli("train.py", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'fresh'}")  # nothing to resume
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"error: ckpt_path=last: no checkpoint at {tmp_path / 'fresh' / 'checkpoints' / 'last.ckpt'} "
        "(resume with hydra.run.dir=<the interrupted run's directory>)"]
    run = run_cli("train.py", "method=nope", f"paths.output_dir={tmp_path}")
    assert run.returncode != 0 and "Available options in 'method'" in run.stderr
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.parametrize("method", ["fixmatch", "unimatch", "dssn", "ddfp"])
def test_each_method_runs_five_steps(data_dir, tmp_path, method):
    run = run_cli("train.py", f"method={method}", "dataset=toy", *_common(data_dir, tmp_path), *FAST)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = _results(tmp_path)
    assert results["method"] == method and results["steps"] == 5


def test_wandb_offline_run(data_dir, tmp_path):
    run = run_cli("train.py", "method=supervised", *_common(data_dir, tmp_path), *FAST[1:], "logger=wandb",
                  env={"WANDB_MODE": "offline"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(tmp_path.rglob("offline-run-*")), "no offline W&B run directory"
    assert "wandb sync" in run.stdout + run.stderr


def test_unimatch_coco_preset_on_a_converted_coco_tree(tmp_path):
    """Issue 11's acceptance run: COCO masks made by the converter, the COCO preset (Xception-65), two
    steps; then eval.py with multi-scale + flip selected on the command line."""
    import math

    from sslseg.data.make_splits import main as make_splits
    from sslseg.data.prepare_coco import main as prepare_coco
    from tests.test_prepare import make_coco_tree

    root = tmp_path / "coco"
    make_coco_tree(root, train=6, val=2, size=(48, 64))
    prepare_coco([str(root)])
    make_splits(["coco", str(root), str(tmp_path / "splits" / "coco"), "--fractions", "1_512"])  # 1 labeled, 5 not
    # One CPU process instead of the preset's GPUs, no xception.pth here, a small crop and batch (5 unlabeled
    # images) for speed.
    local = [f"paths.data_root={root}", f"paths.splits={tmp_path / 'splits'}", f"paths.output_dir={tmp_path / 'out'}",
             "backbone.pretrained=null", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
             "trainer.sync_batchnorm=false", "dataset.crop_size=65", "data.global_batch_size=2", "logger=csv",
             "data.num_workers=0", "trainer.enable_progress_bar=false"]
    run = run_cli("train.py", "experiment=unimatch_coco", "trainer.max_steps=2", *local)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = _results(tmp_path / "out")
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"
    assert (results["backbone"], results["method"], results["split"], results["steps"]) == (
        "xception65", "unimatch", "1_512", 2)
    present = [v for v in results["per_class_IoU"].values() if not math.isnan(v)]
    assert len(results["per_class_IoU"]) == 81 and 0 < len(present) < 81
    assert results["best_val_mIoU"] == pytest.approx(sum(present) / len(present))
    assert results["best_val_mIoU_all_classes"] == pytest.approx(sum(present) / 81)  # absent classes count 0

    evaluation = run_cli("eval.py", f"ckpt_path={results['best_checkpoint']}", "dataset=coco", *local[:3],
                         "dataset.eval.scales=[0.5,1.0]", "dataset.eval.flip=true", "dataset.eval.average=logits",
                         "data.num_workers=0", "trainer.enable_progress_bar=false")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    (eval_results,) = _results(tmp_path / "out" / "eval")
    assert last_line(evaluation.stdout) == f"val mIoU: {eval_results['val_mIoU']:.2f}"
    assert eval_results["eval_protocol"] == {  # the COCO config's protocol with this command's overrides
        "mode": "whole", "crop_size": 513, "stride_ratio": 0.6667, "window_batch": 4, "window": "shifted",
        "scales": [0.5, 1.0], "flip": True, "average": "logits", "base_size": None, "crf": False, "multiplier": "auto"}


def test_wandb_multirun_logs_one_run_per_job(data_dir, tmp_path):
    run = run_cli("train.py", "-m", "method=supervised", "seed=0,1", *_common(data_dir, tmp_path), *FAST[1:],
                  "logger=wandb", env={"WANDB_MODE": "offline"})
    assert run.returncode == 0, run.stderr[-3000:]
    runs = sorted(tmp_path.rglob("offline-run-*"))
    # one W&B run per job, each in its own job's folder (before, job 1 logged into job 0's run)
    assert len(runs) == 2 and {r.parent.parent.name.split("_")[-1] for r in runs} == {"seed0", "seed1"}
    # each run holds its own job's config (its run_dir), not the other job's
    for run_folder in runs:
        (record,) = run_folder.glob("run-*.wandb")
        data, job = record.read_bytes(), run_folder.parents[1]
        other = next(r.parents[1] for r in runs if r != run_folder)
        assert str(job).encode() in data and str(other).encode() not in data
