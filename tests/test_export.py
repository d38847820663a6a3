"""SavedModel and ONNX exports serve segments at any size: labels equal `Segmenter.segment`,
`output` equals `predict`; the settings travel with the files; failures leave nothing."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from keras_pixelembed.bundled import default_model_path
from keras_pixelembed.export import export_onnx, export_saved_model
from keras_pixelembed.metrics import adjusted_rand_index
from keras_pixelembed.segmenter import Segmenter
from tests.helpers import BACKEND, THROUGH_TENSORFLOW_ONCE, tiny_model_dir

SIZES = [(2, 97, 211), (2, 257, 199), (1, 1, 1)]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter.load(default_model_path())


@pytest.fixture(scope="module")
def exported(segmenter, tmp_path_factory):
    """Both exports of the default bundled model, made under the current backend (through a
    TensorFlow subprocess off TensorFlow)."""
    folder = tmp_path_factory.mktemp("export")
    return (export_saved_model(segmenter, str(folder / "sm")), export_onnx(segmenter, str(folder / "m.onnx")), folder)


def _images(batch, h, w):
    from keras_pixelembed import data

    source = data.synthetic(batch, (max(h, 16), max(w, 16)), families=("multicolor",), seed=h * w)
    return np.stack([source.load(i)[0][:h, :w] for i in range(batch)])


def _check(segmenter, x, labels, output):
    assert labels.dtype == np.int32 and labels.shape == x.shape[:3]
    np.testing.assert_allclose(output, segmenter.predict(x), rtol=1e-5, atol=1e-4)
    for got, image in zip(labels, x):
        assert adjusted_rand_index(got, segmenter.segment(image)) == 1.0


@THROUGH_TENSORFLOW_ONCE
def test_saved_model_serves_labels_at_any_size(segmenter, exported):
    import tensorflow as tf

    serve = tf.saved_model.load(exported[0]).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, None, None, 3] and spec.dtype == tf.float32
    assert {"labels", "output", "dropped_seeds"} <= set(serve.structured_outputs)
    for batch, h, w in SIZES:
        x = _images(batch, h, w)
        out = serve(images=tf.constant(x))
        _check(segmenter, x, out["labels"].numpy(), out["output"].numpy())
    with open(os.path.join(exported[0], "assets", "pixelembed.json")) as f:
        meta = json.load(f)
    assert meta["thresholds"] == segmenter.thresholds and meta["pixel_size"] == segmenter.pixel_size
    assert meta["head"] == "spatial" and meta["version"]


@THROUGH_TENSORFLOW_ONCE
def test_onnx_serves_labels_at_any_size(segmenter, exported):
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(exported[1])
    assert [i.name for i in session.get_inputs()] == ["images"]
    names = [o.name for o in session.get_outputs()]
    assert {"labels", "output", "dropped_seeds"} <= set(names)
    for batch, h, w in SIZES:
        x = _images(batch, h, w)
        out = dict(zip(names, session.run(None, {"images": x})))
        _check(segmenter, x, out["labels"], out["output"])
    proto = onnx.load(exported[1])
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["pixelembed"])["thresholds"] == segmenter.thresholds
    assert _lowered_selects(proto.graph) == 0  # every select is one Where (the clustering loop's too)


def _lowered_selects(graph) -> int:
    """tf2onnx's lowered selects (`Cast(c) * x + y * Cast(Not(c))`) in `graph` and its subgraphs."""
    from keras_pixelembed.export._onnx_passes import _select_parts, _subgraphs

    producers = {out: node for node in graph.node for out in node.output}
    found = sum(_select_parts(node, producers) is not None for node in graph.node)
    return found + sum(_lowered_selects(sub) for node in graph.node for _, sub in _subgraphs(node))


