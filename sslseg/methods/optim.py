"""The optimizer of a method's config: parameter groups by role (`optim.lr_mult`) and the class named by
`optim._target_` (conf/optim/)."""

from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslseg.errors import UserError

# Parameter-group roles of a segmentor (optim.lr_mult): module paths inside it. Any other key is a module path
# itself (backbone.layer4); a parameter takes the multiplier of the longest key that contains it.
GROUP_ROLES = {"backbone": "backbone", "head": "decoder", "classifier": "decoder.classifier", "aux": "decoder.aux_head"}
# optim keys that sslseg reads itself: not arguments of the optimizer class.
SSLSEG_OPTIM_KEYS = ("lr_mult", "poly_power", "schedule_offset_epochs", "fused")


def param_groups(network: nn.Module, lr: float, multipliers) -> list[dict]:
    """One group per multiplier key that holds trainable parameters, in the order the network lists them
    (backbone, then decoder), at lr x multiplier. Parameters no key covers train at lr. A role (GROUP_ROLES) whose
    module the network lacks (aux on a decoder without an aux head) is skipped; a module path that names nothing
    is a typo (UserError)."""
    paths = {key: GROUP_ROLES.get(str(key), str(key)) for key in multipliers}
    names = [name for name, _ in network.named_parameters()]
    for key, path in paths.items():
        if key not in GROUP_ROLES and not any(n == path or n.startswith(path + ".") for n in names):
            raise UserError(f"optim.lr_mult.{key}: the network has no module {path} (roles: {', '.join(GROUP_ROLES)}, "
                            "or a module path such as backbone.layer4)")
    groups: dict[str, dict] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:  # frozen (DeepLabV2's BN affine parameters)
            continue
        matches = [k for k, path in paths.items() if name == path or name.startswith(path + ".")]
        key = max(matches, key=lambda k: len(paths[k])) if matches else None
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * float(multipliers[key]) if key is not None else lr}
        groups[key]["params"].append(param)
    return list(groups.values())


def instantiate_optimizer(optim_cfg: DictConfig, groups: list[dict], on_gpu: bool) -> torch.optim.Optimizer:
    """hydra.utils.instantiate of the optimizer node (its `_target_`, `_partial_: true`, its arguments) with the
    parameter groups. `fused: auto` turns the fused kernels on for GPU runs, where the class has them."""
    node = OmegaConf.to_container(optim_cfg, resolve=True)
    fused = node.get("fused")  # None: the class's default
    for key in SSLSEG_OPTIM_KEYS:
        node.pop(key, None)
    if "_target_" not in node:
        raise UserError("optim._target_ is missing: name the optimizer class (optim=sgd | adamw, conf/optim/)")
    node["_partial_"] = True
    if isinstance(node.get("betas"), list):
        node["betas"] = tuple(node["betas"])
    try:
        build = instantiate(node, _convert_="all")
    except Exception as exc:  # an unknown class or module
        raise UserError(f"optim._target_={node['_target_']}: {str(exc).splitlines()[0]}") from None
    if isinstance(build.keywords.get("betas"), list):
        build.keywords["betas"] = tuple(build.keywords["betas"])
    if fused is not None and "fused" in inspect.signature(build.func).parameters:
        build.keywords["fused"] = (on_gpu if fused == "auto" else bool(fused)) or None
    return build(groups)
