"""The Python inference API (sslseg.Segmenter), folder prediction, export, and the recorded network.

The checkpoints are real Lightning checkpoints of a tiny DAW module whose EMA teacher differs from its
student (noise added to the teacher's weights), with the record saying the teacher was reported."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import sslseg
from sslseg.data.io import read_image, read_mask
from sslseg.errors import UserError
from sslseg.methods import method_class
from sslseg.methods.base import SemiSegModule
from sslseg.methods.daw import DAW
from sslseg.methods.teacher import Teacher
from sslseg.predict.evaluation import list_images, load_for_validation, predict_folder
from sslseg.predict.export import export
from sslseg.predict.inference import predict
from sslseg.predict.palette import CITYSCAPES_PALETTE, VOC_PALETTE, palette_for
from tests.conftest import compose_cfg, last_line, run_cli

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the model was trained


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def _save(module, path: Path) -> Path:
    """A Lightning checkpoint of `module` as training writes it (on_save_checkpoint included)."""
    trainer = _trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _calibrate(net: torch.nn.Module, x: torch.Tensor) -> None:
    """BN statistics of `x`: a freshly initialised network then gives masks that vary over the image (with
    the initial statistics its logits are nearly constant, and every mask would be one class)."""
    for bn in net.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None  # the plain average of the batches seen
    net.train()
    net(x)
    net.eval()


def _daw_checkpoint(path: Path, *overrides: str, record: str = "teacher") -> Path:
    cfg = compose_cfg(["method=daw", *overrides])
    torch.manual_seed(0)
    module = method_class(cfg)(cfg)
    with torch.no_grad():
        for p in module.teacher.network.decoder.classifier.parameters():  # a teacher unlike its student
            p.copy_(torch.randn_like(p))
        batch = torch.cat([_by_hand(_image(64, 64, seed)) for seed in range(10, 14)])
        _calibrate(module.model, batch)
        _calibrate(module.teacher.network, batch)
    module.best_network, module.network_scores = record, {"model": 40.0, "teacher": 50.0}
    return _save(module, path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _daw_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (uint8, H x W x 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _by_hand(image: np.ndarray) -> torch.Tensor:
    """ImageNet normalisation written out: the float input a user of a tensor passes."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _networks(path: Path):
    """The checkpoint's student and teacher, loaded independently of the Segmenter."""
    module = DAW.load_from_checkpoint(path, map_location="cpu", load_pretrained=False).eval()
    return module.model, module.teacher.network


def test_masks_are_the_recorded_teachers_whole_image_argmax(ckpt):
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    assert segmenter.network_name == "teacher" and segmenter.selected
    assert segmenter.num_classes == 6
    assert segmenter.class_names == ["background", "disk", "square", "triangle", "ring", "cross"]
    student, teacher = _networks(ckpt)
    image = _image(96, 80)
    with torch.no_grad():
        x = _by_hand(image)
        expected, students = teacher(x).logits.argmax(1)[0], student(x).logits.argmax(1)[0]
    assert len(expected.unique()) > 2  # a mask of one class would prove little
    assert not torch.equal(expected, students)  # otherwise the test could not tell them apart
    mask = segmenter(image)
    assert mask.shape == (96, 80) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected.numpy())


PCT_STAGE_2 = ["method=pct", "method._target_=sslseg.methods.pct.PCTRetrain", "method.evaluate=student"]


@pytest.mark.parametrize("overrides", [["method=supervised"], ["method=fixmatch"], ["method=unimatch"],
                                       ["method=dssn"], ["method=ddfp"], ["method=dars"], ["method=pct"], PCT_STAGE_2])
def test_every_methods_checkpoint_loads_and_predicts_with_its_selected_network(tmp_path, overrides):
    """DARS's rounds and PCT's stages are checkpoints of these configs (PCT's stage 2 names its own class)."""
    cfg = compose_cfg(overrides)
    torch.manual_seed(0)
    module = method_class(cfg)(cfg)
    selected = module.evaluated_networks()[-1]  # the teacher, PseudoNet, or the one network
    net = module.network(selected)
    net = net.network if isinstance(net, Teacher) else net
    with torch.no_grad():
        _calibrate(net, torch.cat([_by_hand(_image(64, 64, seed)) for seed in range(10, 14)]))
    module.best_network, module.network_scores = selected, {selected: 1.0}
    segmenter = sslseg.Segmenter.from_checkpoint(_save(module, tmp_path / "best.ckpt"))
    assert type(segmenter.module) is type(module) and segmenter.network_name == selected
    image = _image(64, 48)
    with torch.no_grad():
        expected = net(_by_hand(image)).logits.argmax(1)[0].numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(segmenter(image), expected)


