"""Train a method: `python train.py method=unimatch dataset=pascal split=1464` (see docs/running.md)."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

os.environ.setdefault("SSLSEG_ROOT", os.path.dirname(os.path.abspath(__file__)))

from sslseg.errors import exit_on_user_error  # noqa: E402
from sslseg.run.cli import is_launcher_rank, quote_split_overrides  # noqa: E402
from sslseg.run.config_checks import check_config, refused_run_leaves_no_folder  # noqa: E402
from sslseg.run.console import console_logged, quiet_third_party  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg) -> float:
    if not is_launcher_rank():  # a DDP child: its launcher logs the run's console
        return run(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with refused_run_leaves_no_folder(run_dir, cfg), console_logged(run_dir / "train.log"):
        return run(cfg)


@exit_on_user_error
def run(cfg) -> float:
    """Returns the best val mIoU: the objective a Hydra sweeper maximises (conf/hparams_search/)."""
    check_config(cfg)  # again per job: a sweep's overrides reach the jobs only
    quiet_third_party()  # before the imports below (matplotlib logs its font cache's creation on import)
    from sslseg.run.experiment import train

    return float(train(cfg)["best_val_mIoU"])


if __name__ == "__main__":
    sys.argv = quote_split_overrides(sys.argv)
    main()
