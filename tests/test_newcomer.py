"""A new user's path (issue 22): `python -m sslseg list`, the data check, weights by name, a quiet console, no
folder left by a refused run and no lock file after a finished one. All fast: one short training subprocess."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sslseg.__main__ import main as sslseg_main
from sslseg.catalog import CONF_DIR
from sslseg.data.check import main as check_main
from tests.conftest import ROOT, run_cli


def test_list_names_every_method_recipe_dataset_backbone_and_decoder(capsys):
    assert sslseg_main(["list"]) == 0
    out = capsys.readouterr().out
    names = {line.split()[0].removeprefix("experiment=") for line in out.splitlines() if line.startswith("  ")}
    for group in ("method", "experiment", "recipe", "dataset", "backbone", "model"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            assert path.stem in names, f"{group}/{path.stem} not listed"
    for line in out.splitlines():
        if line.startswith("  "):
            assert len(line.split(maxsplit=1)) == 2, f"no description: {line!r}"


def _pascal_tree(root):
    """A two-image Pascal layout: b.jpg is listed but missing, a.png is an RGB picture instead of class ids."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "SegmentationClass" / "a.png")  # RGB: wrong
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(root / "SegmentationClass" / "b.png")
    splits = root / "lists"
    (splits / "1").mkdir(parents=True)
    pair = "JPEGImages/{0}.jpg SegmentationClass/{0}.png\n"
    (splits / "val.txt").write_text(pair.format("a") + pair.format("b"))
    (splits / "1" / "labeled.txt").write_text(pair.format("a"))
    (splits / "1" / "unlabeled.txt").write_text("JPEGImages/b.jpg\n")
    return splits


def test_data_check_names_each_problem_in_one_line(tmp_path, capsys):
    splits = _pascal_tree(tmp_path / "pascal")
    weights = tmp_path / "weights"
    weights.mkdir()
    code = check_main([str(tmp_path / "pascal"), "--splits", str(splits), "--weights", str(weights)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    missing = [line for line in lines if line.startswith("missing image:")]
    image = tmp_path / "pascal" / "JPEGImages" / "b.jpg"
    assert missing == [f"missing image: {image} (listed in {splits / 'val.txt'})",
                       f"missing image: {image} (listed in {splits / '1' / 'unlabeled.txt'})"]
    (wrong,) = [line for line in lines if line.startswith("wrong mask format:")]
    assert str(tmp_path / "pascal" / "SegmentationClass" / "a.png") in wrong and "mode RGB" in wrong
    (weight,) = [line for line in lines if line.startswith("missing weight file:")]
    assert weight.startswith(f"missing weight file: {weights / 'resnet101.pth'} (backbone=resnet101;")
    assert lines[-1] == "4 problem(s): 1 wrong mask format, 2 missing image, 1 missing weight file"


def test_data_check_malformed_weights_and_a_clean_tree(tmp_path, capsys):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nthing\n")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(np.ones((6, 6), np.uint8)).save(root / "masks" / "x.png")
    (root / "splits" / "1").mkdir(parents=True)
    (root / "splits" / "val.txt").write_text("images/x.png masks/x.png\n")
    (root / "splits" / "1" / "labeled.txt").write_text("images/x.png masks/x.png\n")
    (root / "splits" / "1" / "unlabeled.txt").write_text("images/x.png\n")
    assert check_main([str(root), "--backbones", "none"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems found"

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, weights / "resnet50.pth")
    assert check_main([str(root), "--weights", str(weights), "--backbones", "resnet50"]) == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("malformed weight file:")]
    assert f"{weights / 'resnet50.pth'}: missing keys for backbone" in line


def test_torchvision_weights_by_name_through_the_weights_api(monkeypatch):
    """backbone.pretrained=torchvision:<weights> asks torchvision's weights API (here a stand-in: tests never
    download) and loads the state dict with the strict check."""
    import torchvision

    from sslseg.errors import UserError
    from sslseg.models.pretrained import load_backbone_weights
    from sslseg.models.resnet import DeepStemResNet

    def backbone():
        return DeepStemResNet(layers=[1, 1, 1, 1], stem_width=16, base_width=16, output_stride=8, stem="torchvision")

    source = backbone()
    asked = []

    class Weights:
        url = "https://download.pytorch.org/models/stand-in.pth"

        def get_state_dict(self, progress=True, check_hash=False):
            return {"fc.weight": torch.zeros(2, 2)} | source.state_dict()

    def get_weight(name):
        asked.append(name)
        if name != "ResNet101_Weights.IMAGENET1K_V2":
            raise ValueError(name)
        return Weights()

    monkeypatch.setattr(torchvision.models, "get_weight", get_weight)
    target = backbone()
    load_backbone_weights(target, "torchvision:ResNet101_Weights.IMAGENET1K_V2")
    assert asked == ["ResNet101_Weights.IMAGENET1K_V2"]
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(UserError, match="torchvision has no weights named 'Nope'"):
        load_backbone_weights(backbone(), "torchvision:Nope")


BAR = re.compile(r"(\d+/\d+|\?)\s*\[|it/s\]|s/it\]")  # a tqdm line: "12/123 [00:01<...]"


@pytest.mark.slow  # a command-line run (make test-fast skips it)
def test_toy_run_prints_a_start_block_a_bar_and_a_result_block(data_dir, tmp_path):
    """Five steps with W&B as a user has it (offline: not logged in) and the progress bar on: at most 15 lines
    besides the bar, no warning, the reported network named, no .lock left, the start block first."""
    # conftest disables W&B for the suite; here it is as a user has it: no WANDB_* settings, no login.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.data_dir={data_dir}",
                          f"paths.output_dir={tmp_path / 'out'}", "trainer.max_steps=5", "data.num_workers=0",
                          "callbacks.progress_bar.refresh_rate=1", "trainer.val_check_interval=3",
                          "trainer.limit_val_batches=2"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Each line as the terminal finally shows it (a bar redraws its line with carriage returns).
    shown = [line.rsplit("\r", 1)[-1] for line in (run.stdout + run.stderr).split("\n")]
    lines = [line for line in shown if line.strip() and not BAR.search(line)]
    assert len(lines) <= 15, "\n".join(lines)
    assert not [line for line in lines if "warn" in line.lower()], "\n".join(lines)
    (results_path,) = (tmp_path / "out").rglob("results.json")
    results = json.loads(results_path.read_text())
    assert lines[0].startswith("no published recipe for daw on toy: sslseg's defaults")  # the recipe line first
    assert lines[1] == f"run: {results_path.parent}"
    assert "reports the better of student and teacher (EMA)" in lines[2]
    assert any(line.startswith("W&B offline (not logged in): sync later with `wandb sync") for line in lines)
    assert results["network"] in ("model", "teacher") and set(results["network_scores"]) == {"model", "teacher"}
    assert f"network: {results['network_label']}" in "\n".join(lines)
    assert lines[-1] == f"val mIoU: {results['best_val_mIoU']:.2f}"
    assert any("val mIoU=" in line for line in shown), "no mIoU on the bar"
    assert not (results_path.parent / ".lock").exists()


@pytest.mark.slow  # a command-line run (make test-fast skips it)
def test_a_refused_run_leaves_no_run_folder(tmp_path):
    run = run_cli("train.py", "dataset=pascal", f"paths.data_root={tmp_path / 'none'}",
                  f"paths.output_dir={tmp_path / 'out'}", "logger=csv")
    assert run.returncode == 2 and run.stderr.strip().startswith("error: dataset root not found")
    assert not [p for p in (tmp_path / "out").rglob("*")], "a refused run left files"


@pytest.mark.slow  # a command-line run (make test-fast skips it)
def test_a_refused_evaluation_leaves_no_run_folder(tmp_path):
    run = run_cli("eval.py", f"ckpt_path={tmp_path / 'none.ckpt'}", f"paths.output_dir={tmp_path / 'out'}")
    assert run.returncode == 2 and run.stderr.strip().startswith("error: checkpoint not found")
    assert not [p for p in (tmp_path / "out").rglob("*")], "a refused evaluation left files"


def test_custom_data_on_a_cpu_says_which_network_and_how_to_pick_a_small_one(monkeypatch):
    from omegaconf import OmegaConf

    from sslseg.run.fitting import cpu_note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"dataset": {"name": "custom", "crop_size": 321}, "backbone": {"name": "resnet101"},
                            "trainer": {"accelerator": "auto"}})
    note = cpu_note(cfg)
    assert "\n" not in note and "backbone=resnet101" in note and "backbone=tiny model=deeplabv3plus_tiny" in note
    assert cpu_note(OmegaConf.merge(cfg, {"backbone": {"name": "tiny"}})) is None
    assert cpu_note(OmegaConf.merge(cfg, {"dataset": {"name": "pascal"}})) is None


