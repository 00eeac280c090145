"""The README's "Adding a method" example, run as written: its module and config are taken from the README's code
blocks (marked `<!-- example: path -->`), written into a folder as a user would, and trained on the toy set through
the Hydra search path the README's command names."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch

from sslseg.perf.bench import synthetic_batch
from tests.conftest import ROOT, compose_cfg
from tests.fingerprint_steps import fit_steps
from tests.test_method_contract import Contract

EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", re.S)


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The README's example files under tmp_path, importable; the Hydra override that finds its config."""
    files = dict(EXAMPLE.findall((ROOT / "README.md").read_text()))
    assert set(files) == {"mymethods/entropy_min.py", "mymethods/conf/method/entropy_min.yaml"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "mymethods" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"hydra.searchpath=[file://{tmp_path / 'mymethods' / 'conf'}]"
    sys.modules.pop("mymethods.entropy_min", None)
    sys.modules.pop("mymethods", None)


def test_the_example_trains_and_keeps_the_contract(example, data_dir):
    contract = Contract()
    module, _ = fit_steps("entropy_min", data_dir, 3, overrides=(example,), callbacks=(contract,))
    assert type(module).__name__ == "EntropyMinimization" and len(contract.losses) == 3
    assert all(math.isfinite(loss) for loss in contract.losses)
    assert all(counted == declared == 1 for counted, declared in contract.passes)
    assert {name for name, p in module.named_parameters() if p.requires_grad} == contract.with_gradient


def test_the_examples_entropy_by_hand(example):
    from sslseg.methods import method_class

    cfg = compose_cfg([example, "method=entropy_min", "method.weight=1.0", "dataset.num_classes=4"])
    module = method_class(cfg)(cfg)
    batch = synthetic_batch(module.data_streams(cfg.method), 2, 8, 4, torch.device("cpu"))
    batch["unlabeled"]["ignore"][:, :4] = 255  # half of each image is padding: not counted
    logged = {}
    module.log_dict = logged.update
    # Uniform predictions on the unlabeled images: every pixel's entropy is ln 4.
    module.model.forward = lambda x: type("Out", (), {"logits": torch.zeros(x.shape[0], 4, 8, 8)})()
    module.training_step(batch, 0)
    assert float(logged["train/loss_u"]) == pytest.approx(math.log(4))
    # Certain predictions (one class at +100): entropy 0.
    module.model.forward = lambda x: type("Out", (), {"logits": torch.eye(4)[:, 0].view(1, 4, 1, 1).expand(
        x.shape[0], 4, 8, 8) * 100})()
    module.training_step(batch, 0)
    assert float(logged["train/loss_u"]) == pytest.approx(0.0, abs=1e-6)
