"""What a run prints, and `<run dir>/train.log`, the run's console output as the terminal finally shows it.

A run prints one start block (`start_block`: built here in one place, so that a line is added in one place), the
progress bar (sslseg.run.loggers.LossProgressBar) and one result block (sslseg.run.experiment._report). Library warnings
about what sslseg does on purpose are silenced where they arise (`quiet_third_party`, and the callbacks and loggers
that cause them); other warnings still print.

train.log:
Lightning prints through its own logging handler and the methods print with print(), so Hydra's log file
(which records Python logging only) stayed empty. The console streams are teed into the file instead. A
progress bar redraws its line with carriage returns; the file keeps each line's last state, not every
redraw.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class _Tee:
    """A text stream writing to the console stream and to the log file."""

    def __init__(self, stream: TextIO, log: TextIO):
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        *lines, rest = (self._pending + text).split("\n")
        for line in lines:
            self._log.write(line.rsplit("\r", 1)[-1] + "\n")
        self._pending = rest.rsplit("\r", 1)[-1]
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def close_line(self) -> None:
        if self._pending:
            self._log.write(self._pending + "\n")
            self._pending = ""
        self._log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... of the console stream
        return getattr(self._stream, name)


@contextmanager
def console_logged(path: Path) -> Iterator[None]:
    """Within the block, this process's stdout and stderr are also appended to `path` (a resumed run continues
    the file). An exception leaving the block is written to the file with its traceback, since Hydra prints
    it to the console only after the block."""
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        tees = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        sys.stdout, sys.stderr = tees
        try:
            yield
        except Exception:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = saved
            for tee in tees:
                tee.close_line()


# -- what a run prints: one start block, the progress bar, one result block ---------------------------------------
# Names of the networks a method validates (SemiSegModule.evaluated_networks), as the console and results.json say them.
NETWORK_NAMES = {"model": "student", "teacher": "teacher (EMA)", "pseudo_net": "PseudoNet"}


def network_label(name: str) -> str:
    return NETWORK_NAMES.get(name, name)


def reported_network(networks: tuple[str, ...]) -> str:
    """What the run's number will be: one network, or the better of several at each validation."""
    names = [network_label(n) for n in networks]
    return f"the {names[0]}" if len(names) == 1 else f"the better of {' and '.join(names)} at each validation"


def start_block(*, run_dir, method: str, dataset: str, split, seed: int, networks: tuple[str, ...],
                devices: str, batch_line: str, logger_lines: list[str], resume_line: str | None = None,
                notes: list[str] | None = None) -> list[str]:
    """The lines a training run prints before its progress bar, built in one place (a recipe line, for instance,
    goes here). Each argument is already in words; nothing here reads the config."""
    lines = [f"run: {run_dir}",
             f"{method} on {dataset}, split {split}, seed {seed}; reports {reported_network(networks)}",
             f"devices: {devices}; {batch_line}"]
    lines += logger_lines
    if resume_line:
        lines.append(resume_line)
    lines += notes or []
    return lines


def quiet_third_party() -> None:
    """Silence, at their source, the warnings of the libraries that describe something sslseg does on purpose; real
    warnings stay. Called by every entry point that runs a Trainer (train, eval)."""
    import logging
    import warnings

    # A teacher is kept in eval mode by design (method.teacher.train_mode_epochs); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # The val scores are computed from confusion matrices already summed over the DDP ranks (torchmetrics), so every
    # rank logs the same value; Lightning advises sync_dist=True for each of them, on each rank.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('val/")
    # Lightning's own use of a torch API that torch 2.10+ deprecates: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning prints through its own handler; Hydra's root handler would print every line twice.
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False
    # Informational logs of libraries (matplotlib's font cache, ...) are not the run's news.
    for name in ("matplotlib", "PIL", "urllib3", "fsspec", "git"):
        logging.getLogger(name).setLevel(logging.WARNING)


def say(*lines: str) -> None:
    """Print on the process that reports (rank 0 of a DDP run)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0 and lines:
        print("\n".join(lines), flush=True)
