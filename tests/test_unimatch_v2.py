"""UniMatch V2 (sslseg/methods/unimatch_v2.py) against hand-computed values and the release's unimatch_v2.py: the EMA
ramp, the loss, AdamW's parameter groups, the flipped partners, complementary dropout on the strong pass only, and
a few real training steps on the toy set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslseg.methods import method_class
from sslseg.methods.weak_to_strong import PseudoTargets, StudentLogits, Targets
from sslseg.models.perturbations import ComplementaryChannelDropout
from sslseg.perf.bench import synthetic_batch
from tests.conftest import compose_cfg


def _module(*overrides: str):
    cfg = compose_cfg(["method=unimatch_v2", *overrides])
    return method_class(cfg)(cfg), cfg


def test_the_toy_default_is_the_tiny_vit_and_the_release_constants():
    module, cfg = _module()
    assert (cfg.backbone.name, cfg.model.features, cfg.dataset.crop_size) == ("vit_tiny", 32, 64)
    m = cfg.method
    assert (m.conf_thresh, m.mix_source, m.kept_pairs, m.evaluate, dict(m.loss_weights)) == (
        0.95, "flip", 0.5, "both", {"x": 1.0, "s": 1.0})
    assert (m.teacher.schedule, m.teacher.decay, m.teacher.train_mode_epochs) == ("ramp", 0.996, 0)
    assert module.labeller == "teacher" and module.data_streams(m) == ("labeled", "unlabeled")
    assert module.evaluated_networks() == ("model", "teacher")
    assert module.encoder_passes({}) == 3  # the teacher on the weak view, the labeled pass, the strong pass


def test_ema_ramp_decays_and_cap():
    """unimatch_v2.py: ema_ratio = min(1 - 1/(iters + 1), 0.996) after step `iters` (0-based)."""
    module, _ = _module()
    decays = [module.teacher.decay_at(step, 0) for step in (0, 1, 2, 3, 249, 250, 10_000)]
    assert decays == pytest.approx([0.0, 0.5, 2 / 3, 0.75, 0.996, 0.996, 0.996])


def test_ema_update_blends_parameters_and_buffers():
    """T ← d·T + (1 − d)·S over the parameters and the float buffers (the release blends model.buffers() too); the
    first update copies the student."""
    from sslseg.methods.teacher import Teacher

    student = nn.BatchNorm1d(2)
    teacher = Teacher(student, decay=0.996, schedule="ramp")
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.running_mean.fill_(6.0)
    teacher.update(student, 0, 0)  # step 0: d = 0, a copy
    assert teacher.network.weight.tolist() == [3.0, 3.0] and teacher.network.running_mean.tolist() == [6.0, 6.0]
    with torch.no_grad():
        student.weight.fill_(0.0)
        student.running_mean.fill_(0.0)
    teacher.update(student, 2, 0)  # step 2: d = 2/3 -> 2/3 · 3 + 1/3 · 0 = 2; 2/3 · 6 = 4
    assert teacher.network.weight.tolist() == pytest.approx([2.0, 2.0])
    assert teacher.network.running_mean.tolist() == pytest.approx([4.0, 4.0])
    teacher.update(student, 999, 0)  # capped: d = 0.996 -> 0.996 · 2
    assert teacher.network.weight.tolist() == pytest.approx([1.992, 1.992])


def test_loss_on_hand_computed_tensors():
    """Two images of 1 x 2 pixels, two classes. Strong logits (0, 0) everywhere in view 1 (CE ln 2 per pixel) and
    (0, ln 3) in view 2 (CE ln 4 for label 0, ln 4/3 for label 1). Teacher: labels [[0, 1], [1, 1]], confidences
    [[0.96, 0.5], [0.99, 0.97]]; image 1's right pixel is padding. Partners are the batch reversed. Box 1 is empty;
    box 2 covers the right pixel of both images."""
    module, _ = _module()
    label = torch.tensor([[[0, 1]], [[1, 1]]])
    conf = torch.tensor([[[0.96, 0.5]], [[0.99, 0.97]]])
    ignore = torch.tensor([[[0, 0]], [[0, 255]]])
    weak = Targets(label, conf, ignore)
    partner = Targets(label.flip(0), conf.flip(0), ignore.flip(0))
    boxes = (torch.zeros(2, 1, 2), torch.tensor([[[0, 1]], [[0, 1]]]))
    strong1 = torch.zeros(2, 2, 1, 2)
    strong2 = torch.stack([torch.zeros(2, 1, 2), torch.full((2, 1, 2), math.log(3))], 1)
    logits = StudentLogits(torch.zeros(2, 2, 1, 2), None, (), (strong1, strong2))
    loss_x = torch.tensor(0.7)
    loss, terms = module.unsupervised_loss(loss_x, logits, PseudoTargets(weak, partner, boxes))
    # View 1 = the weak targets: non-padded pixels 3; kept (conf ≥ 0.95): (0,0) and (1,0) -> 2 ln 2 / 3.
    l_s1 = 2 * math.log(2) / 3
    # View 2: the right pixels are the partner's: image 0 gets image 1's (label 1, 0.97, padding: not counted),
    # image 1 gets image 0's (label 1, 0.5, counted, not kept). Non-padded: (0,0), (1,0), (1,1) = 3; kept: (0,0)
    # label 0 -> ln 4, (1,0) label 1 -> ln 4/3.
    l_s2 = (math.log(4) + math.log(4 / 3)) / 3
    assert float(terms["loss_s1"]) == pytest.approx(l_s1) and float(terms["loss_s2"]) == pytest.approx(l_s2)
    assert float(loss) == pytest.approx((0.7 + (l_s1 + l_s2) / 2) / 2)
    assert float(terms["mask_ratio"]) == pytest.approx(2 / 3)  # weak view: 0.96 and 0.99 of 3 non-padded pixels
    module.cfg.method.loss_weights.s = 2.0  # the paper's Fig. 6 weight on the unlabeled loss
    loss, _ = module.unsupervised_loss(loss_x, logits, PseudoTargets(weak, partner, boxes))
    assert float(loss) == pytest.approx((0.7 + 2 * (l_s1 + l_s2) / 2) / 2)


def test_adamw_groups_head_x40_and_weight_decay_on_every_trained_parameter():
    """unimatch_v2.py: AdamW([backbone params with requires_grad at lr, every non-backbone param at lr x lr_multi],
    betas (0.9, 0.999), weight_decay 0.01): norms, biases, LayerScale and embeddings decay too."""
    from types import SimpleNamespace

    module, cfg = _module("dataset=pascal", "variant=small", "backbone.pretrained=null")
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, num_training_batches=10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == 5e-6 and head["lr"] == pytest.approx(2e-4)
    assert backbone["weight_decay"] == head["weight_decay"] == 0.01
    net = module.model
    trained_backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    assert {id(p) for p in backbone["params"]} == {id(p) for p in trained_backbone}
    assert {id(p) for p in head["params"]} == {id(p) for p in net.decoder.parameters()}
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for group in optimizer.param_groups for p in group["params"]}
    assert {"backbone.norm.weight", "backbone.blocks.0.ls1.gamma", "backbone.cls_token", "backbone.pos_embed",
            "decoder.classifier.bias"} <= decayed
    assert "backbone.mask_token" not in decayed  # frozen: the release's AdamW never updates it (no gradient)


def test_complementary_dropout_acts_on_the_strong_pass_only():
    module, cfg = _module()
    batch = synthetic_batch(module.data_streams(cfg.method), 2, 32, 6, torch.device("cpu"))
    calls = []
    original = type(module.model).forward

    def spy(net, x, perturbed_copies=(), batch_perturbation=None):
        calls.append((net is module.model, x.shape[0], type(batch_perturbation).__name__, len(perturbed_copies)))
        return original(net, x, perturbed_copies, batch_perturbation)

    type(module.model).forward = spy
    try:
        module.train()
        module.training_step(batch, 0)
    finally:
        type(module.model).forward = original
    # The student on the labeled images (clean) and on [s1 ‖ s2] (complementary dropout), the teacher on the weak
    # view (clean).
    assert calls == [(True, 2, "NoneType", 0), (True, 4, "ComplementaryChannelDropout", 0), (False, 2, "NoneType", 0)]


def test_the_strong_pass_is_the_plain_pass_when_every_pair_is_kept():
    """kept_pairs=1: no channel dropped, so the strong logits are the student's plain logits; at 0.5 they differ."""
    module, cfg = _module("method.kept_pairs=1.0")
    module.eval()
    batch = synthetic_batch(module.data_streams(cfg.method), 2, 32, 6, torch.device("cpu"))
    x, u = batch["labeled"]["image"], batch["unlabeled"]
    strong = (u["strong1"], u["strong2"])
    with torch.no_grad():
        logits = module.student_logits(x, u["weak"], strong)
        plain = module.model(module.normalize(torch.cat(strong))).logits.chunk(2)
        assert logits.weak is None and logits.perturbed == ()
        torch.testing.assert_close(logits.labeled, module.model(module.normalize(x)).logits)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(logits.strong, plain))
        module.cfg.method.kept_pairs = 0.5
        torch.manual_seed(0)
        dropped = module.student_logits(x, u["weak"], strong).strong
        assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(dropped, plain))
    assert ComplementaryChannelDropout(0.5).masks(4, 3).sum(0).tolist() == [4.0, 4.0, 4.0]  # pairs sum to 2


def test_five_training_steps_on_the_toy_set(data_dir):
    """`python train.py method=unimatch_v2 dataset=toy trainer.max_steps=5`, in this process: finite losses, the
    teacher updated after every step and no longer the student's copy."""
    from tests.fingerprint_steps import Losses, fit_steps

    losses = Losses()
    module, trainer = fit_steps("unimatch_v2", data_dir, 5, callbacks=(losses,))
    assert len(losses.losses) == 5 and all(math.isfinite(v) for v in losses.losses)
    assert module.train_steps == 5 and trainer.global_step == 5
    student, teacher = module.model.state_dict(), module.teacher.network.state_dict()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
