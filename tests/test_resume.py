"""A run stopped mid-epoch and resumed ends exactly where the uninterrupted run ends: same weights, same
val mIoU, bit for bit on CPU (checkpoints every few steps, the data position, the random states), and the
same logs: the CSV continued, row for row the uninterrupted run's, the same W&B run, the wall time of both
parts."""

import csv
import json
import shlex
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import kill_train_when, mini_split, run_cli

# One worker under `pytest -n`: the tests of a method share its uninterrupted run (a module fixture).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]

STEPS_PER_EPOCH = 12  # 96 unlabeled images, batches of 8
EVERY = 4  # step checkpoints at 4 and 8 (mid-epoch 0), 16 and 20 (mid-epoch 1)


@pytest.fixture(scope="module")
def splits(data_dir, tmp_path_factory):
    return mini_split(data_dir, tmp_path_factory.mktemp("splits"), unlabeled=8 * STEPS_PER_EPOCH)


@pytest.fixture(scope="module")
def args(data_dir, splits):
    def make(method: str, run_dir: Path) -> list[str]:
        return [f"method={method}", f"paths.data_dir={data_dir}", f"dataset.splits_dir={splits}", "split=mini",
                "logger=csv", "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=3",
                f"trainer.max_steps={2 * STEPS_PER_EPOCH}", f"callbacks.checkpoint.every_n_steps={EVERY}",
                f"hydra.run.dir={run_dir}"]
    return make


@pytest.fixture(scope="module")
def uninterrupted(args, tmp_path_factory):
    """The run directory of each method's uninterrupted run (made once per module)."""
    done: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in done:
            run_dir = tmp_path_factory.mktemp(f"whole_{method}")
            result = run_cli("train.py", *args(method, run_dir))
            assert result.returncode == 0, result.stderr[-3000:]
            # The epoch-end checkpoint (written during validation) points at the start of the next epoch.
            last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            assert last["train_steps"] == 2 * STEPS_PER_EPOCH
            assert last["SemiSegDataModule"] == {"epoch": 2, "batches": 0}
            assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
            done[method] = run_dir
        return done[method]
    return run


def _final(run_dir: Path) -> tuple[dict, dict]:
    """The weights at the end (last.ckpt, written at the end of epoch 1) and results.json."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return checkpoint["state_dict"], json.loads((run_dir / "results.json").read_text())


def _assert_same_end(resumed: Path, uninterrupted: Path) -> None:
    (weights, results), (reference_weights, reference) = _final(resumed), _final(uninterrupted)
    assert weights.keys() == reference_weights.keys()
    different = [k for k in weights if not torch.equal(weights[k], reference_weights[k])]
    assert not different, different[:5]
    for key in ("best_val_mIoU", "final_val_mIoU", "steps", "best_from_validations"):
        assert results[key] == reference[key], key
    # The CSV log is continued, not restarted: the earlier part's rows up to its checkpoint, then the resumed
    # part's, each at the step the uninterrupted run logged it (a resume once labelled every row a step late).
    rows, reference_rows = _csv_rows(resumed), _csv_rows(uninterrupted)
    assert any(row["train/loss"] for row in rows) and any(row["val/mIoU"] for row in rows)
    assert rows == reference_rows


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def _wall_seconds(checkpoint: dict) -> float:
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("RunCheckpoints")]
    return state["wall_seconds"]


# SIGKILL for DAW: the state beyond one network and its optimizer (the EMA teacher that DSSN, UniMatch V2 and
# DDFP also keep, the class-distribution estimates). DDFP's flow and second optimizer are restored in
# test_ddfp.py; supervised is stopped and resumed by the signal test below.
def test_killed_mid_epoch_and_resumed_ends_bit_identical(args, uninterrupted, tmp_path):
    method = "daw"
    run_dir = tmp_path / "stopped"
    last = run_dir / "checkpoints" / "last.ckpt"
    kill_train_when(last, *args(method, run_dir))  # SIGKILL once step 4's checkpoint exists
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["train_steps"] % EVERY == 0 and saved["train_steps"] % STEPS_PER_EPOCH != 0  # mid-epoch
    assert not (run_dir / "results.json").exists()

    resumed = run_cli("train.py", *args(method, run_dir), "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(run_dir, uninterrupted(method))
    # The wall time counts the first part, up to its checkpoint, and the resumed part.
    assert json.loads((run_dir / "results.json").read_text())["wall_seconds"] > _wall_seconds(saved) > 0


@pytest.mark.parametrize(("method", "sig", "code"), [("daw", signal.SIGTERM, 143), ("supervised", signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_the_printed_command_resumes_bit_identical(args, uninterrupted, tmp_path,
                                                                                   method, sig, code):
    run_dir = tmp_path / "stopped"
    last = run_dir / "checkpoints" / "last.ckpt"
    wandb = {"WANDB_MODE": "offline"}  # both parts log to W&B too (offline: into the run directory)
    returncode, output = kill_train_when(last, *args(method, run_dir), "logger=[csv,wandb]", sig=sig, env=wandb)
    assert returncode == code, output[-3000:]
    saved = torch.load(last, map_location="cpu", weights_only=False)
    (line,) = [x for x in output.splitlines() if x.startswith("stopped by")]
    stopped = f"stopped by {signal.Signals(sig).name} after step {saved['train_steps']}, checkpoint {last}; "
    assert line.startswith(stopped + f"resume with: python train.py method={method} ")
    assert not (run_dir / "results.json").exists()

    command = shlex.split(line.split("resume with: ")[1])  # the printed command is the one that resumes
    assert command[:2] == ["python", "train.py"] and command[-1] == "ckpt_path=last"
    resumed = run_cli("train.py", *command[2:], env=wandb)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(run_dir, uninterrupted(method))
    # One W&B run in two parts: each part's offline folder ends with the same run id.
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and len({p.name.rsplit("-", 1)[1] for p in parts}) == 1, parts
    # train.log holds both parts' console: the stop message, then the resumed run's last line.
    log = (run_dir / "train.log").read_text()
    assert line in log and log.rstrip().endswith(resumed.stdout.strip().splitlines()[-1])


def test_resumed_at_an_epoch_end_with_persistent_workers_ends_bit_identical(args, tmp_path):
    """Epoch-end checkpoints only; two persistent workers, which draw the next epoch's indices when the
    resumed fit makes its iterator (a resumed run once replayed epoch 0's batches there)."""
    workers = ["data.num_workers=2", "callbacks.checkpoint.every_n_steps=0"]
    whole = run_cli("train.py", *args("supervised", tmp_path / "whole"), *workers)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "stopped"
    last = run_dir / "checkpoints" / "last.ckpt"
    kill_train_when(last, *args("supervised", run_dir), *workers)  # SIGKILL once epoch 0's checkpoint exists
    assert torch.load(last, map_location="cpu", weights_only=False)["SemiSegDataModule"]["batches"] == 0
    resumed = run_cli("train.py", *args("supervised", run_dir), *workers, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(run_dir, tmp_path / "whole")
