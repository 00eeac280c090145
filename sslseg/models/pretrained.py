"""Loading ImageNet backbones with a strict key report.

The seed methods load `resnet{50,101}.pth` with strict=False, so a mismatch silently trains from
random init. Here every key must match: the classifier `fc.*` is the only thing ignored; anything
missing, unexpected or of the wrong shape is an error that names the keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslseg.errors import UserError

IGNORED_PREFIXES = ("fc.",)


def _shorten(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights not found: {path} (set backbone.pretrained=<file> or null)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or torch errors: the file is not a state dict
        raise UserError(f"cannot read pretrained weights {path}: {exc.__class__.__name__}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(IGNORED_PREFIXES)}
    expected = backbone.state_dict()
    # `num_batches_tracked` is bookkeeping, not a weight: tolerate files saved without it.
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    if missing:
        raise UserError(f"{path}: missing keys for backbone: {_shorten(missing)}")
    if unexpected:
        raise UserError(f"{path}: unexpected keys for backbone: {_shorten(unexpected)}")
    wrong = sorted(k for k in state if tuple(state[k].shape) != tuple(expected[k].shape))
    if wrong:
        k = wrong[0]
        raise UserError(f"{path}: shape mismatch for {_shorten(wrong)}: file {tuple(state[k].shape)}, "
                        f"model {tuple(expected[k].shape)}")
    backbone.load_state_dict(state, strict=False)
