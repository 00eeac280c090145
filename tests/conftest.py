"""Shared fixtures: the toy dataset (generated once per session), composed configs, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslseg.data.toy import ensure_toy_dataset
from sslseg.run.cli import compose_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ["WANDB_MODE"] = "disabled"
os.environ["HYDRA_FULL_ERROR"] = "1"
os.environ["SSLSEG_ROOT"] = str(ROOT)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding the toy set (as `paths.data_dir`)."""
    data = tmp_path_factory.mktemp("data")
    ensure_toy_dataset(data / "toy")
    return data


compose_cfg = compose_config  # the real config, composed as the CLI would (split quoting included)


def run_cli(script: str, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py / eval.py as a user would; output captured."""
    full_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def mini_split(data_dir: Path, out: Path, unlabeled: int = 64) -> Path:
    """A splits folder (`dataset.splits_dir`) with split 'mini': the toy set's 16 labeled images and its
    first `unlabeled` unlabeled ones (an epoch of unlabeled/8 steps at the default batch)."""
    toy = data_dir / "toy" / "splits"
    (out / "mini").mkdir(parents=True)
    (out / "mini" / "labeled.txt").write_text((toy / "16" / "labeled.txt").read_text())
    (out / "mini" / "unlabeled.txt").write_text("\n".join((toy / "16" / "unlabeled.txt").read_text().split("\n")
                                                          [:unlabeled]) + "\n")
    (out / "val.txt").write_text((toy / "val.txt").read_text())
    return out


def kill_train_when(path: Path, *args: str, timeout: int = 600, sig: int | None = None,
                    env: dict | None = None) -> tuple[int, str]:
    """Start `train.py args`, send it `sig` (SIGKILL by default) as soon as `path` exists (or it ends, or
    time runs out); its exit code and output once it has ended."""
    import signal
    import time

    full_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    run = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=full_env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while not path.is_file() and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL if sig is None else sig)
    output, _ = run.communicate(timeout=timeout)
    return run.returncode, output


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """A key-list file (`<state-dict key> (<shape>)` per line, `#` lines are comments) as {key: shape}."""
    keys = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys
