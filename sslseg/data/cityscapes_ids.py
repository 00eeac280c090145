"""Convert raw Cityscapes `*_gtFine_labelIds.png` to the 19-class `*_gtFine_labelTrainIds.png`.

    python -m sslseg.data.cityscapes_ids data/cityscapes

The mapping is cityscapesScripts' (id -> trainId; every other id -> 255). Existing trainId files
are left alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sslseg.errors import UserError, exit_on_user_error

ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LOOKUP = np.full(256, 255, dtype=np.uint8)
for _id, _train_id in ID_TO_TRAIN_ID.items():
    LOOKUP[_id] = _train_id


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return LOOKUP[label_ids]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="Cityscapes root (holds gtFine/)")
    args = parser.parse_args(argv)
    gt = args.root / "gtFine"
    if not gt.is_dir():
        raise UserError(f"not found: {gt}")
    written = 0
    for path in sorted(gt.rglob("*_gtFine_labelIds.png")):
        target = path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if not target.exists():
            Image.fromarray(to_train_ids(np.array(Image.open(path)))).save(target)
            written += 1
    print(f"wrote {written} *_labelTrainIds.png under {gt}")


if __name__ == "__main__":
    main()
