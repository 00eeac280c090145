import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from sslseg.report.plot import plot_lines
from sslseg.report.results import (
    CODE_DIR,
    VERSIONED,
    collect,
    group_runs,
    main,
    overrides_of,
    provenance,
    split_order,
    summary_table,
)

ROOT = Path(__file__).resolve().parents[1]


def _run(root, method, seed, miou, split="16", wall=120.0, steps=100, overrides=None, name=None, mtime=None,
         dataset="toy", final=None):
    run_dir = root / method / f"{dataset}_{split}" / (name or f"seed{seed}")
    run_dir.mkdir(parents=True)
    results = {"method": method, "dataset": dataset, "split": split, "seed": seed, "best_val_mIoU": miou,
               "wall_seconds": wall, "steps": steps}
    if final is not None:
        results["final_val_mIoU"] = final
    if overrides is not None:
        results["overrides"] = overrides
    path = run_dir / "results.json"
    path.write_text(json.dumps(results))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return run_dir


def test_summary_table_means_sds_and_differences(tmp_path):
    _run(tmp_path, "unimatch", 0, 66.0, wall=600)
    _run(tmp_path, "unimatch", 1, 68.0, wall=660)
    _run(tmp_path, "supervised", 0, 60.0)
    _run(tmp_path, "supervised", 1, 64.0)
    _run(tmp_path, "supervised", 2, 59.0)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"method": "daw", "val_mIoU": 1.0}))  # not a run
    runs = collect(tmp_path)
    assert len(runs) == 5
    lines = summary_table(runs).splitlines()
    assert lines[0] == ("| dataset | split | method | steps | seed 0 | seed 1 | seed 2 | mean ± sd | vs supervised "
                        "| wall time / run |")
    # supervised: mean 61, sd sqrt(((−1)² + 3² + (−2)²)/2) = sqrt(7) = 2.65; listed first.
    assert lines[2] == "| toy | 16 | supervised | 100 | 60.00 | 64.00 | 59.00 | 61.00 ± 2.65 |  | 2.0 min |"
    # unimatch: mean 67, sd sqrt(2) = 1.41, 67 − 61 = +6.00, (600 + 660)/2 s = 10.5 min.
    assert lines[3] == "| toy | 16 | unimatch | 100 | 66.00 | 68.00 | – | 67.00 ± 1.41 | +6.00 | 10.5 min |"
    # Matched seeds: supervised over 0 and 1 only is 62, so +5.00.
    matched = summary_table(runs, seeds=[0, 1]).splitlines()
    assert matched[2].startswith("| toy | 16 | supervised | 100 | 60.00 | 64.00 | 62.00 ± 2.83 |")
    assert matched[3] == "| toy | 16 | unimatch | 100 | 66.00 | 68.00 | 67.00 ± 1.41 | +5.00 | 10.5 min |"


