"""Recipes: the published run of a (method, dataset) pair, chosen by `method=` and `dataset=` alone.

conf/train.yaml's defaults list picks `conf/recipe/<method>_<dataset>.yaml` (`variant=<name>`:
`<method>_<dataset>_<name>.yaml`, a variant the paper also ran) through the `sslseg.recipe` resolver; a pair
without a recipe gets its dataset's defaults, `conf/recipe/default_<dataset>.yaml` when there is one, on top of
conf/train.yaml's (with `variant=<name>`: `default_<dataset>_<name>.yaml`, e.g. the toy run on the tiny ViT).
A config loaded through an interpolated defaults entry may not override config groups (Hydra), so the networks
and the optimizer that a recipe needs are named in its `choose:` block and picked by the `sslseg.recipe_group`
resolver in the same defaults list. See docs/recipes.md.

Light imports only: the resolvers run while Hydra composes, before torch is imported.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sslseg.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parents[2] / "conf" / "recipe"
PUBLISHED = "published"  # the variant choice that means the recipe itself


def recipe_name(method: str, dataset: str, variant: str = PUBLISHED) -> str:
    """The recipe file a (method, dataset, variant) choice names: `<method>_<dataset>[_<variant>]`, or, for a
    pair without one, the dataset's defaults `default_<dataset>[_<variant>]` (loaded when it exists: the defaults
    list entry is optional; check_variant rejects a variant that names neither)."""
    suffix = "" if variant == PUBLISHED else f"_{variant}"
    own = f"{method}_{dataset}{suffix}"
    return own if (RECIPE_DIR / f"{own}.yaml").is_file() else f"default_{dataset}{suffix}"


@functools.cache
def _file(name: str) -> DictConfig | None:
    path = RECIPE_DIR / f"{name}.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def group_choice(group: str, fallback: str, method: str, dataset: str, variant: str = PUBLISHED) -> str:
    """The `group` (backbone, model, optim) named in the `choose:` block of the pair's recipe (or of the recipe a
    variant builds on), else `fallback` (conf/train.yaml's)."""
    name = recipe_name(str(method), str(dataset), str(variant))
    seen = set()
    while name and name not in seen:
        seen.add(name)
        cfg = _file(name)
        if cfg is None:
            break
        choice = OmegaConf.select(cfg, f"choose.{group}")
        if choice is not None:
            return str(choice)
        bases = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        name = bases[0] if bases else None
    return fallback


def register_resolvers() -> None:
    """`sslseg.recipe` and `sslseg.recipe_group`, used by conf/train.yaml's defaults list; `sslseg.patch_multiple`,
    the dataset configs' default crop fitted to a ViT backbone's patch size."""
    from sslseg.models.backbones import crop_for_backbone

    if not OmegaConf.has_resolver("sslseg.patch_multiple"):
        OmegaConf.register_new_resolver("sslseg.patch_multiple", crop_for_backbone)
    if not OmegaConf.has_resolver("sslseg.recipe"):
        OmegaConf.register_new_resolver("sslseg.recipe", lambda m, d, v=PUBLISHED: recipe_name(str(m), str(d), str(v)))
    if not OmegaConf.has_resolver("sslseg.recipe_group"):
        OmegaConf.register_new_resolver("sslseg.recipe_group", group_choice)


def variants_of(method: str, dataset: str) -> list[str]:
    """The variants of the pair's recipe, and those its dataset's defaults give every method (toy: vit)."""
    names = set()
    for prefix in (f"{method}_{dataset}_", f"default_{dataset}_"):
        names.update(p.stem[len(prefix):] for p in RECIPE_DIR.glob(f"{prefix}*.yaml"))
    return sorted(names)


def check_variant(choices: dict) -> None:
    """`variant=<name>` names an existing variant of the pair's recipe (one UserError otherwise: the optional
    defaults entry would silently load nothing)."""
    variant = str(choices.get("variant") or PUBLISHED)
    method, dataset = choices.get("method"), choices.get("dataset")
    if variant == PUBLISHED or method is None or dataset is None:
        return
    if not (RECIPE_DIR / f"{recipe_name(method, dataset, variant)}.yaml").is_file():
        known = variants_of(method, dataset)
        options = f"its variants: {', '.join(known)}" if known else "it has no variants"
        base = f"{method}_{dataset}" if (RECIPE_DIR / f"{method}_{dataset}.yaml").is_file() else None
        what = f"recipe {base}" if base else f"{method} on {dataset} (no recipe)"
        raise UserError(f"variant={variant}: no such variant of {what}; {options}")


# --- what a run says about its recipe ---------------------------------------------------------------------------

def _precision(value) -> str:
    return {"32-true": "fp32", "32": "fp32", "16-mixed": "fp16 mixed (GradScaler)", "bf16-mixed": "bf16 mixed",
            "auto": "auto (bf16 mixed on GPU)"}.get(str(value), str(value))


def _schedule(cfg: DictConfig) -> str:
    stages = cfg.method.get("stages")
    if stages:
        parts = []
        for name, stage in stages.items():
            if stage.kind == "train":
                parts.append(f"{name} {stage.steps} steps" if stage.get("steps") else f"{name} {stage.epochs} epochs")
        return " + ".join(parts)
    return f"{cfg.dataset.epochs} epochs"


def _optimizer(cfg: DictConfig) -> str:
    optim = cfg.optim
    name = str(optim.get("_target_", "torch.optim.SGD")).rsplit(".", 1)[-1]
    lrs = [optim.lr]
    if cfg.method.get("stages"):  # a stage may set its own lr (Learning-Pseudo-Label's stage 2)
        lrs = [stage_config(cfg, s, 0).optim.lr for s in cfg.method.stages.values() if s.kind == "train"]
    text = f"{name} lr " + " / ".join(dict.fromkeys(f"{lr:g}" for lr in lrs))
    mults = optim.get("lr_mult") or {}
    extra = [f"{key} x{float(value):g}" for key, value in mults.items() if float(value) != 1.0]
    text += (" " + " ".join(extra)) if extra else ""
    if optim.get("momentum") is not None:
        text += f" momentum {optim.momentum:g}"
    if optim.get("betas") is not None:
        text += f" betas {tuple(optim.betas)}"
    return text + f" wd {optim.weight_decay:g}"


def _batch(cfg: DictConfig) -> str:
    stages = cfg.method.get("stages")
    if stages:
        datas = [stage_config(cfg, stage, 0).data for stage in stages.values() if stage.kind == "train"]
        if all(data.global_batch_size for data in datas):
            return "global batch " + " / ".join(str(data.global_batch_size) for data in datas)
        return "batch " + " / ".join(str(data.global_batch_size or f"{data.batch_size}/device") for data in datas)
    data = cfg.data
    return f"global batch {data.global_batch_size}" if data.global_batch_size else f"batch {data.batch_size}/device"


def _cadence(val) -> str:
    every, after = int(val.get("every_n_epochs", 1) or 0), int(val.get("after_epoch", 0) or 0)
    if every == 0:
        return "the final weights only"
    when = "every epoch" if every == 1 else f"every {every} epochs"
    return when + (f" after epoch {after}" if after else "")


def _validation(cfg: DictConfig) -> str:
    stages = cfg.method.get("stages")
    if stages:
        cadences = [_cadence(stage_config(cfg, stage, 0).get("validation") or {})
                    for stage in stages.values() if stage.kind == "train"]
        if len(set(cadences)) > 1:
            return "validates " + " / ".join(cadences)
        return "validates " + cadences[0]
    return "validates " + _cadence(cfg.get("validation") or {})


def summary(cfg: DictConfig) -> str:
    """The key values of the composed run, in one phrase."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    decoder = OmegaConf.select(cfg, "method.network.decoder") or cfg.model.name  # DDFP: U2PL's decoder
    return (f"{cfg.backbone.name} + {decoder}, crop {cfg.dataset.crop_size}, {_batch(cfg)}, {_optimizer(cfg)}, "
            f"{_schedule(cfg)}, {_precision(cfg.trainer.precision)}, {_validation(cfg)}")


def default_file(dataset: str, method: str, variant: str = PUBLISHED) -> str:
    """The file a pair without a published recipe takes its run from: the method's own unpublished run on the
    dataset (unimatch_v2_toy.yaml: the tiny ViT), the dataset's defaults (`variant=vit`: default_toy_vit.yaml),
    or conf/train.yaml."""
    name = recipe_name(method, dataset, variant)
    return f"conf/recipe/{name}.yaml" if (RECIPE_DIR / f"{name}.yaml").is_file() else "conf/train.yaml"


def _variant_choice() -> str:
    """The run's `variant=` choice (Hydra's runtime choices; the recipe itself when Hydra is not running)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return PUBLISHED
    return str(HydraConfig.get().runtime.choices.get("variant") or PUBLISHED)


