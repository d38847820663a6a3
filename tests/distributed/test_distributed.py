"""Several devices or processes give the one-device result; multi-process runs fail fast, end
by themselves and resume; mixed precision.

Each run is a subprocess (device counts are fixed when a framework starts), on CPU. Every
multi-process test has a hard deadline and kills what it started.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import BACKEND

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _run(mode, policy="float32", env=None, timeout=300, steps=1, losses=None):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "one_step.py"), mode, policy, str(steps)] + ([losses] if losses else []),
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=1)
def _single():
    """The float32 one-device reference step, run once per session (three tests compare with it)."""
    return _run("single")


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
    single, mirrored = _single(), _run("mirrored")
    assert mirrored["replicas"] == 2
    _compare(single, mirrored)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel runs on JAX")
def test_jax_data_parallel_two_devices_equals_one_device():
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    single, parallel = _single(), _run("data_parallel", env=flags)
    assert parallel["devices"] == 2
    _compare(single, parallel)


@pytest.mark.skipif(BACKEND == "torch", reason="one run per backend is enough; torch has no bfloat16 conv on every CPU")
@pytest.mark.parametrize("policy, tol", [("mixed_float16", 2e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_precision_losses_are_finite_and_close_to_float32(policy, tol):
    reference, mixed = _single(), _run("single", policy)
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


def _launch(commands, deadline: float, tmp_path, tag: str):
    """Starts one process per `(argv, env)` and waits until all have ended or `deadline` seconds
    have passed; kills what is left. Returns `[(returncode or None if killed, stdout, stderr)]`
    and the seconds it took."""
    procs, files = [], []
    start = time.time()
    try:
        for index, (argv, env) in enumerate(commands):
            out, err = tmp_path / f"{tag}{index}.out", tmp_path / f"{tag}{index}.err"
            files.append((out, err))
            # files, not pipes: no pipe can fill up; Popen keeps its own copies of the descriptors
            with open(out, "w") as stdout, open(err, "w") as stderr:
                full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **env)
                procs.append(subprocess.Popen(argv, env=full_env, stdout=stdout, stderr=stderr, cwd=ROOT))
        while time.time() - start < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.25)
    finally:
        killed = set()
        for index, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
                killed.add(index)
            p.wait()
    results = [
        (None if index in killed else p.returncode, out.read_text(), err.read_text())
        for index, (p, (out, err)) in enumerate(zip(procs, files))
    ]
    return results, time.time() - start


def _group_env(count: int, port: int, index: int, **extra) -> dict:
    return dict(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
        KERAS_BACKEND="jax",
        **extra,
    )


TRAIN_PROCESS = os.path.join(HERE, "train_process.py")
ONE_STEP = os.path.join(HERE, "one_step.py")
JAX_ONLY = pytest.mark.skipif(BACKEND != "jax", reason="multi-process data_parallel runs on JAX")


@JAX_ONLY
def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    losses = "spatial_embedding,discriminative"
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = _run("data_parallel", env=flags, steps=3, losses=losses)
    port = _free_port()
    results, _ = _launch(
        [([sys.executable, ONE_STEP, "processes", "float32", "3", losses], _group_env(2, port, i)) for i in range(2)],
        240,
        tmp_path,
        "p",
    )
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    two = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    assert one["devices"] == 2 and two[0]["devices"] == 2
    for run in two:
        assert set(losses.split(",")) <= set(run)
        _compare(one, run)


@JAX_ONLY
@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_alone_does_not_train_and_says_why(tmp_path, process_id):
    out = tmp_path / "run"
    env = _group_env(2, _free_port(), process_id, PIXELEMBED_INIT_TIMEOUT="5")
    results, seconds = _launch(
        [([sys.executable, TRAIN_PROCESS, str(out), str(tmp_path / "w.npz")], env)], 90, tmp_path, "a"
    )
    code, _, stderr = results[0]
    assert code is not None, "not ended within 90 s"
    assert code != 0
    assert "did not reach all 2 processes through the coordinator 127.0.0.1:" in stderr
    assert f"process {process_id} of 2" in stderr
    assert not (out / "model.keras").exists() and not (tmp_path / "w.npz").exists()
    assert seconds < 60


def _epochs(run) -> list[int]:
    with open(run / "log.csv") as f:
        return [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]


@JAX_ONLY
def test_kill_one_process_mid_epoch_then_restart_both_resumes(tmp_path):
    run = tmp_path / "run"
    env = {"TEST_EPOCHS": "4", "PIXELEMBED_HEARTBEAT_TIMEOUT": "10"}

    def group(tag, kill=()):
        port = _free_port()
        commands = [
            (
                [sys.executable, TRAIN_PROCESS, str(run), str(tmp_path / f"{tag}{i}.npz")]
                + ([str(k) for k in kill] if i == 1 else []),
                _group_env(2, port, i, **env),
            )
            for i in range(2)
        ]
        return _launch(commands, 240, tmp_path, tag)

    # process 1 dies in epoch 2, after its first batch: process 0 must stop by itself and say why
    results, _ = group("crash", kill=(2, 0))
    (code0, _, err0), (code1, _, _) = results
    assert code1 == -signal.SIGKILL
    assert code0 is not None, "the surviving process did not end by itself within 240 s"
    assert code0 != 0
    assert "training stopped in process 0 of 2" in err0 and "start every process again to resume" in err0
    assert _epochs(run) == [0, 1]
    assert (run / "backup").is_dir() and not (run / "model.keras").exists()

    results, _ = group("resume")
    for code, stdout, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "RESULT" in stdout
    assert _epochs(run) == [0, 1, 2, 3]  # no epoch lost, none repeated
    first, second = np.load(tmp_path / "resume0.npz"), np.load(tmp_path / "resume1.npz")
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])
    assert (run / "model.keras").is_file() and not (run / "backup").exists()


@JAX_ONLY
def test_processes_that_restored_different_epochs_stop(tmp_path):
    """A restart whose processes do not see the same backup (run directory not shared) stops at
    the first epoch instead of training apart."""
    run = tmp_path / "run"
    backup = run / "backup"
    backup.mkdir(parents=True)
    # only process 0 finds a backup: epoch 1 done (weights are not needed for the check)
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    port = _free_port()
    env = {"TEST_EPOCHS": "3", "PIXELEMBED_HEARTBEAT_TIMEOUT": "10"}
    commands = [
        (
            [
                sys.executable,
                TRAIN_PROCESS,
                str(run if i == 0 else tmp_path / "elsewhere"),
                str(tmp_path / f"w{i}.npz"),
            ],
            _group_env(2, port, i, **env),
        )
        for i in range(2)
    ]
    results, _ = _launch(commands, 240, tmp_path, "d")
    for code, _, _ in results:
        assert code is not None and code != 0
    assert any("the processes disagree on the epoch to resume from" in err and "[1, 0]" in err for _, _, err in results)


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


def _two_tf_workers(tmp_path, tag, **env):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "run")
    commands = [
        (
            [sys.executable, "-c", WORKER.format(root=ROOT, out=out)],
            dict(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}), **env),
        )
        for index in range(2)
    ]
    return _launch(commands, 180, tmp_path, tag)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MultiWorkerMirroredStrategy is TensorFlow's")
def test_two_tf_workers_are_refused_at_once(tmp_path):
    results, seconds = _two_tf_workers(tmp_path, "refused")
    for code, _, stderr in results:
        assert code is not None and code != 0
        assert "keras-team/keras#20585" in stderr and "--distribute data_parallel" in stderr
    assert seconds < 120
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MultiWorkerMirroredStrategy is TensorFlow's")
def test_two_tf_workers_tried_anyway_end_by_themselves(tmp_path):
    """PIXELEMBED_TRY_MULTI_WORKER=1: Keras fails inside fit and TensorFlow then waits for its peers
    on the way out, ignoring SIGTERM; the watchdog ends both within the deadline."""
    results, seconds = _two_tf_workers(
        tmp_path,
        "tried",
        PIXELEMBED_TRY_MULTI_WORKER="1",
        PIXELEMBED_STEP_TIMEOUT="30",
        PIXELEMBED_HEARTBEAT_TIMEOUT="10",
    )
    for code, _, _ in results:
        assert code is not None, "a worker did not end within 180 s"
    if all(code == 0 for code, _, _ in results):
        pytest.fail("two TensorFlow workers trained: keras-team/keras#20585 is fixed, lift MULTI_WORKER_REFUSAL")
    assert any("--distribute multi_worker" in stderr for _, _, stderr in results)


@JAX_ONLY
def test_one_process_data_parallel_run_over_two_devices_saves_the_run(tmp_path):
    """One process, two host devices: fit under DataParallel, then tuning, evaluation and saving
    on one device (the model is rebuilt out of the distribution)."""
    run = tmp_path / "run"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "KERAS_BACKEND": "jax", "TEST_EPOCHS": "1"}
    results, _ = _launch(
        [([sys.executable, TRAIN_PROCESS, str(run), str(tmp_path / "w.npz")], env)], 240, tmp_path, "o"
    )
    code, stdout, stderr = results[0]
    assert code == 0, stderr[-3000:]
    assert "RESULT" in stdout
    for name in ("model.keras", "config.json", "thresholds.json", "metrics.json", "log.csv"):
        assert (run / name).is_file(), name