def test_results_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: results folder not found: {tmp_path / 'missing'}"
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no training results.json found under {tmp_path}"
    _run(tmp_path, "supervised", 0, 60.0)
    assert main([str(tmp_path), "--seeds", "5"]) == 2
    assert capsys.readouterr().err.strip() == f"error: no training results.json found for seeds [5] under {tmp_path}"
    assert main([str(tmp_path), "--plot", str(tmp_path / "plot.jpg")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --plot: {tmp_path / 'plot.jpg'} must end in one of "
                                               ".png, .svg, .pdf")
    assert main([str(tmp_path), "--csv", str(tmp_path / "no" / "runs.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: --csv: folder not found: {tmp_path / 'no'}" and captured.out == ""


def test_a_malformed_results_file_is_one_line_naming_it(tmp_path, capsys):
    _run(tmp_path, "supervised", 0, 60.0)
    broken = tmp_path / "daw" / "results.json"
    broken.parent.mkdir()
    broken.write_text('{"method": "daw", "seed": 0,')  # cut off
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: malformed results file {broken}: Expecting")

    broken.write_text(json.dumps({"method": "daw", "dataset": "toy", "split": "16", "seed": "0", "best_val_mIoU": 1}))
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: malformed results file {broken}: `seed` must be an integer"
    broken.write_text("[1, 2]")
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: malformed results file {broken}: not a JSON object"


def test_staged_runs_count_once_and_tagged_methods_are_marked(tmp_path):
    _run(tmp_path, "supervised", 0, 60.0)
    run_dir = tmp_path / "pct" / "toy_16" / "seed0"
    (run_dir / "stage1").mkdir(parents=True)
    stage = {"method": "pct", "dataset": "toy", "split": "16", "seed": 0, "best_val_mIoU": 80.0, "stage": "stage1",
             "uses_image_tags": True, "steps": 50}
    (run_dir / "stage1" / "results.json").write_text(json.dumps(stage))  # a stage of the run, not a run
    final = stage | {"best_val_mIoU": 70.0, "stage": "stage2", "stages": {}, "wall_seconds": 300.0}
    (run_dir / "results.json").write_text(json.dumps(final))
    runs = collect(tmp_path)
    assert sorted(r["best_val_mIoU"] for r in runs) == [60.0, 70.0]
    lines = summary_table(runs).splitlines()
    # Different steps (50 vs 100) do not keep PCT from its comparison with the only supervised row.
    assert lines[3] == "| toy | 16 | pct (image tags) | 50 | 70.00 | 70.00 | +10.00 | 5.0 min |"


def test_overrides_of_keeps_only_keys_that_change_the_numbers():
    run = {"overrides": ["method=unimatch", "split='16'", "seed=1", "dataset=toy", "hydra.run.dir=/x",
                         "hydra/launcher=y", "paths.output_dir=/o", "logger=csv", "logger.wandb.project=p",
                         "callbacks.lr_monitor=false", "ckpt_path=last", "data.num_workers=0",
                         "trainer.enable_progress_bar=false", "optim.lr=0.01", "+model.extra='a b'",
                         "++trainer.max_steps=45", "~method.ema"]}
    assert overrides_of(run) == {"optim.lr": "0.01", "model.extra": "a b", "trainer.max_steps": "45",
                                 "method.ema": "(deleted)"}
    assert overrides_of({}) == {}  # results.json from before overrides were recorded


def test_runs_differing_in_an_override_are_separate_rows(tmp_path):
    common = ["method=supervised", "logger=csv"]
    _run(tmp_path, "supervised", 0, 60.0, overrides=[*common, "optim.lr=0.01", "paths.output_dir=/a", "seed=0"],
         name="a0")
    _run(tmp_path, "supervised", 1, 62.0, overrides=[*common, "optim.lr=0.01", "paths.output_dir=/b", "seed=1"],
         name="a1")
    _run(tmp_path, "supervised", 0, 50.0, overrides=[*common, "optim.lr=0.02", "seed=0"], name="b0")
    uni = ["method=unimatch", "method.conf_thresh=0.9"]  # the method's own knob: still compared with supervised
    _run(tmp_path, "unimatch", 0, 70.0, overrides=[*uni, "optim.lr=0.01"], name="u1")
    _run(tmp_path, "unimatch", 0, 55.0, overrides=[*uni, "optim.lr=0.02"], name="u2")
    _run(tmp_path, "unimatch", 0, 54.0, name="old")  # no `overrides` field: keyed as if it had none
    lines = summary_table(collect(tmp_path)).splitlines()
    assert lines[0] == ("| dataset | split | method | method.conf_thresh | optim.lr | steps | seed 0 | seed 1 "
                        "| mean ± sd | vs supervised | wall time / run |")
    assert lines[2:] == [
        "| toy | 16 | supervised | default | 0.01 | 100 | 60.00 | 62.00 | 61.00 ± 1.41 |  | 2.0 min |",
        "| toy | 16 | supervised | default | 0.02 | 100 | 50.00 | – | 50.00 |  | 2.0 min |",
        # vs the supervised row of the same lr: 70 − 61, 55 − 50; the run without overrides has no such row.
        "| toy | 16 | unimatch | 0.9 | 0.01 | 100 | 70.00 | – | 70.00 | +9.00 | 2.0 min |",
        "| toy | 16 | unimatch | 0.9 | 0.02 | 100 | 55.00 | – | 55.00 | +5.00 | 2.0 min |",
        "| toy | 16 | unimatch | default | default | 100 | 54.00 | – | 54.00 |  | 2.0 min |",
    ]


def test_runs_differing_in_steps_are_separate_rows(tmp_path):
    _run(tmp_path, "supervised", 0, 60.0, steps=45, name="full")
    _run(tmp_path, "supervised", 0, 20.0, steps=3, name="smoke", mtime=4e9)  # newer, but no duplicate of the full one
    _run(tmp_path, "supervised", 0, 10.0, steps=3, split="32")
    _run(tmp_path, "fixmatch", 0, 66.0, steps=45)
    _run(tmp_path, "fixmatch", 0, 21.0, steps=3, name="smoke")
    lines = summary_table(collect(tmp_path)).splitlines()
    assert lines[2:] == [
        "| toy | 16 | supervised | 3 | 20.00 | 20.00 |  | 2.0 min |",
        "| toy | 16 | supervised | 45 | 60.00 | 60.00 |  | 2.0 min |",
        "| toy | 16 | fixmatch | 3 | 21.00 | 21.00 | +1.00 | 2.0 min |",  # to the supervised run of the same steps
        "| toy | 16 | fixmatch | 45 | 66.00 | 66.00 | +6.00 | 2.0 min |",
        "| toy | 32 | supervised | 3 | 10.00 | 10.00 |  | 2.0 min |",
    ]


def test_duplicate_runs_are_reported_and_the_newer_kept(tmp_path, capsys):
    old = _run(tmp_path, "supervised", 0, 50.0, name="2026-01-01_seed0", mtime=1e9)
    new = _run(tmp_path, "supervised", 0, 60.0, name="2026-02-01_seed0", mtime=2e9, wall=240)
    _run(tmp_path, "supervised", 1, 64.0)
    _run(tmp_path, "fixmatch", 0, 70.0)
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == (f"warning: duplicate runs of toy split 16 supervised seed 0: {old} and {new}; the table keeps the "
                   f"newer, {new}\n")
    # The newer seed-0 run counts: mean (60 + 64)/2 = 62, sd sqrt(8) = 2.83, wall (240 + 120)/2 s = 3.0 min.
    assert out.splitlines()[0].endswith("| wall time / run | duplicates |")
    assert out.splitlines()[2] == "| toy | 16 | supervised | 100 | 60.00 | 64.00 | 62.00 ± 2.83 |  | 3.0 min | 1 |"
    assert out.splitlines()[3] == "| toy | 16 | fixmatch | 100 | 70.00 | – | 70.00 | +8.00 | 2.0 min |  |"


def test_csv_has_one_line_per_run_with_its_keys(tmp_path):
    old = _run(tmp_path, "supervised", 0, 50.0, name="old", mtime=1e9, overrides=["optim.lr=0.01"])
    new = _run(tmp_path, "supervised", 0, 60.5, name="new", mtime=2e9, overrides=["optim.lr=0.01"], final=58.25)
    other = _run(tmp_path, "supervised", 1, 40.0, overrides=["optim.lr=0.02"], wall=33.5, steps=7)
    out = tmp_path / "runs.csv"
    assert main([str(tmp_path), "--csv", str(out)]) == 0
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["dataset", "split", "method", "optim.lr", "steps", "seed", "best_val_mIoU", "final_val_mIoU", "wall_seconds",
         "superseded", "run_dir"],
        ["toy", "16", "supervised", "0.01", "100", "0", "50.0", "", "120.0", "true", str(old)],
        ["toy", "16", "supervised", "0.01", "100", "0", "60.5", "58.25", "120.0", "false", str(new)],
        ["toy", "16", "supervised", "0.02", "7", "1", "40.0", "", "33.5", "false", str(other)],
    ]
    assert not (tmp_path / ".runs.csv.tmp").exists()


@pytest.mark.parametrize("splits", [["16"], ["92", "183", "1464"], ["1_16", "1_8"]])
def test_plot_is_written(tmp_path, splits):
    for split in splits:
        for seed, miou in enumerate([60.0, 64.0]):
            _run(tmp_path, "supervised", seed, miou, split=split)
            _run(tmp_path, "unimatch", seed, miou + 5, split=split)
        _run(tmp_path, "unimatch", 0, 30.0, split=split, steps=3, name="smoke")
        _run(tmp_path, "supervised", 0, 61.0, split=split, dataset="pascal")
    out = tmp_path / "miou.png"
    assert main([str(tmp_path), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert not (tmp_path / ".miou.png.tmp").exists()


def test_plot_lines_are_split_by_steps_only_where_they_would_meet(tmp_path):
    for split in ("92", "183"):
        _run(tmp_path, "supervised", 0, 60.0, split=split, steps=100 if split == "92" else 200)  # one line
        _run(tmp_path, "unimatch", 0, 60.0, split=split)
        _run(tmp_path, "unimatch", 0, 30.0, split=split, steps=3, name="smoke")  # would meet the full run
    keys, rows = group_runs(collect(tmp_path))
    lines = plot_lines(rows, keys)
    assert [(label, sorted(by_split, key=split_order)) for label, by_split in lines] == [
        ("supervised", ["92", "183"]), ("unimatch, 3 steps", ["92", "183"]), ("unimatch, 100 steps", ["92", "183"])]


def test_split_order_counts_numerically_and_fractions_by_value():
    assert sorted(["1464", "183", "92", "full"], key=split_order) == ["92", "183", "1464", "full"]
    assert sorted(["1_2", "1_16", "1_8"], key=split_order) == ["1_16", "1_8", "1_2"]


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_provenance_of_this_code():
    found = provenance(["optim.lr=0.01", "seed=1"])
    assert found["overrides"] == ["optim.lr=0.01", "seed=1"]
    assert list(found["versions"]) == list(VERSIONED)
    assert found["versions"]["python"].count(".") == 2 and found["versions"]["torch"] is not None
    assert CODE_DIR == ROOT
    if (ROOT / ".git").exists():
        assert found["commit"] == _git(ROOT, "rev-parse", "HEAD")
        assert found["dirty"] == bool(_git(ROOT, "status", "--porcelain"))
    else:
        assert found["commit"] is None and found["dirty"] is None
    json.dumps(found)  # goes into results.json as it is


def test_provenance_commit_and_dirty_from_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance([], repo)["commit"] == head and provenance([], repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert provenance([], repo)["dirty"] is True
    # A package inside another repository's tree is not that repository's checkout; nor is a plain folder.
    assert (provenance([], repo / "sub")["commit"], provenance([], repo / "sub")["dirty"]) == (None, None)
    assert provenance([], tmp_path)["commit"] is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no git at all: None, no crash
    assert (provenance([], repo)["commit"], provenance([], repo)["dirty"]) == (None, None)


def test_debug_runs_do_not_replace_real_ones(tmp_path):
    """A debug run (conf/debug/) of the same method, split and seed sorts after the real one under outputs/ and
    would win its cell ("last one wins"); its results.json says `debug`, and collect leaves it out."""
    _run(tmp_path, "daw", 0, 75.0)
    debug_dir = tmp_path / "debug" / "daw" / "toy_16" / "seed0"
    debug_dir.mkdir(parents=True)
    debug = {"method": "daw", "dataset": "toy", "split": "16", "seed": 0, "best_val_mIoU": 10.0,
             "wall_seconds": 9.0, "debug": "fast_dev_run"}
    (debug_dir / "results.json").write_text(json.dumps(debug))
    assert [r["best_val_mIoU"] for r in collect(tmp_path)] == [75.0]


def _hydra_record(run_dir, **choices):
    (run_dir / ".hydra").mkdir()
    lines = "".join(f"      {group}: {name}\n" for group, name in choices.items())
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n" + lines)


def test_a_network_chosen_by_the_recipe_compares_with_the_same_network_named_on_the_command_line(tmp_path):
    """`method=unimatch_v2` gets vit_tiny + dpt_tiny + AdamW from its toy recipe, `method=supervised variant=vit` the
    same from the toy's ViT recipe: one network and optimizer, so that supervised row is its baseline. The
    supervised run that names the network on the command line but keeps the toy's SGD is another row, no baseline
    of V2's. A run whose results.json predates `network_choices` (or its `optim`) is read from Hydra's record."""
    vit_adamw = {"backbone": "vit_tiny", "model": "dpt_tiny", "optim": "adamw"}
    for seed, miou in ((0, 47.0), (1, 49.0)):
        run_dir = _run(tmp_path, "supervised", seed, miou - 2, overrides=["variant=vit"])
        _hydra_record(run_dir, **vit_adamw)
        run_dir = _run(tmp_path, "unimatch_v2", seed, miou, overrides=["variant=vit"])
        _hydra_record(run_dir, **vit_adamw)
        run_dir = _run(tmp_path, "supervised", seed, miou + 5, overrides=["backbone=vit_tiny", "model=dpt_tiny"],
                       name=f"sgd{seed}")
        _hydra_record(run_dir, backbone="vit_tiny", model="dpt_tiny", optim="sgd")
    old = json.loads((run_dir / "results.json").read_text())  # recorded backbone and model, not yet the optimizer
    (run_dir / "results.json").write_text(json.dumps(old | {"network_choices": {"backbone": "vit_tiny",
                                                                                 "model": "dpt_tiny"}}))
    _run(tmp_path, "supervised", 0, 60.0, overrides=[], name="other_network")  # no record: the defaults
    runs = collect(tmp_path)
    keys, rows = group_runs(runs)
    assert keys == ["backbone", "model", "optim", "variant"]
    assert [(r.method, r.keys) for r in rows] == [
        ("supervised", ("default", "default", "default", "default")),
        ("supervised", ("vit_tiny", "dpt_tiny", "adamw", "vit")),
        ("supervised", ("vit_tiny", "dpt_tiny", "sgd", "default")),
        ("unimatch_v2", ("vit_tiny", "dpt_tiny", "adamw", "vit"))]
    assert "| +2.00 |" in summary_table(runs).splitlines()[-1]
