"""Shared fixtures: the toy dataset (generated once per session), composed configs, CLI runner."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores, one compute thread each (two threads per worker on two cores
    # oversubscribe them); the processes a test starts inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from sslseg.data.toy import ensure_toy_dataset
from sslseg.run.cli import compose_config
from tests.warm_process import WarmProcess, exit_code

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
    """Run train.py / eval.py as a user would (`python <script> args` from the repository root), in this process:
    the script runs as `__main__` with sys.argv set, so Hydra does all it does on the command line (its own argv
    parsing, -m, --cfg, --help, the run directory and .hydra/, its callbacks, logging). Output is captured; the
    exit code is SystemExit's (0 when the script ends normally, 1 for an uncaught exception, whose traceback is
    in stderr). A training imports nothing new here, so it costs its own work only, not a fresh interpreter's
    imports. Everything a run changes in this process (`_process_state`) is put back. `timeout` is unused
    (kept for the call sites): use `run_cli_subprocess` where a test needs a separate process."""
    import runpy
    import traceback

    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    argv = [str(ROOT / script), *args]
    code = 0
    with _process_state(), redirect_stdout(out), redirect_stderr(err):
        os.environ.update({"PYTHONUNBUFFERED": "1"} | (env or {}))
        os.chdir(ROOT)
        sys.argv = list(argv)
        GlobalHydra.instance().clear()
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            code = exit_code(exc)
        except Exception:  # as an uncaught exception ends `python train.py` (HYDRA_FULL_ERROR=1: its traceback)
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@contextmanager
def _process_state():
    """Put back, after the block, the process-wide state a train.py / eval.py run changes: sys.argv, the
    environment, the working directory, Hydra's global state, logging's configuration (Hydra configures it per
    job), signal handlers, torch's global settings and sslseg's module-level run state."""
    import logging
    import signal

    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from sslseg.run import config_checks

    saved_argv, saved_env, saved_cwd = list(sys.argv), dict(os.environ), os.getcwd()
    saved_hydra = HydraConfig.instance().cfg
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None]
    saved_signals = {s: signal.getsignal(s) for s in signals}
    saved_torch = (torch.get_float32_matmul_precision(), torch.get_num_threads(), torch.get_default_dtype(),
                   torch.are_deterministic_algorithms_enabled(), torch.is_grad_enabled())
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved_loggers = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    saved_disable = manager.disable
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = saved_hydra
        config_checks.FRESH_RUN_DIR = None
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        torch.set_float32_matmul_precision(saved_torch[0])
        torch.set_num_threads(saved_torch[1])
        torch.set_default_dtype(saved_torch[2])
        torch.use_deterministic_algorithms(saved_torch[3])
        torch.set_grad_enabled(saved_torch[4])
        for lg in [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]:
            if lg not in saved_loggers:  # created by the run: as a new logger is
                lg.setLevel(logging.NOTSET)
                lg.handlers[:] = []
                lg.propagate, lg.disabled = True, False
        for lg, (level, handlers, propagate, disabled) in saved_loggers.items():
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        logging.disable(saved_disable)


def run_cli_subprocess(script: str, *args: str, timeout: int = 600,
                       env: dict | None = None) -> subprocess.CompletedProcess:
    """`python <script> args` in its own process (what `run_cli` does in this one), forked warm (tests/warm_process.py):
    for what needs a process of its own (a DDP run, whose rank 1 Lightning starts from the command line)."""
    run = WarmProcess(script, *args, env=env)
    code = run.wait(timeout)
    return subprocess.CompletedProcess([script, *args], code, run.stdout, run.stderr)


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
    """Start `train.py args` in its own process (forked warm: tests/warm_process.py), send it `sig` (SIGKILL by
    default) as soon as `path` exists (or it ends, or time runs out); its exit code and output once it has ended."""
    import signal
    import time

    run = WarmProcess("train.py", *args, env=env, merge_output=True)
    deadline = time.time() + timeout
    while not path.is_file() and run.running() and time.time() < deadline:
        time.sleep(0.05)
    if run.running():
        os.kill(run.pid, signal.SIGKILL if sig is None else sig)
    return run.wait(timeout), run.stdout


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    """A key-list file (`<state-dict key> (<shape>)` per line, `#` lines are comments) as {key: shape}."""
    keys = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys
