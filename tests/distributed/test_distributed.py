"""Several devices give the one-device result; multi-worker training runs; mixed precision.

Each run is a subprocess (device counts are fixed when a framework starts), on CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import BACKEND

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _run(mode, policy="float32", env=None, timeout=300):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "one_step.py"), mode, policy],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare(a, b, atol=1e-5):
    for name in a:
        if name in ("devices", "replicas"):
            continue
        assert np.isclose(a[name]["loss"], b[name]["loss"], atol=atol, rtol=1e-5), (
            name,
            a[name]["loss"],
            b[name]["loss"],
        )
        for wa, wb in zip(a[name]["weights"], b[name]["weights"]):
            np.testing.assert_allclose(np.array(wa), np.array(wb), atol=atol, err_msg=name)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MirroredStrategy is TensorFlow's")
def test_mirrored_two_cpus_equals_one_device():
    single, mirrored = _run("single"), _run("mirrored")
    assert mirrored["replicas"] == 2
    _compare(single, mirrored)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel runs on JAX")
def test_jax_data_parallel_two_devices_equals_one_device():
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    single, parallel = _run("single"), _run("data_parallel", env=flags)
    assert parallel["devices"] == 2
    _compare(single, parallel)


@pytest.mark.skipif(BACKEND == "torch", reason="one run per backend is enough; torch has no bfloat16 conv on every CPU")
@pytest.mark.parametrize("policy, tol", [("mixed_float16", 2e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_precision_losses_are_finite_and_close_to_float32(policy, tol):
    reference, mixed = _run("single"), _run("single", policy)
    for name in reference:
        if name in ("devices", "replicas"):
            continue
        assert np.isfinite(mixed[name]["loss"]), name
        assert abs(mixed[name]["loss"] - reference[name]["loss"]) <= tol * max(1.0, abs(reference[name]["loss"])), name


def test_distribute_flag_that_does_not_fit_the_backend():
    from keras_pixelembed.distribute import check_distribute

    wrong = "data_parallel" if BACKEND != "jax" else "mirrored"
    with pytest.raises(
        ValueError, match=rf"needs the .* backend, but KERAS_BACKEND is {BACKEND}.*Choices on {BACKEND}"
    ):
        check_distribute(wrong)
    with pytest.raises(ValueError, match="Expected one of"):
        check_distribute("horovod")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = r"""
import json, os, sys
sys.path.insert(0, {root!r})
from keras_pixelembed import data
from keras_pixelembed.training import TrainConfig, train
config = TrainConfig(out_dir={out!r}, epochs=2, steps_per_epoch=2, image_size=(32, 32), width=4, depth=2,
                     batch_size=4, validation_images=2, test_images=2, export=False, tensorboard=False,
                     distribute="multi_worker", jit_compile=False)
result = train(config, data.synthetic(8, (32, 32), seed=0), data.synthetic(2, (32, 32), seed=1),
               data.synthetic(2, (32, 32), seed=2), verbose=0)
print("RESULT " + json.dumps({{"loss": result["final_loss"]}}))
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MultiWorkerMirroredStrategy is TensorFlow's")
@pytest.mark.xfail(
    strict=True,
    reason=(
        "Keras 3 (3.15.1, TF 2.21) Model.fit under MultiWorkerMirroredStrategy fails with 'Attempt to convert a "
        "value (PerReplica...)' (keras-team/keras#20585, open). Strict: this test fails loudly once upstream works."
    ),
)
def test_two_workers_on_localhost(tmp_path):
    import keras

    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "run")
    procs = []
    try:
        for index in range(2):
            env = dict(
                os.environ,
                TF_CPP_MIN_LOG_LEVEL="3",
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            )
            # files, not pipes: no pipe can fill up; Popen keeps its own copies of the descriptors
            with open(tmp_path / f"w{index}.out", "w") as stdout, open(tmp_path / f"w{index}.err", "w") as stderr:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", WORKER.format(root=ROOT, out=out)],
                        env=env,
                        stdout=stdout,
                        stderr=stderr,
                        text=True,
                        cwd=ROOT,
                    )
                )
        deadline = time.time() + 90
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one worker failed: the other would wait for it until the deadline
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = []
    for index, p in enumerate(procs):
        p.wait()
        stdout, stderr = (tmp_path / f"w{index}.out").read_text(), (tmp_path / f"w{index}.err").read_text()
        assert p.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.split("RESULT ", 1)[1].splitlines()[0]))
    assert np.isclose(outputs[0]["loss"], outputs[1]["loss"], rtol=1e-5)
    model = keras.saving.load_model(os.path.join(out, "checkpoint.keras"), safe_mode=True)
    assert model.output_shape[-1] == 4
    assert os.path.isfile(os.path.join(out, "model.keras"))