def test_every_input_kind_gives_the_same_masks(ckpt):
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    a, b = _image(96, 80, seed=1), _image(50, 70, seed=2)
    mask_a, mask_b = segmenter(a), segmenter(b)
    listed = segmenter([a, Image.fromarray(b)])
    assert len(listed) == 2
    np.testing.assert_array_equal(listed[0], mask_a)
    np.testing.assert_array_equal(listed[1], mask_b)
    np.testing.assert_array_equal(segmenter(Image.fromarray(a).convert("RGBA")), mask_a)
    normalised = segmenter(torch.cat([_by_hand(a), _by_hand(a)]))  # float: already normalised
    assert normalised.shape == (2, 96, 80) and normalised.dtype == torch.int64
    np.testing.assert_array_equal(normalised[1].numpy(), mask_a)
    raw = segmenter(torch.from_numpy(a).permute(2, 0, 1)[None])  # uint8: raw RGB
    np.testing.assert_array_equal(raw[0].numpy(), mask_a)
    with pytest.raises(ValueError, match="uint8"):
        segmenter(a.astype(np.float32))
    with pytest.raises(TypeError):
        segmenter("image.jpg")


def test_the_checkpoints_protocol_is_applied(tmp_path):
    """A sliding-window + flip protocol in the checkpoint gives sslseg.predict.inference.predict's masks with it."""
    path = _daw_checkpoint(tmp_path / "sliding.ckpt", "dataset.eval.mode=sliding", "dataset.eval.flip=true",
                           "dataset.eval.crop_size=48")
    segmenter = sslseg.Segmenter.from_checkpoint(path)
    assert segmenter.protocol["mode"] == "sliding" and segmenter.protocol["flip"] is True
    _, teacher = _networks(path)
    # The float input (already normalised) so that the scores, not a rounding of the normalisation, are compared:
    # the masks' argmax is equal wherever two classes' scores are not within float32 rounding of each other.
    x = _by_hand(_image(80, 72, seed=3))
    with torch.no_grad():
        sliding = predict(lambda t: teacher(t).logits, x, "sliding", 6, 48, 0.6667, 4, flip=True)
        whole = teacher(x).logits
    assert not torch.equal(sliding.argmax(1), whole.argmax(1))
    torch.testing.assert_close(segmenter.scores(x), sliding)
    no_flip = sslseg.Segmenter.from_checkpoint(path, protocol={"flip": False})
    with torch.no_grad():
        expected = predict(lambda t: teacher(t).logits, x, "sliding", 6, 48, 0.6667, 4)
    assert not torch.allclose(expected, sliding, atol=1e-3)  # the flip is off: other scores
    torch.testing.assert_close(no_flip.scores(x), expected)