def start_line(cfg: DictConfig) -> str:
    """The line a run prints first: its recipe and source, or that the pair has none, with the key values."""
    recipe = cfg.get("recipe")
    values = summary(cfg)
    if recipe:
        reported = recipe.get("reported")
        return f"recipe {recipe.name} ({recipe.paper}; {recipe.source}): {values}; reported: {reported}"
    return (f"no published recipe for {cfg.method.name} on {cfg.dataset.name}: sslseg's defaults "
            f"({default_file(str(cfg.dataset.name), str(cfg.method.name), _variant_choice())}): {values}")


def results_entry(cfg: DictConfig) -> dict | None:
    """results.json's `recipe`: the recipe's name, source and what its paper reports, or None."""
    recipe = cfg.get("recipe")
    if not recipe:
        return None
    return {"name": str(recipe.name), "paper": str(recipe.paper), "source": str(recipe.source),
            "reported": str(recipe.reported), "summary": summary(cfg)}


def stage_config(cfg: DictConfig, stage: DictConfig, epochs_before: int) -> DictConfig:
    """The run's config for one train stage: `method.overrides` (every stage), the stage's own
    `overrides` (nested config keys), its epochs and the schedule offset."""
    out = OmegaConf.merge(cfg, cfg.method.get("overrides") or {}, stage.get("overrides") or {})
    if stage.get("steps"):  # a budget in iterations (Learning-Pseudo-Label's): epochs run until it is spent
        OmegaConf.update(out, "dataset.epochs", -1)
        OmegaConf.update(out, "trainer.max_steps", int(stage.steps))
    else:
        OmegaConf.update(out, "dataset.epochs", int(stage.epochs))
    OmegaConf.update(out, "optim.schedule_offset_epochs", epochs_before, force_add=True)
    return out
