"""Scripts run in processes of their own without a fresh interpreter's imports.

Some tests need a training in a process of its own: one they kill (SIGKILL, SIGTERM, SIGINT) and resume, a DDP rank.
A fresh `python train.py` pays the stack's imports first (torch, Lightning, Hydra, torchmetrics, albumentations:
8 s on 2 CPU cores), often more than its training. Here the process is forked from a multiprocessing forkserver that
has imported the stack once; the script then runs as `python <script> args` would, as `__main__` with sys.argv, the
given environment and the repository as working directory, and exits with its exit code after its atexit
handlers. The forkserver has run no torch operation, so its children start as a new interpreter would (torch's
thread pool included: a resumed run matches its uninterrupted one bit for bit).
"""

from __future__ import annotations

import atexit
import functools
import io
import multiprocessing
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ("torch", "lightning.pytorch", "torchmetrics", "hydra", "albumentations", "omegaconf", "sslseg.methods",
           "sslseg.run.cli", "sslseg.run.fitting")


@functools.cache
def _outputs() -> Path:
    folder = tempfile.TemporaryDirectory(prefix="sslseg-warm-")  # removed when the test process ends
    atexit.register(folder.cleanup)
    return Path(folder.name)


@functools.cache
def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def exit_code(exc: SystemExit) -> int:
    """The exit code Python gives `raise SystemExit(x)`: x if an int, 0 for None, else 1 with x printed to stderr."""
    if isinstance(exc.code, int) or exc.code is None:
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _entry(target: str, args: list[str], env: dict, stdout: str, stderr: str) -> None:
    """In the forked process: fds 1 and 2 to the given files, then `python <target> args` (`-m <module>` for a
    target without `.py`)."""
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(file, fd)
        os.close(file)
    # Unbuffered as with PYTHONUNBUFFERED=1: a killed process keeps what it printed.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(ROOT)
    code = 0
    try:
        if target.endswith(".py"):
            sys.argv = [str(ROOT / target), *args]
            runpy.run_path(sys.argv[0], run_name="__main__")
        else:
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:  # as an uncaught exception ends `python <script>`
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter does at exit (W&B, loggers); multiprocessing's exit skips it
    os._exit(code)


class WarmProcess:
    """`python <target> args` started in a forked process; `target` is a script path relative to the repository
    (train.py) or a module name (tests.ddp_contract). Its stdout and stderr go to files (the same one with
    `merge_output`), read by `stdout` and `stderr`."""

    def __init__(self, target: str, *args: str, env: dict | None = None, merge_output: bool = False):
        folder = Path(tempfile.mkdtemp(dir=_outputs()))
        self._out, self._err = folder / "stdout", folder / ("stdout" if merge_output else "stderr")
        self._out.touch()
        self._err.touch()
        full_env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"} | (env or {})
        self.process = _context().Process(target=_entry, args=(target, list(args), full_env, str(self._out),
                                                                str(self._err)))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code (as subprocess's: -N when signal N ended it); kills it past `timeout`."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            raise TimeoutError(f"killed after {timeout} s: {self.stdout[-2000:]}{self.stderr[-2000:]}")
        return self.process.exitcode

    def running(self) -> bool:
        return self.process.is_alive()

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return "" if self._err == self._out else self._err.read_text(errors="replace")
