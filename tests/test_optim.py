from types import SimpleNamespace

import pytest
import torch

from sslseg.methods.supervised import Supervised
from tests.conftest import compose_cfg


def test_poly_schedule_and_head_multiplier():
    cfg = compose_cfg(["optim.lr=0.01", "optim.lr_mult.head=10"])
    module = Supervised(cfg)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    conf = module.configure_optimizers()
    optimizer, schedule = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    backbone, head = optimizer.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in module.model.backbone.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad]  # not the teacher's
    assert len(backbone["params"]) + len(head["params"]) == len(trainable)
    assert backbone["weight_decay"] == 1e-4 and backbone["momentum"] == 0.9
    lrs = []
    for _ in range(100):
        lrs.append((backbone["lr"], head["lr"]))
        optimizer.step()
        schedule.step()
    # The references (UniMatch, DSSN, DAW) set lr·(1 - i/T)^0.9 after the optimizer step of iteration i,
    # so iteration k ≥ 1 runs at lr·(1 - (k-1)/T)^0.9 and iterations 0 and 1 both at the base lr.
    reference = [0.01] + [0.01 * (1 - i / 100) ** 0.9 for i in range(99)]
    for k in (0, 1, 2, 50, 99):
        assert lrs[k] == pytest.approx((reference[k], 10 * reference[k])), k
    assert lrs[1] == pytest.approx((0.01, 0.1)) and lrs[2] == pytest.approx((0.01 * 0.99**0.9, 0.1 * 0.99**0.9))
    assert lrs[99][0] == pytest.approx(0.01 * 0.02**0.9)  # the last iteration: (1 - 98/100)^0.9


def test_normalize_matches_imagenet_statistics():
    module = Supervised(compose_cfg([]))
    image = torch.tensor([[[[0]], [[128]], [[255]]]], dtype=torch.uint8)
    expected = torch.tensor([(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(module.normalize(image).flatten(), expected)


def test_poly_schedule_without_lag_and_continued_from_earlier_rounds():
    # DARS (semseg): iteration k uses (1 - k/T)^0.9; a round that starts after 50 of 100 epochs of 4 steps
    # continues the schedule: its first step runs at (1 - 200/400)^0.9.
    cfg = compose_cfg(["method=supervised", "optim.lr=0.01", "+method.poly_lag=0", "+optim.schedule_offset_epochs=50"])
    module = Supervised(cfg)
    module._trainer = SimpleNamespace(estimated_stepping_batches=200, num_training_batches=4)
    factor = module.poly_factor()
    assert factor(0) == pytest.approx(0.5**0.9)
    assert factor(1) == pytest.approx((1 - 201 / 400) ** 0.9)
    assert factor(200) == 0.0
    module.cfg.optim.schedule_offset_epochs = 0
    assert module.poly_factor()(0) == 1.0 and module.poly_factor()(1) == pytest.approx((1 - 1 / 200) ** 0.9)
