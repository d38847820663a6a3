"""SavedModel and ONNX exports that serve segments, at any image size, written atomically.

A volume model (`ndim=3`) exports the same way, with input `images (batch, depth, height,
width, channels)` and `labels (batch, depth, height, width)`, every size dynamic.

Both export `Segmenter.segmentation_model`: one float32 input `images (batch, height, width, 3)`
in [0, 1], any height and width >= 1, and the outputs

* `labels`: int32 `(batch, height, width)` instance labels (spatial heads; 0 = background),
* `output`: the raw head output cropped to the input size,
* `dropped_seeds`: int32 `(batch,)` seed pixels left unvisited when an image reached the
  instance bound (spatial heads; 0 normally).

Edge padding to the model's multiple, the crop back, the clustering and the run's tuned
thresholds, `pixel_size` and `sigma_scale` are inside the graph; they are also recorded, with
the package version, in the SavedModel's `assets/pixelembed.json` and in the ONNX file's
`metadata_props`. The graph is built with TensorFlow: under the JAX or PyTorch backend the
model is saved as `.keras` and exported by a TensorFlow subprocess, with the same outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from keras_pixelembed.export._onnx_passes import scalar_loop_counters, selects_as_where

METADATA = "pixelembed.json"


def _segmenter(model):
    """A `Segmenter` from a `Segmenter` or a bare `keras.Model` (its head read off its layers,
    as for a bare `.keras` file: `run_dir.guess_head`)."""
    import keras

    from keras_pixelembed.run_dir import guess_head
    from keras_pixelembed.segmenter import Segmenter

    if isinstance(model, Segmenter):
        return model
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Segmenter or a keras.Model. Received: {type(model).__name__}")
    return Segmenter(model, head=guess_head(model))


def _check(segmenter, path: str, image_size=None) -> None:
    model = segmenter.model
    shapes = [tuple(i.shape) for i in model.inputs]
    ok = len(shapes) == 1 and (
        shapes[0][1:] == (None, None, 3) or (len(shapes[0]) == 5 and shapes[0][1:4] == (None,) * 3 and shapes[0][4])
    )
    if not ok:
        raise ValueError(
            "Export expects one input of shape (batch, None, None, 3), or a volume model's (batch, None, None, "
            f"None, channels). Received: {shapes}"
        )
    if image_size is not None and len(image_size) != segmenter.ndim:
        what = "(depth, height, width)" if segmenter.ndim == 3 else "(height, width)"
        raise ValueError(f"`image_size` must be {what} for this model. Received: image_size={tuple(image_size)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The folder of the export path does not exist: {parent}")


def metadata(segmenter, max_instances: int) -> dict:
    """What travels with an export: how to read its outputs and the settings inside its graph
    (a volume model's also records `ndim` and `z_spacing`)."""
    import keras_pixelembed

    volume = segmenter.ndim == 3
    axes, item = ("depth, height, width", "volume") if volume else ("height, width", "image")
    heads = "" if volume else " (spatial heads)"  # volumes have spatial heads only
    if volume:
        given = f"images: float32 (batch, {axes}, {segmenter.channels}) volumes, any depth, height and width >= 1; "
    else:
        given = "images: float32 (batch, height, width, 3), any height and width >= 1; "
    article = "a" if volume else "an"
    return {
        "package": "keras-pixelembed",
        "version": keras_pixelembed.__version__,
        "head": segmenter.head,
        **({"ndim": 3} if volume else {}),
        "thresholds": dict(segmenter.thresholds),
        "pixel_size": segmenter.pixel_size,
        "sigma_scale": segmenter.sigma_scale,
        **({"z_spacing": segmenter.z_spacing} if volume else {}),
        "multiple": segmenter.multiple,
        "max_instances": max_instances,
        "percentiles": list(segmenter.percentiles) if segmenter.percentiles else None,
        "tta": segmenter.tta,
        "input": given
        + (
            f"any range: each {item} is percentile-normalized ({segmenter.percentiles[0]}, "
            f"{segmenter.percentiles[1]}) inside the graph"
            if segmenter.percentiles
            else "in [0, 1]"
        ),
        "outputs": {
            "labels": f"int32 (batch, {axes}), 0 = background{heads}",
            "output": f"float32 (batch, {axes}, channels), the raw head output",
            "dropped_seeds": f"int32 (batch,), seeds left when {article} {item} reached max_instances{heads}",
        },
    }


def _readable(path: str) -> None:
    """Gives files the mode a plain `open` would (temporary files start at 0600, folders 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    if os.path.isdir(path):
        for folder, _, files in os.walk(path):
            os.chmod(folder, 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~umask)
    else:
        os.chmod(path, 0o666 & ~umask)


def _replace(tmp: str, path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    os.replace(tmp, path)


def _serving_function(segmenter, max_instances: int, image_size=None):
    """The serving `tf.function`: float32 `images (batch, h, w, 3)` -> the segmentation model's
    outputs; height and width unknown unless `image_size` fixes them."""
    import tensorflow as tf

    graph = segmenter.segmentation_model(max_instances=max_instances)
    n, c = segmenter.ndim, segmenter.channels
    graph.predict_on_batch(np.zeros((1, 3, 5, 6)[: n + 1] + (c,), np.float32))  # builds every layer
    shape = (None,) * (n + 1) + (c,) if image_size is None else (None, *image_size, c)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    def serve(images):
        return graph(images, training=False)

    return graph, serve


def _through_tensorflow(kind: str, segmenter, path: str, max_instances: int, image_size=None, opset: int = 17) -> str:
    """Exports from a TensorFlow subprocess: the model goes there as a `.keras` file with the
    segmenter's settings (a model trained on JAX or PyTorch loads under TensorFlow)."""
    from keras_pixelembed import run_dir

    parent = os.path.dirname(os.path.abspath(path))
    work = tempfile.mkdtemp(prefix=".pixelembed_export.", dir=parent)
    try:
        segmenter.model.save(os.path.join(work, run_dir.MODEL))
        config = {
            "head": segmenter.head,
            "multiple": segmenter.multiple,
            "pixel_size": segmenter.pixel_size,
            "sigma_scale": segmenter.sigma_scale,
            "percentiles": list(segmenter.percentiles) if segmenter.percentiles else None,
            "z_spacing": segmenter.z_spacing,
        }
        run_dir.save_config(work, config)
        run_dir.save_thresholds(work, segmenter.thresholds)
        command = [
            sys.executable,
            "-m",
            "keras_pixelembed.export",
            kind,
            work,
            os.path.abspath(path),
            "--max-instances",
            str(max_instances),
        ]
        if image_size:
            command += ["--image-size", *(str(s) for s in image_size)]
        if segmenter.tta:
            command += ["--tta"]
        if kind == "onnx":
            command += ["--opset", str(opset)]
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise RuntimeError(f"{kind} export through TensorFlow failed: {reason}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def export_saved_model(model, path: str, max_instances: int = 256) -> str:
    """A TensorFlow SavedModel whose `serving_default` signature serves segments (TF Serving).

    Args:
        model: a `Segmenter` (thresholds, pixel size, multiple of its run) or a `keras.Model`
            (default thresholds).
        path: the SavedModel folder; an existing one is replaced once the new one is complete.
        max_instances: the static bound on instances per image of the in-graph clustering.

    Input `images`, outputs `labels`, `output`, `dropped_seeds` (see the module docstring);
    `assets/pixelembed.json` records the settings. Under JAX or PyTorch the export runs in a
    TensorFlow subprocess. A failed export leaves nothing behind.
    """
    import keras

    segmenter = _segmenter(model)
    _check(segmenter, path)
    if keras.backend.backend() != "tensorflow":
        return _through_tensorflow("saved_model", segmenter, path, max_instances)
    import tensorflow as tf

    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=".saved_model.", dir=parent)
    try:
        graph, serve = _serving_function(segmenter, max_instances)
        module = tf.Module()
        module.model = graph
        module.serve = serve
        target = os.path.join(tmp, "m")
        tf.saved_model.save(module, target, signatures={"serving_default": serve})
        os.makedirs(os.path.join(target, "assets"), exist_ok=True)
        with open(os.path.join(target, "assets", METADATA), "w") as f:
            json.dump(metadata(segmenter, max_instances), f, indent=2)
        _readable(target)
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def export_onnx(
    model, path: str, image_size: tuple[int, int] | None = None, opset: int = 17, max_instances: int = 256
) -> str:
    """An ONNX file with dynamic batch, height and width that serves segments (ONNX Runtime).

    Args:
        model: a `Segmenter` or a `keras.Model`, as for `export_saved_model`.
        path: the `.onnx` file; written to a temporary name and moved into place.
        image_size: fix `(height, width)` (volumes: `(depth, height, width)`) instead of dynamic sizes.
        opset: the ONNX opset. Defaults to `17`.
        max_instances: the static bound on instances per image of the in-graph clustering.

    Input `images`, outputs `labels`, `output`, `dropped_seeds`; the settings are in the
    file's `metadata_props` (key `pixelembed`, JSON). Converted with tf2onnx from the TensorFlow
    graph (a TensorFlow subprocess under JAX or PyTorch).
    """
    import keras

    segmenter = _segmenter(model)
    _check(segmenter, path, image_size)
    if keras.backend.backend() != "tensorflow":
        return _through_tensorflow("onnx", segmenter, path, max_instances, image_size, opset)
    import logging

    from keras_pixelembed.validation import require

    onnx = require("onnx", "ONNX export")
    tf2onnx = require("tf2onnx", "ONNX export")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx.", suffix=".onnx", dir=parent)
    os.close(fd)
    try:
        _, serve = _serving_function(segmenter, max_instances, image_size)
        try:
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
        except Exception as error:  # noqa: BLE001 (TensorFlow raises several types for the same cause)
            if "duplicate function" not in str(error):
                raise
            # freezing re-imports the loop's control-flow functions, whose generic names can clash
            # with those of a graph this process traced before: a fresh TensorFlow process has none
            return _through_tensorflow("onnx", segmenter, path, max_instances, image_size, opset)
        scalar_loop_counters(proto.graph)
        if opset >= 9:  # Where
            selects_as_where(proto.graph)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "pixelembed", json.dumps(metadata(segmenter, max_instances))
        onnx.save_model(proto, tmp)
        _readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
