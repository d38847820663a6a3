"""The `pixelembed` command, through its entry point."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_pixelembed.cli import main
from tests.helpers import THROUGH_TENSORFLOW_ONCE, TINY_SYNTHETIC_FLAGS, tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def _image(path, h=20, w=28):
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_help_exits_cleanly():
    for argv in (["--help"], ["segment", "--help"], ["train", "synthetic", "--help"], ["export", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0


def test_segment_writes_uint16_labels_and_overlays(tmp_path, model_dir, capsys):
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.jpg", 17, 9)
    assert main(["segment", a, b, "--out", str(tmp_path / "out"), "--model", model_dir]) == 0
    for stem, shape in (("a", (20, 28)), ("b", (17, 9))):
        labels = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert labels.dtype == np.uint16 and labels.shape == shape
        overlay = np.asarray(Image.open(tmp_path / "out" / f"{stem}_overlay.png"))
        assert overlay.shape == (*shape, 3)


def test_segment_takes_folders_and_globs_and_never_overwrites(tmp_path, model_dir, capsys):
    folder, other = tmp_path / "imgs", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    _image(folder / "photo.png")
    _image(folder / "photo.jpg", 12, 10)
    _image(other / "photo.png", 9, 9)
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(other / "*.png"), "--out", str(out), "--model", model_dir]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[1/3]") and all(" s -> " in line for line in lines)
    written = sorted(n for n in os.listdir(out) if not n.endswith("_overlay.png"))
    assert len(written) == 3 and len(set(written)) == 3  # three inputs named photo: three outputs
    assert main(["segment", str(tmp_path / "*.tif"), "--out", str(out), "--model", model_dir]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_overlay_dims_the_background():
    from keras_pixelembed.viz import overlay_segments

    image = np.full((6, 6, 3), 0.9, np.float32)
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 1
    out = overlay_segments(image, labels, background=0)
    assert np.allclose(out[0, 0], 0.3) and np.allclose(out[2, 2], 0.9)


def test_bad_paths_and_images_are_one_clear_line(tmp_path, model_dir, capsys):
    assert main(["segment", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"), "--model", model_dir]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.png" in err and "Traceback" not in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["segment", str(broken), "--out", str(tmp_path / "o"), "--model", model_dir]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.png" in err
    assert (
        main(
            ["segment", _image(tmp_path / "c.png"), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no_model")]
        )
        == 2
    )
    assert "no_model" in capsys.readouterr().err
    assert (
        main(["evaluate", "--model", model_dir, "--images", str(tmp_path / "nowhere"), "--labels", str(tmp_path)]) == 2
    )
    assert "nowhere" in capsys.readouterr().err


def test_evaluate_prints_a_table_and_writes_json(tmp_path, model_dir, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", model_dir, "--synthetic", "2", "--size", "32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "slic" in text and "felzenszwalb" in text
    import json

    result = json.loads(out.read_text())
    assert set(result) >= {"ours", "slic", "felzenszwalb", "images"} and 0 <= result["slic"]["sbd"] <= 1
    drawn = ["--generator", "randomized", "--families", "textured", "--backgrounds", "photo"]
    assert main(["evaluate", "--model", model_dir, "--synthetic", "1", "--size", "32", *drawn]) == 0
    assert main(["evaluate", "--model", model_dir, "--synthetic", "1", "--families", "plaid"]) != 0
    assert "families" in capsys.readouterr().err


def test_evaluate_from_folders_with_curves(tmp_path, model_dir):
    from keras_pixelembed import data

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        image, masks, _ = data.synthetic(2, (32, 32), seed=1).load(i)
        Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "im" / f"{i}.png")
        Image.fromarray(data.masks_to_label_map(masks).astype(np.uint16)).save(tmp_path / "lab" / f"{i}.png")
    curves = tmp_path / "curves.png"
    assert (
        main(
            [
                "evaluate",
                "--model",
                model_dir,
                "--images",
                str(tmp_path / "im"),
                "--labels",
                str(tmp_path / "lab"),
                "--curves",
                str(curves),
            ]
        )
        == 0
    )
    assert curves.stat().st_size > 0


@THROUGH_TENSORFLOW_ONCE
def test_export_command(tmp_path, model_dir):
    assert main(["export", "--format", "saved_model", "--out", str(tmp_path / "sm"), "--model", model_dir]) == 0
    assert os.path.isfile(tmp_path / "sm" / "saved_model.pb")
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--model", model_dir]) == 0
    assert os.path.getsize(tmp_path / "m.onnx") > 0


@THROUGH_TENSORFLOW_ONCE
def test_export_command_prints_no_temporary_name(tmp_path, model_dir, capsys):
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--model", model_dir]) == 0
    captured = capsys.readouterr()
    assert "m.onnx" in captured.out and ".onnx." not in captured.out + captured.err and "tmp" not in captured.err
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_demo_with_a_given_model_writes_the_picture(tmp_path, model_dir, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--model", model_dir, "--images", "2", "--size", "32", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "slic" in capsys.readouterr().out


def test_train_command_runs_one_short_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    drawn = ["--families", "flat", "spots", "--backgrounds", "photo"]
    assert (
        main(["train", "synthetic", "--out-dir", str(out), "--train-images", "4", *drawn, *TINY_SYNTHETIC_FLAGS]) == 0
    )
    for name in ("model.keras", "config.json", "thresholds.json", "metrics.json", "log.csv"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())  # what the model saw, for its card
    assert (config["generator"], config["families"], config["backgrounds"]) == (
        "randomized",
        ["flat", "spots"],
        ["photo"],
    )
    bad = tmp_path / "bad"
    assert main(["train", "synthetic", "--out-dir", str(bad), "--families", "plaid", *TINY_SYNTHETIC_FLAGS]) != 0
    assert not bad.exists()
    # a model to start from of another architecture (the bundled default's width 16): one line, nothing written
    flags = ["--init-weights", "spatial_unet", *TINY_SYNTHETIC_FLAGS]
    capsys.readouterr()  # what the runs above printed
    assert main(["train", "synthetic", "--out-dir", str(bad), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "init_weights='spatial_unet'" in err and "--width 16" in err
    assert not bad.exists()
