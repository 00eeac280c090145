"""One rank of tests/test_method_contract.py's DDP run: every method, a few training steps on the toy set as one of two
CPU processes (the test starts both, with LOCAL_RANK set, so Lightning joins them instead of launching its own), then
a checksum of the module's parameters into <out>/rank<N>.json (not its buffers: each rank's BN statistics are its own
batch's since the last broadcast).

    python -m tests.ddp_contract <data dir> <out dir>     # with MASTER_ADDR, MASTER_PORT, WORLD_SIZE=2, LOCAL_RANK
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from tests.fingerprint_steps import fit_steps
from tests.test_method_contract import FULL_STEP, METHODS  # every conf/method/*.yaml

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")

if __name__ == "__main__":
    data_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    checksums = {}
    for method in METHODS:
        module, _ = fit_steps(method, data_dir, 2, overrides=(*DDP, *FULL_STEP.get(method, ())))
        digest = hashlib.sha256()
        for name, parameter in module.named_parameters():
            digest.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
        checksums[method] = digest.hexdigest()
        print(method, checksums[method], flush=True)
    (out_dir / f"rank{os.environ['LOCAL_RANK']}.json").write_text(json.dumps(checksums, indent=1))
