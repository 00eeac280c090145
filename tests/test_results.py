import json

from sslseg.results import collect, main, summary_table


def _run(root, method, seed, miou, split="16", wall=120.0):
    run_dir = root / method / f"toy_{split}" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    results = {"method": method, "dataset": "toy", "split": split, "seed": seed, "best_val_mIoU": miou,
               "wall_seconds": wall}
    (run_dir / "results.json").write_text(json.dumps(results))


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
    assert lines[0] == ("| dataset | split | method | seed 0 | seed 1 | seed 2 | mean ± sd | vs supervised "
                        "| wall time / run |")
    # supervised: mean 61, sd sqrt(((−1)² + 3² + (−2)²)/2) = sqrt(7) = 2.65; listed first.
    assert lines[2] == "| toy | 16 | supervised | 60.00 | 64.00 | 59.00 | 61.00 ± 2.65 |  | 2.0 min |"
    # unimatch: mean 67, sd sqrt(2) = 1.41, 67 − 61 = +6.00, (600 + 660)/2 s = 10.5 min.
    assert lines[3] == "| toy | 16 | unimatch | 66.00 | 68.00 | – | 67.00 ± 1.41 | +6.00 | 10.5 min |"
    # Matched seeds: supervised over 0 and 1 only is 62, so +5.00.
    matched = summary_table(runs, seeds=[0, 1]).splitlines()
    assert matched[2].startswith("| toy | 16 | supervised | 60.00 | 64.00 | 62.00 ± 2.83 |")
    assert matched[3] == "| toy | 16 | unimatch | 66.00 | 68.00 | 67.00 ± 1.41 | +5.00 | 10.5 min |"


def test_results_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: results folder not found: {tmp_path / 'missing'}"
    assert main([str(tmp_path)]) == 2
    assert "no training results.json found" in capsys.readouterr().err


def test_staged_runs_count_once_and_tagged_methods_are_marked(tmp_path):
    _run(tmp_path, "supervised", 0, 60.0)
    run_dir = tmp_path / "pct" / "toy_16" / "seed0"
    (run_dir / "stage1").mkdir(parents=True)
    stage = {"method": "pct", "dataset": "toy", "split": "16", "seed": 0, "best_val_mIoU": 80.0, "stage": "stage1",
             "uses_image_tags": True}
    (run_dir / "stage1" / "results.json").write_text(json.dumps(stage))  # a stage of the run, not a run
    final = stage | {"best_val_mIoU": 70.0, "stage": "stage2", "stages": {}, "wall_seconds": 300.0}
    (run_dir / "results.json").write_text(json.dumps(final))
    runs = collect(tmp_path)
    assert sorted(r["best_val_mIoU"] for r in runs) == [60.0, 70.0]
    lines = summary_table(runs).splitlines()
    assert lines[3] == "| toy | 16 | pct (image tags) | 70.00 | 70.00 | +10.00 | 5.0 min |"


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
