"""Loading ImageNet backbones with a strict key report.

The seed methods load `resnet{50,101}.pth` with strict=False, so a mismatch silently trains from
random init. Here every key must match: the classifier `fc.*` is the only thing ignored; anything
missing, unexpected or of the wrong shape is an error that names the keys.

A backbone's `weights_format` says how the file names the keys; the file's names are mapped onto the
module's before the check, and an error names the keys as the file does (the backbone registry, backbones.py,
records each registered backbone's file and its format). Formats:

- `native`: the module's own names (the seed methods' resnet{50,101}.pth for the deep stem,
  torchvision's resnet*.pth for `stem=torchvision`).
- `semseg`: semseg's `initmodel/resnet50_v2.pth` (PSPNet in DARS), whose deep stem is six top-level
  modules `conv1, bn1, conv2, bn2, conv3, bn3` where DeepStemResNet has `conv1.{0,1,3,4,6}` and `bn1`;
  `layer1-4` and `fc` are named alike.
- `dinov2`: Meta's `dinov2_vit{s,b,l}14_pretrain.pth` (the files UniMatch V2 loads) for `DINOv2ViT`: the
  module's own names.
- `dinov2_swiglu`: Meta's `dinov2_vitg14_pretrain.pth`, whose SwiGLU is `blocks.N.mlp.w12` / `mlp.w3` in the file
  for timm's `mlp.fc1` / `mlp.fc2` (`DINOv2ViT` with `ffn: swiglu` picks this format).

`pretrained: timm:<model name>` (e.g. `timm:vit_small_patch14_dinov2.lvd142m`) fetches timm's published weights
by name instead of reading a file: it needs network access the first time, then huggingface_hub's cache
(`~/.cache/huggingface`, or `HF_HOME`). timm converts Meta's file to its own names and drops `mask_token`, which
segmentation never uses, so that key alone may be absent and keeps its initial value.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslseg.errors import UserError

IGNORED_PREFIXES = ("fc.",)

# Top-level module of the file -> module of DeepStemResNet, per key format.
KEY_FORMATS: dict[str, dict[str, str]] = {
    "native": {},
    "semseg": {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6",
               "bn3": "bn1"},
    "dinov2": {},
    "dinov2_swiglu": {},
}
# Part of a key inside it (file -> module), per key format: Meta's SwiGLU names against timm's.
KEY_INFIXES: dict[str, dict[str, str]] = {"dinov2_swiglu": {".mlp.w12.": ".mlp.fc1.", ".mlp.w3.": ".mlp.fc2."}}

TIMM_PREFIX = "timm:"
TIMM_OPTIONAL = ("mask_token",)  # keys timm's DINOv2 weights drop


def _rename(key: str, weights_format: str) -> str:
    """The module's name for the file's `key`."""
    modules = KEY_FORMATS[weights_format]
    head, _, rest = key.partition(".")
    key = f"{modules[head]}.{rest}" if head in modules and rest else key
    for file_part, module_part in KEY_INFIXES.get(weights_format, {}).items():
        key = key.replace(file_part, module_part)
    return key


def _file_key(model_key: str, weights_format: str) -> str:
    """The name a file in `weights_format` gives to the model's `model_key`."""
    for file_part, module_part in KEY_INFIXES.get(weights_format, {}).items():
        model_key = model_key.replace(module_part, file_part)
    for file_module, module in KEY_FORMATS[weights_format].items():
        if model_key.startswith(module + "."):
            return file_module + model_key[len(module):]
    return model_key