def test_a_bad_path_or_a_foreign_file_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match=r"^checkpoint not found: .*none\.ckpt$"):
        sslseg.Segmenter.from_checkpoint(tmp_path / "none.ckpt")
    with pytest.raises(UserError, match=r"^checkpoint path is a folder, not a checkpoint file: "):
        sslseg.Segmenter.from_checkpoint(tmp_path)
    (tmp_path / "random.ckpt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=r"^cannot read checkpoint .*random\.ckpt: not an sslseg Lightning checkpoint"):
        sslseg.Segmenter.from_checkpoint(tmp_path / "random.ckpt")


def test_load_from_checkpoint_of_the_base_class_builds_the_checkpoints_method(ckpt):
    module = SemiSegModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert type(module) is DAW and module.best_network == "teacher"
    assert module.network_scores == {"model": 40.0, "teacher": 50.0}
    from sslseg.methods.supervised import Supervised

    with pytest.raises(UserError, match="is a daw checkpoint"):
        Supervised.load_from_checkpoint(ckpt)


def test_validation_records_its_choice_and_eval_keeps_the_recorded_one(ckpt, tmp_path):
    """Val masks equal to the student's predictions: choosing on that data picks the student (100 mIoU), and
    that choice lands in the checkpoint; eval.py's loader keeps a checkpoint's recorded teacher instead."""
    student, _ = _networks(ckpt)
    images = [_image(64, 64, seed=s) for s in range(3)]
    with torch.no_grad():
        masks = [student(_by_hand(i)).logits.argmax(1)[0] for i in images]
    loader = DataLoader([{"image": torch.from_numpy(i).permute(2, 0, 1).contiguous(), "mask": m}
                         for i, m in zip(images, masks)], batch_size=3)

    module = SemiSegModule.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = _trainer()
    trainer.validate(module, dataloaders=loader, verbose=False)
    assert module.last_val["network"] == "model" and module.last_val["mIoU"] == pytest.approx(100)
    trainer.save_checkpoint(tmp_path / "validated.ckpt")
    saved = torch.load(tmp_path / "validated.ckpt", map_location="cpu", weights_only=False)
    assert saved["best_network"] == "model"
    assert set(saved["network_scores"]) == {"model", "teacher"} and saved["network_scores"]["model"] == 100

    cfg = compose_cfg([f"ckpt_path={ckpt}"], config_name="eval")
    module, recorded = load_for_validation(cfg)
    assert recorded and module.fixed_network == "teacher"
    _trainer().validate(module, dataloaders=loader, verbose=False)
    assert module.last_val["network"] == "teacher" and module.last_val["mIoU"] < 100


def test_a_checkpoint_saved_before_any_validation_has_no_selection(tmp_path):
    cfg = compose_cfg(["method=daw"])
    path = _save(method_class(cfg)(cfg), tmp_path / "early.ckpt")
    with pytest.warns(UserWarning, match="records no validation's choice between model, teacher"):
        segmenter = sslseg.Segmenter.from_checkpoint(path)
    assert segmenter.network_name == "model" and not segmenter.selected


def test_folder_prediction_writes_a_palette_mask_and_an_overlay_per_image(ckpt, tmp_path):
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_image(96, 80, seed=4)).save(folder / "a.png")
    Image.fromarray(_image(50, 70, seed=5)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    images = list_images(folder)
    assert [p.name for p in images] == ["a.png", "b.jpg"]
    assert predict_folder(segmenter, images, tmp_path / "out") == 2
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "b.png"]
    for path in images:
        with Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png") as png:
            assert png.mode == "P" and png.getpalette()[:18] == VOC_PALETTE[:18]
        image = read_image(path)
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / f"{path.stem}.png", 6), segmenter(image))
        with Image.open(tmp_path / "out" / "overlays" / f"{path.stem}.jpg") as over:
            assert over.size == (image.shape[1], image.shape[0]) and over.mode == "RGB"

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="input_dir has no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="input_dir not found"):
        list_images(tmp_path / "missing")


def test_cityscapes_masks_get_cityscapes_colours():
    assert palette_for({"name": "cityscapes", "layout": "cityscapes"})[:3] == [128, 64, 128]  # road
    assert palette_for({"name": "pascal", "layout": "pascal"}) is VOC_PALETTE
    assert len(CITYSCAPES_PALETTE) == len(VOC_PALETTE) == 768


def _same_as_segmenter(segmenter, run) -> None:
    """The exported logits at two sizes and batch 2: close to the network's, argmax = the segmenter's masks."""
    for h, w in ((96, 96), (80, 72)):
        images = [_image(h, w, seed=6), _image(h, w, seed=7)]
        x = torch.cat([_by_hand(i) for i in images])
        logits = run(x)
        assert logits.shape == (2, 6, h, w)
        with torch.no_grad():
            torch.testing.assert_close(logits, segmenter.network(x).logits, rtol=1e-3, atol=1e-3)  # logits ~ ±10
        # The masks agree wherever the top two classes are told apart (another runtime's float summation order
        # may flip a pixel whose two best logits lie within the logits' tolerance).
        top2 = logits.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1] > 2e-3).numpy()
        for image, exported, clear in zip(images, logits.argmax(1), decided):
            np.testing.assert_array_equal(exported.numpy()[clear], segmenter(image)[clear])


