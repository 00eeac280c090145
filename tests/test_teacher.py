"""The teacher: decay schedules, buffers, copy warm-up, train/eval mode, and its update inside a module."""

import pytest
import torch
from torch import nn

from sslseg.methods.teacher import Teacher
from tests.conftest import compose_cfg


def _student() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))


def _set(student: nn.Sequential, weight: float, running_mean: float, batches: int) -> None:
    with torch.no_grad():
        student[0].weight.fill_(weight)
        student[1].running_mean.fill_(running_mean)
        student[1].num_batches_tracked.fill_(batches)


def test_ramp_schedule_one_update_at_a_time():
    student = _student()
    teacher = Teacher(student, decay=0.999, schedule="ramp")
    _set(student, 2.0, 4.0, 1)
    teacher.update(student, step=0, epoch=0)  # d = 0: a copy
    assert float(teacher.network[0].weight) == 2.0 and float(teacher.network[1].running_mean) == 4.0
    _set(student, 4.0, 0.0, 2)
    teacher.update(student, step=1, epoch=0)  # d = 1 - 1/2 = 0.5
    assert float(teacher.network[0].weight) == 3.0 and float(teacher.network[1].running_mean) == 2.0
    assert int(teacher.network[1].num_batches_tracked) == 2  # integer buffers follow the student
    teacher.update(student, step=10_000, epoch=0)  # d capped at 0.999
    assert float(teacher.network[0].weight) == pytest.approx(0.999 * 3.0 + 0.001 * 4.0)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_constant_schedule_copies_on_the_first_step_only():
    student = _student()
    teacher = Teacher(student, decay=0.996, schedule="constant")
    _set(student, 10.0, 1.0, 1)
    teacher.update(student, step=0, epoch=0)  # DSSN: keep_rate 0 at the very first step
    assert float(teacher.network[0].weight) == 10.0
    _set(student, 20.0, 3.0, 2)
    teacher.update(student, step=1, epoch=0)  # T = 0.996·10 + 0.004·20 = 10.04; BN mean 0.996·1 + 0.004·3
    assert float(teacher.network[0].weight) == pytest.approx(10.04)
    assert float(teacher.network[1].running_mean) == pytest.approx(1.008)


def test_copy_warm_up_epochs():
    student = _student()
    teacher = Teacher(student, decay=0.996, schedule="constant", copy_epochs=5)  # DSSN on Cityscapes
    assert teacher.copying(step=700, epoch=4) and not teacher.copying(step=700, epoch=5)
    _set(student, 7.0, 0.0, 1)
    teacher.update(student, step=700, epoch=4)
    assert float(teacher.network[0].weight) == 7.0
    _set(student, 9.0, 0.0, 1)
    teacher.update(student, step=701, epoch=5)
    assert float(teacher.network[0].weight) == pytest.approx(0.996 * 7.0 + 0.004 * 9.0)


def test_shared_schedule_follows_the_students_parameters_but_keeps_its_own_buffers():
    student = _student()
    teacher = Teacher(student, decay=0.999, schedule="shared", copy_epochs=2)  # DDFP as released
    _set(student, 3.0, 5.0, 1)
    teacher.update(student, step=0, epoch=0)  # copy epochs: everything
    assert float(teacher.network[0].weight) == 3.0 and float(teacher.network[1].running_mean) == 5.0
    _set(student, 7.0, 9.0, 2)
    teacher.update(student, step=500, epoch=2)  # after them: the parameters, not the BN buffers
    assert float(teacher.network[0].weight) == 7.0 and float(teacher.network[1].running_mean) == 5.0


@pytest.mark.parametrize("train_mode_epochs,epoch,expected", [
    (0, 0, False),      # DAW: always eval
    (1, 0, True),       # DSSN as released: batch statistics during epoch 0 ...
    (1, 1, False),      # ... running statistics afterwards
    (None, 7, True),    # U2PL/DDFP: always train mode
])
def test_mode_follows_the_schedule_and_validation_is_in_eval_mode(train_mode_epochs, epoch, expected):
    teacher = Teacher(_student(), decay=0.99, train_mode_epochs=train_mode_epochs)
    teacher.set_epoch(epoch)
    assert teacher.network.training is expected
    teacher.eval()  # Lightning before validation
    assert teacher.network.training is False
    teacher.train()  # and after it
    assert teacher.network.training is expected


def test_train_mode_teacher_normalises_with_the_batch():
    student = _student()
    _set(student, 2.0, 0.0, 0)
    teacher = Teacher(student, decay=0.99, train_mode_epochs=None)
    teacher.set_epoch(0)
    x = torch.tensor([[1.0], [3.0]])
    out = teacher(x)  # 2x = (2, 6), normalised with the batch's mean 4 and std 2: (−1, 1)
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0]), atol=1e-3)
    assert float(teacher.network[1].running_mean) != 0.0 and not out.requires_grad


def test_the_module_updates_its_teacher_after_every_step_and_checkpoints_the_index():
    cfg = compose_cfg(["method=daw"])
    from sslseg.methods import method_class

    module = method_class(cfg)(cfg)
    weight = lambda net: net.decoder.classifier.bias.detach().clone()
    with torch.no_grad():
        module.model.decoder.classifier.bias.fill_(1.0)
    module.step_completed()  # step 0: a copy
    assert module.train_steps == 1 and torch.equal(weight(module.teacher.network), weight(module.model))
    with torch.no_grad():
        module.model.decoder.classifier.bias.fill_(3.0)
    module.step_completed()  # step 1: d = 0.5
    torch.testing.assert_close(weight(module.teacher.network), torch.full_like(weight(module.model), 2.0))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    restored = method_class(cfg)(cfg)
    restored.on_load_checkpoint(checkpoint)
    assert restored.train_steps == 2
