"""The stage runner: order, hand-over between rounds, the continued schedule, skipping and resuming."""

import json

import pytest

import sslseg.run.fitting
import sslseg.run.stages
from sslseg.errors import UserError
from sslseg.run.stages import run_stages
from tests.conftest import compose_cfg


def _recorder(monkeypatch):
    calls = []

    def fake_fit(cfg, cls, out_dir, ckpt_path=None, streams=None, pseudo_list=None, handover=None):
        calls.append(("fit", out_dir.name, {"ckpt_path": ckpt_path, "streams": streams, "pseudo_list": pseudo_list,
                                           "handover": handover, "offset": cfg.optim.schedule_offset_epochs,
                                           "epochs": cfg.dataset.epochs, "scales": list(cfg.dataset.scale_range),
                                           "rotate": cfg.data.geometric_aug.rotate}))
        return {"best_val_mIoU": 50.0 + len(calls), "final_val_mIoU": 40.0, "steps": 10 * len(calls)}

    def fake_generate(cfg, out_dir, weights, stage):
        calls.append(("generate", out_dir.name, {"weights": weights, "ratio": stage.labeling_ratio}))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "stats.json").write_text(json.dumps({"summary": {"labeled_share": stage.labeling_ratio}}))
        (out_dir / "pseudo.txt").write_text("")

    monkeypatch.setattr(sslseg.run.fitting, "fit", fake_fit)
    monkeypatch.setattr(sslseg.run.stages, "generate", fake_generate)
    # The stand-in writes no pseudo-labels to check (tests/test_dars_end_to_end.py damages real ones).
    monkeypatch.setattr(sslseg.run.stages, "damaged_pseudo_labels", lambda *args: [])
    return calls


def test_stages_run_in_order_and_hand_over(monkeypatch, tmp_path):
    calls = _recorder(monkeypatch)
    cfg = compose_cfg(["method=dars"])
    results = run_stages(cfg, tmp_path)
    assert [(kind, name) for kind, name, _ in calls] == [("fit", "round0"), ("generate", "pseudo1"), ("fit", "round1"),
                                                         ("generate", "pseudo2"), ("fit", "round2")]
    round0, gen1, round1, gen2, round2 = (c[2] for c in calls)
    assert round0["streams"] == ("labeled",) and round0["handover"] is None and round0["pseudo_list"] is None
    assert gen1["weights"] == tmp_path / "round0" / "checkpoints" / "last.ckpt" and gen1["ratio"] == 0.4
    assert round1["streams"] == ("labeled", "pseudo") and round1["pseudo_list"] == tmp_path / "pseudo1" / "pseudo.txt"
    assert round1["handover"] == tmp_path / "round0" / "checkpoints" / "last.ckpt"
    assert round2["pseudo_list"] == tmp_path / "pseudo2" / "pseudo.txt" and gen2["ratio"] == 0.5
    # Each round's own epochs, the schedule continued over the cumulative ones (4 + 4 + 4 in the toy default).
    assert [(r["epochs"], r["offset"]) for r in (round0, round1, round2)] == [(4, 0), (4, 4), (4, 8)]
    assert [r["scales"] for r in (round0, round1, round2)] == [[0.5, 1.5], [0.5, 1.5], [0.5, 2.0]]
    assert {r["rotate"] for r in (round0, round1, round2)} == {10}  # method.overrides reach every stage
    assert results["best_val_mIoU"] == 55.0 and list(results["stages"]) == ["round0", "pseudo1", "round1", "pseudo2",
                                                                             "round2"]
    assert json.loads((tmp_path / "round1" / "results.json").read_text())["stage"] == "round1"


def test_a_finished_stage_is_skipped_and_an_interrupted_one_resumes(monkeypatch, tmp_path):
    calls = _recorder(monkeypatch)
    cfg = compose_cfg(["method=dars"])
    run_stages(cfg, tmp_path)
    # Pretend round1 never finished but left a checkpoint, and round2 never started.
    (tmp_path / "round1" / "results.json").unlink()
    (tmp_path / "round2" / "results.json").unlink()
    (tmp_path / "round1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "round1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    calls.clear()
    run_stages(cfg, tmp_path)
    assert [(kind, name) for kind, name, _ in calls] == [("fit", "round1"), ("fit", "round2")]
    resumed = calls[0][2]
    assert resumed["ckpt_path"] == str(tmp_path / "round1" / "checkpoints" / "last.ckpt")
    assert resumed["handover"] is None
    assert calls[1][2]["handover"] == tmp_path / "round1" / "checkpoints" / "last.ckpt"


def test_bad_stage_lists_are_one_line_errors(monkeypatch, tmp_path):
    _recorder(monkeypatch)
    with pytest.raises(UserError, match="method.stages.oops.kind must be one of"):
        run_stages(compose_cfg(["method=dars", "+method.stages.oops={kind: nope}"]), tmp_path)
    with pytest.raises(UserError, match="a generate stage needs a train stage before it"):
        run_stages(compose_cfg(["method=dars", "~method.stages.round0"]), tmp_path / "b")
    with pytest.raises(UserError, match="pseudo1.thresholds must be one of"):
        run_stages(compose_cfg(["method=dars", "method.stages.pseudo1.thresholds=dras"]), tmp_path / "c")
    with pytest.raises(UserError, match="pseudo2 needs a labeling_ratio"):
        run_stages(compose_cfg(["method=dars", "~method.stages.pseudo2.labeling_ratio"]), tmp_path / "d")
    with pytest.raises(UserError, match="round1 continues a stage budgeted in steps"):
        run_stages(compose_cfg(["method=dars", "+method.stages.round0.steps=100"]), tmp_path / "e")
    assert not any((tmp_path / d).exists() for d in "cde")  # checked before anything ran
