"""The teacher: an averaged copy of the student network (DAW's EMA model, DSSN's and DDFP's mean teacher).

After each training step i (0-based) of the student S, T ← d·T + (1 − d)·S over the parameters and the
floating-point buffers (BN running statistics); integer buffers (`num_batches_tracked`) follow S.
The decay d (`method.teacher`):

  schedule: ramp      d = min(1 − 1/(i + 1), decay)    DAW (0.999), DDFP (0.999)
  schedule: constant  d = decay                        DSSN (0.996)
  schedule: shared    the parameters are the student's, the BN buffers the teacher's own: DDFP as
                      released (U2PL's `t.data = s.data` makes them share storage)

and d = 0, a copy of S, while the teacher is *copying*: at step 0 (DSSN's teacher starts from its own
random head, so its first update is a copy; the ramp gives 0 there anyway) and during the first
`copy_epochs` epochs (DSSN on Cityscapes: 5).

`train_mode_epochs`: the teacher runs in train mode (BN normalises with the batch statistics and
updates its running ones; dropout is active) during the first N training epochs, in eval mode after:
0 = always eval (DAW), 1 = DSSN as released (its evaluation at the end of epoch 0 leaves the teacher
in eval mode for good), null = always train (U2PL's teacher, which DDFP uses). Validation always runs
it in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sslseg.errors import UserError

SCHEDULES = ("ramp", "constant", "shared")


class Teacher(nn.Module):
    def __init__(self, student: nn.Module, decay: float, schedule: str = "constant", copy_epochs: int = 0,
                 train_mode_epochs: int | None = 0):
        super().__init__()
        if schedule not in SCHEDULES:
            raise UserError(f"method.teacher.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        self.decay, self.schedule = float(decay), schedule
        self.copy_epochs, self.train_mode_epochs = int(copy_epochs), train_mode_epochs
        self.network = copy.deepcopy(student)
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.epoch = 0
        self.train(False)

    def copying(self, step: int, epoch: int) -> bool:
        """True while the teacher is a copy of the student rather than an average."""
        return step == 0 or epoch < self.copy_epochs

    def decay_at(self, step: int, epoch: int) -> float:
        if self.copying(step, epoch):
            return 0.0
        if self.schedule == "ramp":
            return min(1.0 - 1.0 / (step + 1), self.decay)
        return self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, epoch: int) -> None:
        """T ← d·T + (1 − d)·S after the student's training step `step` of epoch `epoch`."""
        weight = 1.0 - self.decay_at(step, epoch)
        student_state = student.state_dict()
        if self.schedule == "shared" and not self.copying(step, epoch):
            parameters = dict(self.network.named_parameters())
            torch._foreach_copy_(list(parameters.values()), [student_state[n].detach() for n in parameters])
            return
        averaged, current = [], []
        for name, value in self.network.state_dict(keep_vars=True).items():
            if value.dtype.is_floating_point:
                averaged.append(value)
                current.append(student_state[name].detach())
            else:  # num_batches_tracked: bookkeeping, not a weight
                value.copy_(student_state[name])
        torch._foreach_lerp_(averaged, current, weight)  # one fused kernel per device and dtype

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch: picks the mode the schedule asks for."""
        self.epoch = epoch
        self.train(True)

    def train(self, mode: bool = True):
        # Lightning calls module.train()/eval() around validation; in training the mode follows
        # train_mode_epochs, in validation the teacher is always in eval mode.
        self.training = mode
        in_train_mode = mode and (self.train_mode_epochs is None or self.epoch < self.train_mode_epochs)
        self.network.train(in_train_mode)
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)
