"""SavedModel and ONNX export with dynamic height and width, written atomically.

Both take one float32 input `(batch, height, width, 3)` in [0, 1] and give the model's
per-pixel output. Height and width must be multiples of the model's downsampling factor
(`2 ** depth`, 8 for the bundled models), as for `model.predict`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np


def _check(model, path: str) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if len(model.inputs) != 1 or tuple(model.inputs[0].shape[1:]) != (None, None, 3):
        raise ValueError(
            f"Export expects one input of shape (batch, None, None, 3). Received: {[tuple(i.shape) for i in model.inputs]}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The folder of the export path does not exist: {parent}")


def _warm_up(model) -> None:
    model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)


def _serving_function(model, image_size=None):
    """The serving `tf.function`: float32 `images (batch, h, w, 3)` -> `{"output": ...}`; height
    and width unknown unless `image_size` fixes them."""
    import tensorflow as tf

    shape = (None, None, None, 3) if image_size is None else (None, *image_size, 3)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    def serve(images):
        return {"output": model(images, training=False)}

    return serve


def export_saved_model(model, path: str) -> str:
    """A TensorFlow SavedModel with a `serving_default` signature (input `images`), for TF Serving.

    Needs the TensorFlow backend (the SavedModel holds a TF graph). The folder is written to a
    temporary place and moved to `path` when complete; an existing `path` is replaced.
    """
    import keras

    _check(model, path)
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"export_saved_model needs the TensorFlow backend (KERAS_BACKEND=tensorflow); this is "
            f"{keras.backend.backend()!r}. Save the model as .keras and export it under TensorFlow."
        )
    import tensorflow as tf

    _warm_up(model)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=".saved_model.", dir=parent)
    try:
        serve = _serving_function(model)
        module = tf.Module()
        module.model = model
        module.serve = serve
        tf.saved_model.save(module, os.path.join(tmp, "m"), signatures={"serving_default": serve})
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        os.replace(os.path.join(tmp, "m"), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_onnx(model, path: str, image_size: tuple[int, int] | None = None, opset: int = 17) -> str:
    """An ONNX file with dynamic batch, height and width (input `images`, output `output`).

    TensorFlow backend: converted with tf2onnx 1.17 from a `tf.function` with unknown height and
    width. JAX and PyTorch backends: refused unless `image_size` fixes the size, because
    PyTorch's exporter with unknown sizes bakes in padding traced at one size and returns
    wrong numbers without an error. The file is written to a temporary name and moved into place.
    """
    import keras

    _check(model, path)
    backend = keras.backend.backend()
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx.", suffix=".onnx", dir=parent)
    os.close(fd)
    try:
        if backend == "tensorflow":
            try:
                import tf2onnx
            except ImportError as error:
                raise ImportError("ONNX export needs tf2onnx: pip install 'keras-pixelembed[export]'") from error
            _warm_up(model)
            serve = _serving_function(model, image_size)
            tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset, output_path=tmp)
        else:
            if image_size is None:
                raise ValueError(
                    f"ONNX export under the {backend} backend needs a fixed `image_size=(h, w)`: with unknown "
                    "sizes PyTorch's exporter bakes in the padding of one traced size and gives wrong numbers. "
                    "Use KERAS_BACKEND=tensorflow for dynamic sizes."
                )
            _warm_up(model)
            model.export(
                tmp, format="onnx", input_signature=[keras.InputSpec(shape=(None, *image_size, 3), dtype="float32")]
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
