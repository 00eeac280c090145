"""Evaluate a checkpoint: `python eval.py ckpt_path=outputs/.../best.ckpt dataset=pascal` (see docs/running.md)."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

os.environ.setdefault("SSLSEG_ROOT", os.path.dirname(os.path.abspath(__file__)))

from sslseg.errors import exit_on_user_error  # noqa: E402
from sslseg.run.cli import quote_split_overrides  # noqa: E402
from sslseg.run.config_checks import refused_run_leaves_no_folder  # noqa: E402
from sslseg.run.console import quiet_third_party  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg) -> None:
    with refused_run_leaves_no_folder(Path(HydraConfig.get().runtime.output_dir), cfg):
        run(cfg)


@exit_on_user_error
def run(cfg) -> None:
    quiet_third_party()  # before the imports below (matplotlib logs its font cache's creation on import)
    from sslseg.predict.evaluation import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    sys.argv = quote_split_overrides(sys.argv)
    main()
