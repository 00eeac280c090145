"""`<run dir>/train.log`: the run's console output (stdout and stderr), as the terminal finally shows it.

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