def _shorten(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# `backbone.pretrained=<library>:<name>`: ImageNet weights that a library publishes, fetched by name on first use and
# cached by that library (torchvision: torch.hub's folder, `python -c "import torch; print(torch.hub.get_dir())"`;
# timm: the Hugging Face cache). Only when the user names them: the recipes read the release's files.
BY_NAME = ("torchvision:", "timm:")


def fetch_by_name(spec: str) -> dict[str, torch.Tensor]:
    """The state dict of `torchvision:<Weights enum>.<entry>` (e.g. torchvision:ResNet101_Weights.IMAGENET1K_V2,
    through torchvision's weights API) or `timm:<model name>` (e.g. timm:resnet101.a1h_in1k)."""
    library, _, name = spec.partition(":")
    where = f"backbone.pretrained={spec}"
    if library == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_weight(name)
        except (ValueError, KeyError, AttributeError):
            raise UserError(f"{where}: torchvision has no weights named {name!r} (for example "
                            "ResNet101_Weights.IMAGENET1K_V2)") from None
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # no network, a proxy, a corrupt cached file
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise UserError(f"{where}: cannot fetch {weights.url}: {reason} (download it by hand into pretrained/ and "
                            "set backbone.pretrained=<file>)") from None
    if library == "timm":
        try:
            import timm
        except ModuleNotFoundError:
            raise UserError(f"{where}: timm is not installed (pip install 'sslseg[dinov2]')") from None
        try:
            return timm.create_model(name, pretrained=True, num_classes=0).state_dict()  # no classifier
        except Exception as exc:  # an unknown name, no network
            raise UserError(f"{where}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") \
                from None
    raise UserError(f"{where}: expected <file>, torchvision:<weights> or timm:<model>")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).startswith(BY_NAME):
        state = fetch_by_name(str(path))
        return {k.removeprefix("module."): v for k, v in state.items()}
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


def load_backbone_weights(backbone: nn.Module, path: str | Path, weights_format: str | None = None) -> None:
    """Strictly load `path` (a file, or `timm:<name>`) into `backbone`; `weights_format` defaults to
    `backbone.weights_format` (else `native`)."""
    if str(path).startswith(TIMM_PREFIX):  # timm's names are the modules' own (DINOv2's SwiGLU included)
        state = read_state_dict(path)
        for key in TIMM_OPTIONAL:
            if key not in state and key in backbone.state_dict():
                state[key] = backbone.state_dict()[key]
        return load_state(backbone, state, f"backbone.pretrained={path}", "native")
    weights_format = weights_format or getattr(backbone, "weights_format", "native")
    load_state(backbone, read_state_dict(path), str(path), weights_format)


def load_state(backbone: nn.Module, file_state: dict[str, torch.Tensor], source: str, weights_format: str) -> None:
    """Check `file_state` (keys named as `weights_format` names them) against `backbone` key by key and load it;
    an error names the keys as the file does."""
    if weights_format not in KEY_FORMATS:
        raise UserError(f"unknown backbone.weights_format {weights_format!r} (one of {sorted(KEY_FORMATS)})")
    file_state = {k: v for k, v in file_state.items() if not k.startswith(IGNORED_PREFIXES)}
    state = {_rename(k, weights_format): v for k, v in file_state.items()}
    named = {_rename(k, weights_format): k for k in file_state}  # model key -> the file's name for it
    expected = backbone.state_dict()
    # `num_batches_tracked` is bookkeeping, not a weight: tolerate files saved without it.
    missing = sorted(_file_key(k, weights_format) for k in expected
                     if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(named[k] for k in state if k not in expected)
    fmt = "" if weights_format == "native" else f" ({weights_format} key format)"
    if missing:
        raise UserError(f"{source}: missing keys for backbone: {_shorten(missing)}{fmt}")
    if unexpected:
        raise UserError(f"{source}: unexpected keys for backbone: {_shorten(unexpected)}{fmt}")
    wrong = sorted(k for k in state if tuple(state[k].shape) != tuple(expected[k].shape))
    if wrong:
        k = wrong[0]
        raise UserError(f"{source}: shape mismatch for {_shorten([named[w] for w in wrong])}{fmt}: "
                        f"file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}")
    backbone.load_state_dict(state, strict=False)
