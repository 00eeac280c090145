"""Train a method: `python train.py method=unimatch dataset=pascal split=1464` (see README)."""

import os
import sys

import hydra

os.environ.setdefault("SSLSEG_ROOT", os.path.dirname(os.path.abspath(__file__)))

from sslseg.cli import quote_split_overrides  # noqa: E402
from sslseg.errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg) -> float:
    """Returns the best val mIoU: the objective a Hydra sweeper maximises (conf/hparams_search/)."""
    from sslseg.experiment import train

    return float(train(cfg)["best_val_mIoU"])


if __name__ == "__main__":
    sys.argv = quote_split_overrides(sys.argv)
    main()
