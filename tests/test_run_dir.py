import subprocess
import sys

import pytest

from sslseg.errors import UserError
from sslseg.run.experiment import _RUN_DIR_LOCKS, claim_run_dir


def test_a_run_directory_has_one_owner(tmp_path):
    run_dir = tmp_path / "daw" / "toy_16" / "2026-01-01_00-00-00_seed0"
    claim_run_dir(run_dir)
    try:
        with pytest.raises(UserError, match="in use by another run"):
            claim_run_dir(run_dir)
        # Another process is refused too, with one line naming the folder.
        code = ("from pathlib import Path; from sslseg.run.experiment import claim_run_dir; "
                f"claim_run_dir(Path({str(run_dir)!r}))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0 and str(run_dir) in proc.stderr
    finally:
        _RUN_DIR_LOCKS.pop().close()
    claim_run_dir(run_dir)  # free again once the owner is gone
    _RUN_DIR_LOCKS.pop().close()
