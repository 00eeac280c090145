"""A checkpoint named on the command line is checked before training: one line for each way it can be wrong."""

import pytest
import torch
from omegaconf import OmegaConf

from sslseg.errors import UserError
from sslseg.run.checkpoint import resume_checkpoint


def run_cfg(ckpt_path, method="daw", classes=6, backbone="tiny", stages=None):
    method_cfg = {"name": method} | ({"stages": stages} if stages else {})
    return OmegaConf.create({"ckpt_path": ckpt_path, "method": method_cfg, "dataset": {"num_classes": classes},
                             "backbone": {"name": backbone}})


def save_checkpoint(path, **trained):
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.to_container(run_cfg(None, **trained))
    torch.save({"hyper_parameters": {"cfg": cfg}, "state_dict": {"w": torch.zeros(1000)}}, path)
    return path


def error_of(cfg, run_dir):
    with pytest.raises(UserError) as caught:
        resume_checkpoint(cfg, run_dir)
    return str(caught.value)


def test_no_checkpoint_named_trains_from_scratch(tmp_path):
    assert resume_checkpoint(run_cfg(None), tmp_path) is None


def test_last_is_the_run_directorys_last_checkpoint(tmp_path):
    last = save_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(run_cfg("last"), tmp_path) == str(last)
    other = save_checkpoint(tmp_path / "elsewhere.ckpt")
    assert resume_checkpoint(run_cfg(str(other)), tmp_path / "new_run") == str(other)


def test_last_without_a_checkpoint_is_an_error_not_a_fresh_run(tmp_path):
    assert error_of(run_cfg("last"), tmp_path) == (
        f"ckpt_path=last: no checkpoint at {tmp_path / 'checkpoints' / 'last.ckpt'} "
        "(resume with hydra.run.dir=<the interrupted run's directory>)")


def test_missing_empty_random_and_truncated_files(tmp_path):
    assert error_of(run_cfg(str(tmp_path / "none.ckpt")), tmp_path) == f"checkpoint not found: {tmp_path / 'none.ckpt'}"
    good = save_checkpoint(tmp_path / "good.ckpt")
    damaged = {"empty.ckpt": b"", "random.ckpt": bytes(range(256)) * 8, "truncated.ckpt": good.read_bytes()[:2000]}
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        message = error_of(run_cfg(str(tmp_path / name)), tmp_path)
        assert message.startswith(f"cannot read checkpoint {tmp_path / name}: not an sslseg Lightning checkpoint (")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")  # a checkpoint without sslseg's config
    foreign = error_of(run_cfg(str(tmp_path / "foreign.ckpt")), tmp_path)
    assert "not an sslseg Lightning checkpoint (KeyError)" in foreign


def test_another_method_class_count_or_backbone_is_named(tmp_path):
    ckpt = save_checkpoint(tmp_path / "supervised.ckpt", method="supervised")
    assert error_of(run_cfg(str(ckpt), method="fixmatch"), tmp_path) == (
        f"{ckpt} was trained with method.name=supervised, this run has method.name=fixmatch "
        "(a resumed run keeps its method)")
    assert "dataset.num_classes=6, this run has dataset.num_classes=21" in error_of(
        run_cfg(str(ckpt), method="supervised", classes=21), tmp_path)
    assert "backbone.name=tiny, this run has backbone.name=resnet101" in error_of(
        run_cfg(str(ckpt), method="supervised", backbone="resnet101"), tmp_path)


def test_staged_methods_resume_by_rerunning_not_from_a_file(tmp_path):
    ckpt = save_checkpoint(tmp_path / "dars.ckpt", method="dars")
    message = error_of(run_cfg(str(ckpt), method="dars", stages={"round0": {"kind": "train"}}), tmp_path)
    assert message.startswith("method=dars runs in stages and resumes by itself: drop ckpt_path")


def test_last_checkpoint_is_the_latest_epoch_even_when_validation_got_worse(tmp_path):
    """Lightning 2.6 refreshes last.ckpt only when best.ckpt is written; DARS's next round and a resume
    start from last.ckpt, so it must hold the final epoch, not the best one."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from sslseg.run.checkpoint import RunCheckpoints

    class GettingWorse(BoringModel):
        train_steps = 0  # what RunCheckpoints reads of an sslseg module

        def on_validation_epoch_end(self):
            self.log("val/mIoU", 10.0 - self.current_epoch)  # best after epoch 0

    checkpoints = RunCheckpoints(every_n_steps=0, dirpath=tmp_path, filename="best", monitor="val/mIoU", mode="max",
                                 save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[checkpoints],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         num_sanity_val_steps=0)
    trainer.fit(GettingWorse())
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6) and (best["epoch"], best["global_step"]) == (0, 2)
