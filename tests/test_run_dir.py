import multiprocessing
from pathlib import Path

import pytest

from sslseg.errors import UserError
from sslseg.run.experiment import _RUN_DIR_LOCKS, claim_run_dir


def _claim_in_another_process(run_dir: Path) -> tuple[int, str]:
    """claim_run_dir(run_dir) in another process (forked: no interpreter start-up, no imports): its exit code and
    the error it raised, as `<type>: <message>`."""
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def claim() -> None:
        try:
            claim_run_dir(run_dir)
        except Exception as exc:
            writer.send(f"{type(exc).__name__}: {exc}")
            raise SystemExit(1) from None
        writer.send("")

    process = context.Process(target=claim)
    process.start()
    process.join(60)
    return process.exitcode, reader.recv() if reader.poll(1) else ""


def test_a_run_directory_has_one_owner(tmp_path):
    run_dir = tmp_path / "daw" / "toy_16" / "2026-01-01_00-00-00_seed0"
    claim_run_dir(run_dir)
    try:
        with pytest.raises(UserError, match="in use by another run"):
            claim_run_dir(run_dir)
        # Another process is refused too, with one line naming the folder.
        code, error = _claim_in_another_process(run_dir)
        assert code != 0 and str(run_dir) in error
    finally:
        _RUN_DIR_LOCKS.pop().close()
    claim_run_dir(run_dir)  # free again once the owner is gone
    _RUN_DIR_LOCKS.pop().close()
