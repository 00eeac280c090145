"""Method-level checks on random data: forward passes per step, losses, gradients."""


import pytest
import torch

from sslseg.methods import method_class
from sslseg.perf.bench import synthetic_batch
from tests.conftest import compose_cfg

B, CROP, K = 2, 32, 6


def _module(method: str, *overrides: str):
    cfg = compose_cfg([f"method={method}", *overrides])
    module = method_class(cfg)(cfg)
    return module, synthetic_batch(module.data_streams(cfg.method), B, CROP, K, torch.device("cpu"))


def _count_passes(module, batch) -> tuple[dict[str, tuple[int, int]], torch.Tensor]:
    """({network: (forward passes, decoder calls)}, loss) of one training step, per network."""
    calls, hooks = {}, []
    for name, net in module.networks().items():
        segmentor = net.network if name == "teacher" else net
        calls[name] = [0, 0]
        for i, part in enumerate((segmentor, segmentor.decoder)):
            hooks.append(part.register_forward_hook(lambda *_, n=name, i=i: calls[n].__setitem__(i, calls[n][i] + 1)))
    module.train()
    loss = module.training_step(batch, 0)
    for hook in hooks:
        hook.remove()
    return {name: tuple(c) for name, c in calls.items()}, loss


@pytest.mark.parametrize("method,overrides,passes", [
    ("supervised", [], {"model": 1}),
    ("fixmatch", [], {"model": 3}),  # partner (eval, no grad), [labeled ‖ weak], strong
    ("fixmatch", ["method.mix_source=batch"], {"model": 2}),
    ("unimatch", [], {"model": 3}),  # partner, [labeled ‖ weak] + FP in one decoder batch, [strong1 ‖ strong2]
    ("unimatch", ["method.mix_source=batch"], {"model": 2}),
    ("daw", [], {"model": 3, "teacher": 0}),  # the teacher is only evaluated
    # DSSN student: [labeled ‖ weak] + 2 FP copies, [s1 ‖ s2]; teacher: the partners, then the weak view
    ("dssn", [], {"model": 2, "teacher": 2}),
    ("dssn", ["method.mix_source=batch"], {"model": 2, "teacher": 1}),
])
def test_forward_passes_per_step(method, overrides, passes):
    module, batch = _module(method, *overrides)
    calls, loss = _count_passes(module, batch)
    # Feature-perturbed copies share the decoder batch: one decoder call per pass.
    assert calls == {name: (n, n) for name, n in passes.items()}
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.model.parameters()]
    assert all(g is not None for g in grads), "every parameter takes part (DDP without find_unused_parameters)"


@pytest.mark.parametrize("method,copies", [("unimatch", 1), ("daw", 1), ("dssn", 2)])
def test_the_method_owns_the_feature_dropout_rate(method, copies):
    """`method.feature_dropout` is the rate of the perturbed copies' channel dropout: at 0 each copy decodes the
    clean features (eval mode, so that BN does not see the duplicated batch), at 0.5 it does not."""
    module, batch = _module(method, "method.feature_dropout=0.0")
    module.eval()
    x, weak, strong = batch["labeled"]["image"], batch["unlabeled"]["weak"], (batch["unlabeled"]["strong1"],)
    with torch.no_grad():
        logits = module.student_logits(x, weak, strong)
        assert len(logits.perturbed) == copies
        assert all(torch.allclose(fp, logits.weak, atol=1e-5) for fp in logits.perturbed)
        module.cfg.method.feature_dropout = 0.5
        logits = module.student_logits(x, weak, strong)
        assert not any(torch.allclose(fp, logits.weak, atol=1e-3) for fp in logits.perturbed)


@pytest.mark.parametrize("source,order", [("batch", [2, 0, 1]), ("flip", [2, 1, 0])])
def test_in_batch_partners_are_the_batch_rolled_or_flipped(source, order):
    """`method.mix_source=batch` mixes row i with row i - 1, `flip` (UniMatch V2) with row B - 1 - i: the strong
    views, the padding masks and the weak view's probabilities alike (a batch of 3 tells the two apart)."""
    cfg = compose_cfg(["method=fixmatch", f"method.mix_source={source}"])
    module = method_class(cfg)(cfg)
    batch = synthetic_batch(module.data_streams(cfg.method), 3, CROP, K, torch.device("cpu"))
    u = batch["unlabeled"]
    u["ignore"][0, :4] = 255  # row 0 padded: its padding must reach the row it partners
    partners = module.partners(batch)
    for view in ("strong1", "strong2", "ignore"):
        assert torch.equal(getattr(partners, view), u[view][order])
    assert partners.probs is None and module.data_streams(cfg.method) == ("labeled", "unlabeled")
    seen = {}
    original = module.pseudo_targets
    module.pseudo_targets = lambda logits, y, probs_w, ignore, p: seen.update(probs=probs_w, partner=p.probs) or \
        original(logits, y, probs_w, ignore, p)
    module.train()
    module.training_step(batch, 0)
    assert torch.equal(seen["partner"], seen["probs"][order])


def test_partner_pass_runs_in_eval_mode_and_restores_train_mode():
    module, batch = _module("unimatch")
    modes = []
    module.model.backbone.bn1.register_forward_hook(lambda m, *_: modes.append(m.training))
    module.train()
    module.training_step(batch, 0)
    assert modes == [False, True, True] and module.model.training


def test_daw_updates_its_statistics_and_keeps_a_teacher():
    module, batch = _module("daw")
    module.train()
    module.training_step(batch, 0)
    assert float(module.jump.mu_pos) != pytest.approx(1 / K) or float(module.jump.mu_neg) != pytest.approx(1 / K)
    assert module.evaluated_networks() == ("model", "teacher") and set(module.val_confusion) == {"model", "teacher"}
    state = module.state_dict()
    assert "jump.tau" in state and "align.labeled" in state and any(k.startswith("teacher.network.") for k in state)


def test_validation_reports_the_better_of_online_and_ema():
    module, _ = _module("daw")
    module.eval()
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (2, 3, CROP, CROP), dtype=torch.uint8, generator=gen),
             "mask": torch.randint(0, K, (2, CROP, CROP), generator=gen)}
    with torch.no_grad():
        module.teacher.network.decoder.classifier.bias.add_(torch.arange(K) * 100.0)  # always the last class
    module.validation_step(batch, 0)
    from sslseg.predict.metrics import iou_from_confusion

    scores = {n: float(iou_from_confusion(c.compute())[1]) for n, c in module.val_confusion.items()}
    module.on_validation_epoch_end()
    assert module.last_val["network"] == max(scores, key=scores.get)
    assert module.inference_model() is module.network(module.last_val["network"])


def test_unimatch_threshold_comes_from_the_recipe():
    assert compose_cfg(["method=unimatch", "dataset=cityscapes"]).method.conf_thresh == 0.0
    assert compose_cfg(["method=unimatch", "dataset=pascal"]).method.conf_thresh == 0.95


# The recipes (the published settings, formerly the presets): tests/test_recipes.py.
