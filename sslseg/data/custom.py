"""Your own data in one line: `python train.py dataset=custom paths.data_root=<dir>`.

What conf/dataset/custom.yaml reads from the data root, through the config resolvers below, when the
options are not given on the command line:
  classes.txt   one class name per line; the first line names class id 0, the next id 1, ... (a mask's
                pixel value is its line number minus one; 255 = ignore). Its line count is
                dataset.num_classes and its lines dataset.class_names. Without it, set
                dataset.num_classes (the names are then class_0, class_1, ...).
  splits/       the split lists (dataset.splits_dir), as `python -m sslseg.data.make_splits custom <dir>`
                writes them: val.txt and one folder per split. With one split folder it is the run's
                split; with several, `split=<name>` picks one.
The run's length is a number of training steps (dataset.train_steps, about the papers' runs), whatever
the folder's size: the epochs derive from it and from the split's unlabeled list, and validation runs at
most about 80 times (validation.every_n_epochs); both in conf/recipe/default_custom.yaml.

A resolver runs whenever its option is read, so train.py, eval.py and every DDP process see the same
values. Those Hydra reads itself (the split, in the run directory's name) never raise: an undecidable
split is None, which the DataModule reports with the splits that exist. The class resolvers raise a
UserError, which the entry points print as one line (sslseg.errors).
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from sslseg.data.splits import available_splits
from sslseg.errors import UserError

CLASSES_FILE = "classes.txt"


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, line i + 1 = class id i. Trailing blank lines are ignored; a blank line in between
    would shift every id after it, and two classes with one name would share a per-class IoU entry."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"{path} names no class: write one class name per line (the first line is class 0)")
    for lineno, name in enumerate(lines, start=1):
        if not name:
            raise UserError(f"{path}:{lineno}: empty line (line i names class id i-1; remove it or name the class)")
        if name in lines[: lineno - 1]:
            raise UserError(f"{path}:{lineno}: class name {name!r} used twice")
    return lines


def num_classes_from_root(data_root: str) -> int:
    """dataset.num_classes of dataset=custom when not given: the line count of <data root>/classes.txt."""
    path = Path(str(data_root)) / CLASSES_FILE
    if not path.is_file():
        raise UserError(f"dataset=custom needs its classes: {path} not found (write one class name per line, the "
                        "first line is class 0) or set dataset.num_classes=<number of classes>")
    return len(read_classes_file(path))


def class_names_from_root(data_root: str, num_classes: int) -> ListConfig | None:
    """dataset.class_names of dataset=custom when not given: <data root>/classes.txt, if there is one (a
    ListConfig: OmegaConf's YAML dump, `--cfg job --resolve`, refuses a plain list from a resolver)."""
    path = Path(str(data_root)) / CLASSES_FILE
    if not path.is_file():
        return None
    names = read_classes_file(path)
    if len(names) != int(num_classes):
        raise UserError(f"{path} names {len(names)} classes but dataset.num_classes={num_classes}: fix the file or "
                        "drop dataset.num_classes")
    return ListConfig(names)


def only_split(splits_dir: str) -> str | None:
    """The split of dataset=custom when `split=` is not given: the only split folder, else None."""
    names = available_splits(str(splits_dir))
    return names[0] if len(names) == 1 else None


def _list_length(path: Path) -> int | None:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else None


def epochs_for_steps(steps: int, splits_dir: str, split, epoch_length: str, global_batch: int | None,
                     batch: int) -> int:
    """Epochs of a run of at least `steps` training steps: an epoch is one pass over data.epoch_length's list
    (the unlabeled one by default) in steps of the global batch (data.global_batch_size; when it is null,
    data.batch_size, as if on one device). 1 when the lists cannot be read: the DataModule then names them."""
    if split is None:
        return 1
    labeled, unlabeled = (_list_length(Path(str(splits_dir)) / str(split) / f"{name}.txt")
                          for name in ("labeled", "unlabeled"))
    if labeled is None or unlabeled is None:
        return 1
    images = {"labeled": labeled, "all": labeled + unlabeled}.get(str(epoch_length), unlabeled)
    steps_per_epoch = max(1, images // int(global_batch or batch))
    return max(1, math.ceil(int(steps) / steps_per_epoch))


def ceil_div(numerator: int, denominator: int) -> int:
    """⌈numerator / denominator⌉, at least 1 (validation.every_n_epochs of dataset=custom)."""
    return max(1, math.ceil(int(numerator) / int(denominator)))


RESOLVERS = {
    "sslseg.num_classes": num_classes_from_root,
    "sslseg.class_names": class_names_from_root,
    "sslseg.only_split": only_split,
    "sslseg.epochs_for_steps": epochs_for_steps,
    "sslseg.ceil_div": ceil_div,
}


def register_resolvers() -> None:
    """Make the resolvers above known to OmegaConf (idempotent; sslseg.run.cli calls it on import)."""
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
