"""`python -m sslseg list`: what the config tree offers, one line each, with where it comes from.

Read from conf/ itself (the groups' files and their header comments), so that a new method, recipe, dataset,
backbone or decoder file shows up without touching this module; the lines below only add the sources (paper,
release, official download page) of the ones sslseg ships. A backbone's line is its registry entry's (the backbone
its config names: sslseg/models/backbones.py, which imports no torch). Light imports only: no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from sslseg.models.backbones import BACKBONES

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Where each shipped method comes from: the paper and the release whose code it was checked against.
METHOD_SOURCES = {
    "supervised": "labeled images only, the papers' supervised baseline (SupBaseline)",
    "fixmatch": "FixMatch (Sohn et al., NeurIPS 2020) for segmentation, as re-implemented in "
                "github.com/LiheYoung/UniMatch",
    "unimatch": "UniMatch (Yang et al., CVPR 2023), github.com/LiheYoung/UniMatch",
    "daw": "DAW (Sun et al., NeurIPS 2023), github.com/yuisuen/DAW",
    "dssn": "DSSN (Tian et al., ACM MM 2023), github.com/kunzhan/DSSN",
    "ddfp": "DDFP (Wang et al., CVPR 2024), github.com/Gavinwxy/DDFP",
    "dars": "DARS (He et al., ICCV 2021), offline in stages, github.com/CVMI-Lab/DARS",
    "pct": "PCT, Learning Pseudo Labels (Wang et al., Pattern Recognition 2022), semi-and-weakly supervised "
           "(image tags), github.com/YudeWang/Learning-Pseudo-Label",
}

DATASET_SOURCES = {
    "pascal": "Pascal VOC 2012 + SBD (10,582 train_aug, 1,449 val), 21 classes: "
              "host.robots.ox.ac.uk/pascal/VOC/voc2012 and SBD's benchmark.tgz (docs/data.md)",
    "cityscapes": "Cityscapes fine (2,975 train, 500 val), 19 classes: www.cityscapes-dataset.com (account needed)",
    "coco": "COCO 2017, 81 classes (UniMatch's masks): cocodataset.org",
    "toy": "procedural shapes, 6 classes, generated into data/toy on first use (sslseg/data/toy.py)",
    "custom": "your folder: images/, masks/, classes.txt (python -m sslseg.data.make_splits custom <folder>)",
}

# The papers' decoders, by config file.
MODEL_SOURCES = {
    "deeplabv3plus": "DeepLabV3+ as in UniMatch (ASPP 6/12/18, low-level 48 channels)",
    "deeplabv3plus_tiny": "DeepLabV3+ sized for backbone=tiny",
    "deeplabv3plus_lpl": "DeepLabV3+ as in Learning-Pseudo-Label (PCT)",
    "u2pl_deeplabv3plus": "U2PL's DeepLabV3+ as DDFP uses it (auxiliary BN for the perturbed view)",
    "u2pl_deeplabv3plus_tiny": "U2PL's DeepLabV3+ sized for backbone=tiny",
    "pspnet": "PSPNet as in DARS (semseg)",
    "pspnet_tiny": "PSPNet sized for backbone=tiny",
    "deeplabv2": "DeepLabV2 classifier as in DARS (AdvSemiSeg)",
}

def header(path: Path) -> str:
    """The first sentence of a config file's leading comment (without Hydra's `# @package` line)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines).strip()
    match = re.match(r"(.+?[^.](?:\.(?=\s+[A-Z])|:(?=\s)))", text)  # not inside "92 ... 1464" or "Tab. 1"
    return (match.group(1) if match else text).rstrip(":.")


def backbone_line(path: Path) -> str:
    """The registry's line for the backbone a config file names (`name:`), else the file's header."""
    named = re.search(r"^name:\s*([\w.-]+)", path.read_text(), re.MULTILINE)
    entry = BACKBONES.get(named.group(1)) if named else None
    return entry.describe() if entry else header(path)


def group(name: str, conf_dir: Path = CONF_DIR) -> list[str]:
    folder = conf_dir / name
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def recipes(conf_dir: Path = CONF_DIR) -> list[tuple[str, str, str]]:
    """(option, name, description) of every recipe: conf/recipe/*.yaml, selected by method= and dataset=, and
    the published settings in conf/experiment/*.yaml, selected by experiment=."""
    found = []
    for folder, option in (("recipe", "recipe"), ("experiment", "experiment")):
        for stem in group(folder, conf_dir):
            found.append((option, stem, header(conf_dir / folder / f"{stem}.yaml")))
    return found


def sections(conf_dir: Path = CONF_DIR) -> list[tuple[str, list[tuple[str, str]]]]:
    def described(folder: str, sources: dict[str, str]) -> list[tuple[str, str]]:
        return [(stem, sources.get(stem) or header(conf_dir / folder / f"{stem}.yaml"))
                for stem in group(folder, conf_dir)]

    recipe_rows = [(f"{option}={stem}" if option == "experiment" else stem, text)
                   for option, stem, text in recipes(conf_dir)]
    return [
        ("methods (method=<name>)", described("method", METHOD_SOURCES)),
        ("recipes: the published runs (docs/recipes.md)", recipe_rows),
        ("datasets (dataset=<name>)", described("dataset", DATASET_SOURCES)),
        ("backbones (backbone=<name>)", [(stem, backbone_line(conf_dir / "backbone" / f"{stem}.yaml"))
                                         for stem in group("backbone", conf_dir)]),
        ("models: decoders (model=<name>)", described("model", MODEL_SOURCES)),
    ]


def format_catalog(conf_dir: Path = CONF_DIR) -> str:
    out = []
    for title, rows in sections(conf_dir):
        out.append(title)
        width = max((len(name) for name, _ in rows), default=0)
        out += [f"  {name:<{width}}  {text}".rstrip() for name, text in rows]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
