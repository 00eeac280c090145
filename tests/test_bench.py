"""The benchmark runs and reports every figure it promises (speed itself is not asserted)."""

import json

import pytest

from sslseg.perf.bench import main

pytestmark = pytest.mark.slow


def test_bench_writes_json_and_markdown(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SSLSEG_ROOT", str(data_dir.parent))  # toy set under <root>/data/toy
    (data_dir.parent / "data").mkdir(exist_ok=True)
    if not (data_dir.parent / "data" / "toy").exists():
        (data_dir.parent / "data" / "toy").symlink_to(data_dir / "toy")
    result = main(["--methods", "supervised,daw", "--steps", "1", "--warmup", "0", "--workers", "1",
                   "--sliding-size", "96x160", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["methods"][0]["method"] == "supervised" and saved["methods"][0]["x_supervised"] == 1.0
    daw = saved["methods"][1]
    assert daw["gflop_per_step"] > 3 * saved["methods"][0]["gflop_per_step"]  # 3 passes, 2x batch, FP decoder
    assert saved["pipeline"]["unlabeled_samples_per_s"] > 0 and saved["inference"]["sliding_images_per_s"] > 0
    assert "| daw |" in (tmp_path / "bench.md").read_text()
    assert result["precision"] == "32-true"
