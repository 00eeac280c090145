"""DDFP: the density-descending perturbation, the batch CutMix, the phases, and resuming both optimizers."""

import copy
import random

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from sslseg.methods import method_class
from sslseg.methods.ddfp import half_box_cutmix
from sslseg.perf.bench import synthetic_batch
from sslseg.run.fitting import build_datamodule
from tests.conftest import compose_cfg

K = 6


def _ddfp(*overrides):
    cfg = compose_cfg(["method=ddfp", *overrides])
    torch.manual_seed(0)
    return method_class(cfg)(cfg)


def _features(module, seed=0):
    torch.manual_seed(seed)
    fused = torch.randn(2, module.model.decoder.fused_channels, 12, 12)
    label = torch.full((2, 48, 48), 255)  # labels at 4x the feature size, as in training
    return fused, label


def _mean_log_density(module, fused, label, seed=1):
    torch.manual_seed(seed)  # the same dropout masks for both evaluations
    with torch.no_grad(), module.model.decoder.bn_mode("adv"):
        _, features = module.model.decoder.classify(fused)
    valid = F.interpolate(label[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0] != 255
    return module.log_density(features.permute(0, 2, 3, 1)[valid]).mean()


def test_network_is_u2pls_decoder_with_the_datasets_sizes():
    module = _ddfp()
    assert type(module.model.decoder).__name__ == "U2PLDeepLabV3Plus"
    assert module.cfg.model.name == "u2pl_deeplabv3plus" and list(module.cfg.model.aspp_dilations) == [2, 4, 6]
    assert module.model.backbone.maxpool.ceil_mode
    assert module.density.prior.means.shape == (K, module.model.decoder.feature_channels)


def test_perturbation_has_norm_eps_everywhere_with_train_mode_bn_and_lowers_the_density():
    module = _ddfp()
    module.train()
    fused, label = _features(module)
    label[0, 8:24, 8:24] = 1  # confident pixels in one corner of the first image
    delta = module.density_descent(fused, label)
    norms = delta.norm(dim=1)
    # Batch statistics couple every pixel to the confident ones: the gradient is non-zero everywhere.
    assert torch.allclose(norms, torch.full_like(norms, module.cfg.method.eps), atol=1e-4)
    before = _mean_log_density(module, fused, label)
    after = _mean_log_density(module, fused + delta, label)
    assert after < before  # density-descending


def test_perturbation_with_eval_mode_bn_stays_in_the_receptive_field_of_confident_pixels():
    module = _ddfp()
    module.eval()  # running statistics, no dropout: pixels are coupled only through the two 3x3 convs
    fused, label = _features(module)
    label[1, 20:24, 28:32] = 3  # one feature pixel: (5, 7) of image 1 at stride 4
    delta = module.density_descent(fused, label)
    touched = delta.norm(dim=1) > 0
    expected = torch.zeros_like(touched)
    expected[1, 3:8, 5:10] = True  # the 5x5 neighbourhood two 3x3 convs see
    assert torch.equal(touched, expected)
    assert torch.allclose(delta.norm(dim=1)[touched], torch.tensor(module.cfg.method.eps), atol=1e-4)


def test_half_box_cutmix_takes_half_of_the_next_image():
    images = torch.arange(3).view(3, 1, 1, 1).expand(3, 3, 32, 40).clone()
    labels = torch.arange(3).view(3, 1, 1).expand(3, 32, 40).clone()
    ignore = torch.zeros(3, 32, 40, dtype=torch.long)
    ignore[1] = 255
    mixed, mixed_labels, mixed_ignore = half_box_cutmix(images, labels, ignore, random.Random(0))
    for i in range(3):
        inside = mixed[i, 0] == (i + 1) % 3
        assert abs(inside.float().mean() - 0.5) < 0.05  # a box of half the image ...
        assert torch.equal(mixed_labels[i] == (i + 1) % 3, inside)  # ... with its labels and padding
        padded = {0: inside, 1: ~inside, 2: torch.zeros_like(inside)}[i]  # image 1 is all padding
        assert torch.equal(mixed_ignore[i] == 255, padded)
        rows, cols = inside.nonzero(as_tuple=True)
        assert inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle


@pytest.mark.parametrize("epoch,terms", [(0, {"x"}), (1, {"x", "u", "flow"}), (2, {"x", "u", "pt", "flow"})])
def test_phases(epoch, terms, monkeypatch):
    module = _ddfp()
    batch = synthetic_batch(module.data_streams(module.cfg.method), 2, 32, K, torch.device("cpu"))
    logged = {}
    monkeypatch.setattr(type(module), "current_epoch", property(lambda self: epoch))
    monkeypatch.setattr(module, "optimizers", lambda: ("seg", "flow"))
    monkeypatch.setattr(module, "manual_step", lambda loss, *optimizers, clip_norm: logged.update(
        stepped=loss, optimizers=optimizers))
    monkeypatch.setattr(module, "log_dict", lambda d: logged.update(d))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.train()
    module.training_step(batch, 0)
    assert {k.removeprefix("train/loss_") for k in logged if k.startswith("train/loss_")} == terms
    # The flow trains from epoch 1: its NLL joins the backward, its Adam steps.
    flow_nll = float(logged.get("train/loss_flow", 0.0))
    assert float(logged["stepped"]) == pytest.approx(float(logged["train/loss"]) + flow_nll)
    assert logged["optimizers"] == (("seg", "flow") if epoch >= 1 else ("seg",))


def test_resume_restores_the_flow_and_both_optimizers(data_dir, tmp_path):
    overrides = [f"paths.data_dir={data_dir}", "data.num_workers=0", "trainer.limit_val_batches=1",
                 "+trainer.limit_train_batches=2", "logger=none", "trainer.enable_progress_bar=false"]

    def fit(max_epochs, ckpt_path=None, callbacks=()):
        cfg = compose_cfg(["method=ddfp", f"trainer.max_epochs={max_epochs}", *overrides])
        module = method_class(cfg)(cfg)
        datamodule = build_datamodule(cfg, module.data_streams(cfg.method), split=cfg.split)
        from sslseg.run.fitting import trainer_kwargs

        kwargs = trainer_kwargs(cfg) | {"logger": False, "enable_checkpointing": False}
        trainer = pl.Trainer(**kwargs, callbacks=list(callbacks), default_root_dir=str(tmp_path))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer, module

    trainer, _ = fit(2)  # epoch 1 trains the flow: Adam has state
    path = tmp_path / "epoch2.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert len(saved["optimizer_states"]) == 2 and saved["optimizer_states"][1]["state"]

    seen = {}

    class Check(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["density"] = {k: v.clone() for k, v in module.density.state_dict().items()}
            seen["adam"] = copy.deepcopy(trainer.optimizers[1].state_dict())  # training steps update it in place
            seen["steps"] = module.train_steps

    fit(3, ckpt_path=str(path), callbacks=[Check()])
    for key, value in seen["density"].items():
        assert torch.equal(value, saved["state_dict"][f"density.{key}"]), key
    for index, state in saved["optimizer_states"][1]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(seen["adam"]["state"][index][name]), torch.as_tensor(state[name]))
    assert seen["steps"] == saved["train_steps"] == 4  # training steps, not optimizer steps


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_every_phase_runs_from_the_command_line(data_dir, tmp_path, devices):
    """Two steps in each of the three phases, on one process and as 2-process CPU DDP."""
    import json

    from tests.conftest import run_cli, run_cli_subprocess

    ddp = ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"] if devices > 1 else []
    run_train = run_cli_subprocess if devices > 1 else run_cli  # DDP: Lightning starts rank 1 from the command line
    run = run_train("train.py", "method=ddfp", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
                    "logger=csv", "trainer.log_every_n_steps=1", "data.num_workers=0",
                    "trainer.enable_progress_bar=false", "+trainer.limit_train_batches=2", "trainer.max_epochs=3",
                    "trainer.limit_val_batches=1", *ddp)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert results["steps"] == 6 and results["devices"] == devices  # training steps, not optimizer steps
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()[0]
    assert all(f"train/loss_{term}" in metrics for term in ("x", "u", "pt", "flow"))
