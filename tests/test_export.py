"""SavedModel and ONNX export: reloaded, they equal Keras predict; failures leave nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from keras_pixelembed.export import export_onnx, export_saved_model
from keras_pixelembed.models import build_pixel_embedder
from tests.helpers import BACKEND


def _model(head="spatial"):
    import keras

    keras.utils.set_random_seed(0)
    model = build_pixel_embedder("unet", head, width=4, depth=2, embedding_dim=6)
    # random weights everywhere (the spatial head starts at zero offsets)
    model.set_weights(
        [
            np.random.default_rng(i).normal(0, 0.3, w.shape).astype(w.dtype) if w.ndim > 1 else w
            for i, w in enumerate(model.get_weights())
        ]
    )
    return model


SIZES = [(1, 16, 24), (3, 32, 20)]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs the TensorFlow backend")
@pytest.mark.parametrize("head", ["spatial", "embedding"])
def test_saved_model_matches_predict(tmp_path, head):
    import tensorflow as tf

    model = _model(head)
    path = export_saved_model(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, None, None, 3] and spec.dtype == tf.float32
    for batch, h, w in SIZES:
        x = np.random.default_rng(h).random((batch, h, w, 3)).astype(np.float32)
        np.testing.assert_allclose(
            serve(images=tf.constant(x))["output"].numpy(), model.predict(x, verbose=0), atol=1e-4
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="dynamic-size ONNX export needs the TensorFlow backend")
def test_onnx_matches_predict(tmp_path):
    import onnxruntime as ort

    model = _model()
    path = export_onnx(model, str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(path)
    assert session.get_inputs()[0].name == "images"
    for batch, h, w in SIZES:
        x = np.random.default_rng(w).random((batch, h, w, 3)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"images": x})[0], model.predict(x, verbose=0), atol=1e-4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow export")
def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import tensorflow as tf

    model = _model()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, str(tmp_path / "sm"))
    assert os.listdir(tmp_path) == []


def test_export_refusals_name_the_problem(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(model, str(tmp_path / "missing" / "m.onnx"))
    if BACKEND != "tensorflow":
        with pytest.raises(RuntimeError, match="TensorFlow backend"):
            export_saved_model(model, str(tmp_path / "sm"))
        with pytest.raises(ValueError, match="image_size"):
            export_onnx(model, str(tmp_path / "m.onnx"))
        assert os.listdir(tmp_path) == []