def _lowered_select_model():
    """tf2onnx's lowering of `where(c, x, y)` on int32 and float, at the top and inside an If
    branch (reading `c` from the outer scope), operands in both orders, and a `Cast(c)` that
    another output reads too."""
    from onnx import TensorProto, helper

    def lowered(c, x, y, out, prefix, swap=False):
        cast_type = TensorProto.FLOAT if "f" in prefix else TensorProto.INT32
        nodes = [
            helper.make_node("Cast", [c], [f"{prefix}_pos"], to=cast_type),
            helper.make_node("Not", [c], [f"{prefix}_not"]),
            helper.make_node("Cast", [f"{prefix}_not"], [f"{prefix}_neg"], to=cast_type),
            helper.make_node("Mul", [x, f"{prefix}_pos"] if swap else [f"{prefix}_pos", x], [f"{prefix}_m1"]),
            helper.make_node("Mul", [y, f"{prefix}_neg"], [f"{prefix}_m2"]),
        ]
        return nodes + [
            helper.make_node(
                "Add", [f"{prefix}_m2", f"{prefix}_m1"] if swap else [f"{prefix}_m1", f"{prefix}_m2"], [out]
            )
        ]

    def value(name, kind):
        return helper.make_tensor_value_info(name, kind, [3])

    branch = helper.make_graph(
        lowered("c", "xf", "yf", "bf", "bf", swap=True), "then", [], [value("bf", TensorProto.FLOAT)]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["yf"], ["of"])], "else", [], [value("of", TensorProto.FLOAT)]
    )
    nodes = lowered("c", "xi", "yi", "wi", "ti") + [
        helper.make_node("ReduceMin", ["xf"], ["flag_value"], keepdims=0),
        helper.make_node("Less", ["flag_value", "zero"], ["flag"]),
        helper.make_node("If", ["flag"], ["wf"], then_branch=branch, else_branch=other),
        helper.make_node("Identity", ["ti_pos"], ["kept"]),
    ]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    inputs = [value("c", TensorProto.BOOL)] + [
        value(n, t)
        for n, t in (
            ("xi", TensorProto.INT32),
            ("yi", TensorProto.INT32),
            ("xf", TensorProto.FLOAT),
            ("yf", TensorProto.FLOAT),
        )
    ]
    outputs = [value("wi", TensorProto.INT32), value("wf", TensorProto.FLOAT), value("kept", TensorProto.INT32)]
    graph = helper.make_graph(nodes, "selects", inputs, outputs, initializer=[zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_lowered_selects_become_where():
    import onnxruntime as ort

    from keras_pixelembed.export._onnx_passes import selects_as_where

    model = _lowered_select_model()
    feed = {
        "c": np.array([True, False, True]),
        "xi": np.array([1, 2, 3], np.int32),
        "yi": np.array([-4, -5, -6], np.int32),
        "xf": np.array([-1.0, np.inf, 3.0], np.float32),  # infinities where the other operand is taken
        "yf": np.array([-np.inf, 8.0, 9.0], np.float32),
    }
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    assert np.isnan(before[1]).tolist() == [True, True, False]  # the lowering: inf * 0
    assert selects_as_where(model.graph) == 2
    assert _lowered_selects(model.graph) == 0
    ops_left = [n.op_type for n in model.graph.node]
    assert ops_left.count("Where") == 1 and "Not" not in ops_left and ops_left.count("Cast") == 1  # the kept Cast
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    np.testing.assert_array_equal(after[0], np.where(feed["c"], feed["xi"], feed["yi"]))
    np.testing.assert_array_equal(after[1], np.where(feed["c"], feed["xf"], feed["yf"]))  # no NaN from inf
    np.testing.assert_array_equal(after[2], before[2])


@THROUGH_TENSORFLOW_ONCE
def test_exports_are_readable_and_leave_no_temporary_file(exported):
    sm, onnx_path, folder = exported
    assert sorted(os.listdir(folder)) == ["m.onnx", "sm"]
    umask = os.umask(0)
    os.umask(umask)
    for path in (onnx_path, os.path.join(sm, "saved_model.pb"), os.path.join(sm, "assets", "pixelembed.json")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model_dir = tiny_model_dir(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def broken(*args, **kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(tf.saved_model, "save", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            export_saved_model(Segmenter.load(model_dir), str(out / "sm"))
    else:  # the TensorFlow subprocess fails: its error is reported, as the TensorFlow side's
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nowhere"))
        monkeypatch.setattr("sys.executable", "/bin/false")
        with pytest.raises(RuntimeError, match="export through TensorFlow failed"):
            export_saved_model(Segmenter.load(model_dir), str(out / "sm"))
    assert os.listdir(out) == []


def test_export_refusals_name_the_problem(tmp_path, segmenter):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(segmenter, str(tmp_path / "missing" / "m.onnx"))
    with pytest.raises(TypeError, match="Segmenter or a keras.Model"):
        export_saved_model("model.keras", str(tmp_path / "sm"))
    assert os.listdir(tmp_path) == []


@THROUGH_TENSORFLOW_ONCE
def test_embedding_head_exports_its_ball_labels(tmp_path):
    import onnxruntime as ort

    from keras_pixelembed.bundled import BUNDLED_DIR

    segmenter = Segmenter.load(f"{BUNDLED_DIR}/embedding_unet")
    session = ort.InferenceSession(export_onnx(segmenter, str(tmp_path / "e.onnx")))
    names = [o.name for o in session.get_outputs()]
    assert {"labels", "output", "dropped_pixels"} <= set(names)
    x = _images(2, 45, 61)
    out = dict(zip(names, session.run(None, {"images": x})))
    want = segmenter.segmentation_model().predict_on_batch(x)
    for got, ref in zip(out["labels"], np.asarray(want["labels"])):
        assert adjusted_rand_index(got, ref) >= 0.99


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the clash is in TensorFlow's function library (other backends export in a fresh process)",
)
def test_onnx_exports_after_other_segmentation_graphs_in_one_process(tmp_path):
    """Freezing the clustering loop re-imports its control-flow functions; a process that traced
    another segmentation graph before still exports (in a fresh TensorFlow process if need be)."""
    import onnxruntime as ort

    image = _images(1, 40, 56)
    for index in range(2):
        segmenter = Segmenter.load(tiny_model_dir(tmp_path / f"tiny{index}", seed=index))
        segmenter.segment(image[0])
        path = export_onnx(segmenter, str(tmp_path / f"m{index}.onnx"))
        labels = ort.InferenceSession(path).run(["labels"], {"images": image})[0]
        assert adjusted_rand_index(labels[0], segmenter.segment(image[0])) == 1.0


@pytest.mark.skipif(
    BACKEND != "torch", reason="the opset travels to the TensorFlow subprocess of other backends (PyTorch's run)"
)
def test_onnx_opset_reaches_the_tensorflow_subprocess(tmp_path):
    import onnx

    segmenter = Segmenter.load(tiny_model_dir(tmp_path / "tiny"))
    path = export_onnx(segmenter, str(tmp_path / "m.onnx"), opset=13)
    assert {o.domain: o.version for o in onnx.load(path).opset_import}[""] == 13


@THROUGH_TENSORFLOW_ONCE
def test_exports_carry_percentile_normalization_and_tta(tmp_path):
    """A run trained with percentiles, exported with test-time augmentation: both exports take
    raw 16-bit-range images and give what `Segmenter` gives; the metadata says so."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    run = tiny_model_dir(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "percentiles": [1.0, 99.8]}))
    segmenter = Segmenter.load(run, tta=True)
    x = 30000.0 + 5000.0 * _images(2, 37, 29)
    sm = export_saved_model(segmenter, str(tmp_path / "sm"))
    onnx_path = export_onnx(segmenter, str(tmp_path / "m.onnx"))
    out = tf.saved_model.load(sm).signatures["serving_default"](images=tf.constant(x))
    _check(segmenter, x, out["labels"].numpy(), out["output"].numpy())
    session = ort.InferenceSession(onnx_path)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": x})))
    _check(segmenter, x, got["labels"], got["output"])
    with open(os.path.join(sm, "assets", "pixelembed.json")) as f:
        meta = json.load(f)
    props = json.loads({p.key: p.value for p in onnx.load(onnx_path).metadata_props}["pixelembed"])
    for m in (meta, props):
        assert m["percentiles"] == [1.0, 99.8] and m["tta"] is True and "percentile-normalized" in m["input"]