def test_remove_refused_run_dir_keeps_what_is_not_its_own(tmp_path, monkeypatch):
    from sslseg.run import config_checks

    out = tmp_path / "out"
    run_dir = out / "daw" / "toy_16" / "now"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "train.log").write_text("error: ...\n")
    monkeypatch.setattr(config_checks, "FRESH_RUN_DIR", None)  # it existed before the run: a resumed one
    assert not config_checks.remove_refused_run_dir(run_dir, out) and run_dir.is_dir()
    monkeypatch.setattr(config_checks, "FRESH_RUN_DIR", run_dir.absolute())
    (run_dir / "checkpoints").mkdir()  # a fit wrote something: keep it
    assert not config_checks.remove_refused_run_dir(run_dir, out) and run_dir.is_dir()
    (run_dir / "checkpoints").rmdir()
    assert config_checks.remove_refused_run_dir(run_dir, out)
    assert out.is_dir() and not list(out.iterdir())  # the empty parents up to paths.output_dir go too


def test_help_is_a_page_not_a_config_dump():
    run = run_cli("train.py", "--help")
    assert run.returncode == 0 and len(run.stdout.splitlines()) <= 40
    assert "python -m sslseg list" in run.stdout and "method: " in run.stdout


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not linked from the README"
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md"):
        assert (ROOT / name).is_file()


def test_the_projects_notes_point_only_inside_the_repository():
    """Docstrings, configs and docs cite papers and public releases, never the team's internal notes (a section sign
    or the plural of "spec" is how such a citation reads). Tests may read ../shared: they skip without it."""
    internal = re.compile(r"\bspec" + r"s\b|§")  # split so that this test does not match itself
    for folder in ("sslseg", "conf", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".yaml", ".md", ".txt"}:
                assert not internal.search(path.read_text()), path
    for name in ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", "train.py", "eval.py"):
        assert not internal.search((ROOT / name).read_text()), name