def test_torchscript_export_reloads_to_the_same_masks(ckpt, tmp_path):
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    info = export(segmenter, "torchscript", tmp_path / "net.pt")
    assert info["dynamic_axes"] == ["batch", "height", "width"] and info["network"] == "teacher"
    assert json.loads((tmp_path / "net.pt.json").read_text())["classes"] == segmenter.class_names
    loaded = torch.jit.load(str(tmp_path / "net.pt"))
    _same_as_segmenter(segmenter, lambda x: loaded(x).detach())


def test_onnx_export_reloads_to_the_same_masks(ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    info = export(segmenter, "onnx", tmp_path / "net.onnx")
    assert info["dynamic_axes"] == ["batch", "height", "width"] and info["fixed_axes"] == []
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    _same_as_segmenter(segmenter, lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0]))


@pytest.mark.slow
def test_eval_cli_predicts_a_folder_exports_and_fails_in_one_line(ckpt, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_image(64, 48, seed=i)).save(folder / f"img{i}.jpg")
    out = tmp_path / "pred"
    run = run_cli("eval.py", f"ckpt_path={ckpt}", f"input_dir={folder}", f"output_dir={out}", "export=torchscript",
                  f"export_path={tmp_path / 'net.pt'}", f"paths.output_dir={tmp_path / 'outputs'}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert last_line(run.stdout) == (f"predicted 2 images of {folder}: masks in {out / 'masks'}, "
                                     f"overlays in {out / 'overlays'}")
    assert "network: teacher (EMA) (recorded in the checkpoint)" in run.stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img1.png"]
    assert (tmp_path / "net.pt").is_file()

    for args, message in (([f"ckpt_path={tmp_path / 'none.ckpt'}", f"input_dir={folder}"],
                           f"error: checkpoint not found: {tmp_path / 'none.ckpt'}"),
                          ([f"ckpt_path={ckpt}", f"input_dir={tmp_path / 'missing'}"],
                           f"error: input_dir not found: {tmp_path / 'missing'}")):
        run = run_cli("eval.py", *args, f"paths.output_dir={tmp_path / 'outputs'}")
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [message]


@pytest.mark.parametrize("case", ["unknown format", "export into a file's folder", "export_path a folder",
                                  "output_dir in a file"])
def test_eval_outputs_are_checked_before_the_network_loads(ckpt, tmp_path, case):
    """eval.py's export and prediction outputs go through the same checks as a run's folder: one UserError (one
    line, exit 2 from the CLI) naming the option, before anything is loaded or written."""
    from sslseg.predict.evaluation import predict_or_export

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_image(32, 32)).save(folder / "a.jpg")
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    overrides, message = {
        "unknown format": (["export=foo"], r"^export must be one of \['onnx', 'torchscript'\], got 'foo'$"),
        "export into a file's folder": (["export=onnx", f"export_path={tmp_path / 'file' / 'x.onnx'}"],
                                        r"^cannot create .*file \(export_path\): .*file is a file, not a folder$"),
        "export_path a folder": (["export=onnx", f"export_path={tmp_path / 'dir'}"],
                                 r"^export_path=.*dir is a folder: name the file to write, e.g. .*dir/best\.onnx$"),
        "output_dir in a file": ([f"input_dir={folder}", f"output_dir={tmp_path / 'file' / 'preds'}"],
                                 r"^cannot create .*preds \(output_dir\): .*file is a file, not a folder$"),
    }[case]
    cfg = compose_cfg([f"ckpt_path={ckpt}", *overrides], config_name="eval")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=message):
        predict_or_export(cfg)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_an_empty_or_non_finite_input_is_refused(ckpt):
    segmenter = sslseg.Segmenter.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match="H, W >= 1"):
        segmenter(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        segmenter(torch.full((1, 3, 8, 8), float("nan")))


def test_a_pct_stage_2_checkpoint_from_before_its_own_class_loads(tmp_path):
    cfg = compose_cfg(PCT_STAGE_2)
    module = method_class(cfg)(cfg)
    path = tmp_path / "old.ckpt"
    saved = OmegaConf.to_container(module.cfg)  # as a PCT stage-2 run saved it
    saved["method"] |= {"_target_": "sslseg.methods.pct.PCT", "phase": "retrain", "evaluate": "both"}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"cfg": saved}}, path)
    segmenter = sslseg.Segmenter.from_checkpoint(path)
    assert type(segmenter.module).__name__ == "PCTRetrain" and segmenter.network_name == "model"
