"""The GPU check's CPU dry run fills every section, and its report arithmetic holds on known values."""

import json

import pytest

from sslseg.perf import gpu_check


@pytest.mark.slow
def test_dry_run_fills_every_section(tmp_path):
    """`make gpu-check DRY=1` (`python -m sslseg.perf.gpu_check --dry`): every section runs and reports, at tiny
    sizes. Its main() runs in this process; each section runs in a process of its own, as on the command line."""
    # Limits x3: what is checked here is that every section fills, not its time on a busy machine.
    gpu_check.main(["--dry", "--limit-scale", "3", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section["status"])
        assert section["rows"], name
    steps = report["sections"]["steps"]["rows"]
    measured = {(r["case"], r["precision"]) for r in steps if "step_ms" in r}
    for case, *_ in gpu_check.STEP_CASES:  # every method's step, in fp32 and in bf16 + channels_last
        assert {(case, "fp32"), (case, "bf16+cl")} <= measured, case
    assert all(r["gflop_per_step"] > 0 for r in steps if "step_ms" in r)
    assert "step_ms" in report["sections"]["compile"]["rows"][0]
    curves = report["sections"]["curves"]
    assert len(curves["curves"]["fp32"]) == len(curves["curves"]["bf16"]) == gpu_check.Sizes(dry=True).curve_steps
    md = (tmp_path / "gpu.md").read_text()
    for heading in ("## 1. CUDA tests", "## 2. Training steps", "## 2b. Compiled", "## 2c.", "## 3. Data pipeline",
                    "## 4. Inference", "## 5. fp32 against bf16"):
        assert heading in md


def test_peak_table_matches_device_names():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.4
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0  # before the SXM part's plain "H100"
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores: no share column


def _report(steps: list[dict], profile: list[dict] | None = None) -> dict:
    env = {"date": "d", "device": "NVIDIA H200", "torch": "t", "python": "p", "cpu_count": 16,
           "dense_bf16_peak_tflops": 989.4}
    section = lambda rows: {"rows": rows, "notes": [], "status": "ok", "seconds": 1.0, "limit_seconds": 2.0}
    sections = {"steps": section(steps)} | ({"profile": section(profile)} if profile else {})
    return {"environment": env, "dry": False, "sections": sections, "command": "c", "total_seconds": 3.0}


def _row(precision: str, ms: float) -> dict:
    return {"case": "unimatch", "precision": precision, "step_ms": ms, "pairs_per_s": 8e3 / ms, "gflop_per_step": 100.0,
            "tflops": 100.0 / ms, "share_of_bf16_peak": None, "peak_mem_gib": 1.0, "host_syncs": 0, "batch": 8,
            "crop": 321, "backbone": "resnet101", "decoder": "deeplabv3plus", "sync_sites": {}}


def test_report_speedups_and_gpu_busy_by_hand():
    md = gpu_check.markdown(_report([_row("fp32", 150.0), _row("bf16+cl", 100.0)],
                                    [{"case": "unimatch", "precision": "bf16+cl", "kernel_ms": 40.0}]))
    assert "unimatch bf16+cl 1.50x" in md  # 150 / 100
    assert "| unimatch | bf16+cl | 40.0 | 100.0 | 40% |" in md  # kernel 40 ms of a 100 ms step


def test_a_skipped_row_says_why():
    md = gpu_check.markdown(_report([{"case": "daw", "precision": "fp32", "batch": 8, "crop": 513,
                                      "backbone": "resnet101", "decoder": "deeplabv3plus",
                                      "skipped": "the section's time limit"}]))
    assert "| daw | resnet101 deeplabv3plus, 513, 8 | fp32 | skipped: the section's time limit |" in md
