"""The process group named by the environment, the flags that set it, the refusals, the shards,
and the watchdog that ends a process making no progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from keras_pixelembed import data
from keras_pixelembed.cli import main
from keras_pixelembed.distribute import FLAGS, check_distribute, process_group, shard_source
from tests.helpers import BACKEND, TINY_SYNTHETIC_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUP = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}


@pytest.fixture(autouse=True)
def no_group(monkeypatch):
    """No process group around the tests, and none left behind by the flags they pass."""
    for variable in FLAGS:
        monkeypatch.setenv(variable, "")  # recorded, so teardown restores the variable as it was
        monkeypatch.delenv(variable)


def test_process_group_defaults_and_a_valid_group():
    alone = process_group({})
    assert (alone.num_processes, alone.process_id, alone.multi_process, alone.is_chief) == (1, 0, False, True)
    assert (alone.init_timeout, alone.heartbeat_timeout, alone.step_timeout) == (300, 60, 900)
    group = process_group(dict(GROUP, PIXELEMBED_INIT_TIMEOUT="7.5"))
    assert (group.num_processes, group.process_id, group.coordinator_address) == (2, 1, "10.0.0.1:1234")
    assert group.multi_process and not group.is_chief and group.init_timeout == 7.5
    assert group.describe() == "process 1 of 2"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"JAX_NUM_PROCESSES": "two"}, r"JAX_NUM_PROCESSES \(--num-processes\).*Received: JAX_NUM_PROCESSES='two'"),
        ({"JAX_NUM_PROCESSES": "0"}, r"JAX_NUM_PROCESSES.*>= 1"),
        (
            {"JAX_COORDINATOR_ADDRESS": ""},
            r"JAX_NUM_PROCESSES=2 needs JAX_COORDINATOR_ADDRESS \(--coordinator-address\)",
        ),
        ({"JAX_COORDINATOR_ADDRESS": "host"}, r"Expected host:port.*Received: JAX_COORDINATOR_ADDRESS='host'"),
        ({"JAX_COORDINATOR_ADDRESS": "host:99999"}, r"port in 1..65535"),
        ({"JAX_PROCESS_ID": ""}, r"needs JAX_PROCESS_ID \(--process-id\), 0 to 1"),
        ({"JAX_PROCESS_ID": "2"}, r"Expected 0 to 1 \(JAX_NUM_PROCESSES=2\). Received: JAX_PROCESS_ID=2"),
        ({"JAX_PROCESS_ID": "-1"}, r"JAX_PROCESS_ID.*Received: JAX_PROCESS_ID='-1'"),
        ({"JAX_NUM_PROCESSES": "1"}, r"JAX_COORDINATOR_ADDRESS='10.0.0.1:1234' is set but JAX_NUM_PROCESSES is not"),
        ({"PIXELEMBED_STEP_TIMEOUT": "0"}, r"PIXELEMBED_STEP_TIMEOUT \(--step-timeout\).*> 0"),
        ({"PIXELEMBED_INIT_TIMEOUT": "soon"}, r"PIXELEMBED_INIT_TIMEOUT.*'soon'"),
    ],
)
def test_process_group_errors_name_the_variable_and_its_flag(change, match):
    with pytest.raises(ValueError, match=match):
        process_group(dict(GROUP, **change))


def test_several_processes_need_data_parallel(monkeypatch):
    for variable, value in GROUP.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES=2 names several processes, but --distribute is none"):
        check_distribute("none")


def test_multi_worker_is_refused_naming_the_upstream_issue(monkeypatch):
    with pytest.raises(RuntimeError, match=r"keras-team/keras#20585.*--distribute data_parallel"):
        check_distribute("multi_worker", backend="tensorflow")
    monkeypatch.setenv("PIXELEMBED_TRY_MULTI_WORKER", "1")
    assert check_distribute("multi_worker", backend="tensorflow") == "multi_worker"


def test_shards_are_disjoint_and_hold_every_image():
    source = data.synthetic(7, (16, 16), seed=0)
    shards = [
        shard_source(source, process_group(dict(GROUP, JAX_NUM_PROCESSES="3", JAX_PROCESS_ID=str(i)))) for i in range(3)
    ]
    names = [[shard.name(i) for i in range(len(shard))] for shard in shards]
    assert [len(n) for n in names] == [3, 2, 2]
    assert sorted(sum(names, [])) == sorted(source.name(i) for i in range(7))
    assert shard_source(source, process_group({})) is source
    with pytest.raises(ValueError, match="the training set has 1 images, fewer than the 2 processes"):
        shard_source(data.synthetic(1, (16, 16)), process_group(GROUP))


def test_train_flags_set_the_group_and_bad_ones_stop_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "synthetic", "--train-images", "4", "--out-dir", str(out), *TINY_SYNTHETIC_FLAGS]
    assert main([*argv, "--num-processes", "2", "--process-id", "0", "--distribute", "none"]) == 2
    assert "needs JAX_COORDINATOR_ADDRESS (--coordinator-address)" in capsys.readouterr().err
    assert os.environ["JAX_NUM_PROCESSES"] == "2"
    assert main([*argv, "--coordinator-address", "127.0.0.1:1", "--step-timeout", "-3"]) == 2
    assert "PIXELEMBED_STEP_TIMEOUT (--step-timeout)" in capsys.readouterr().err
    assert not out.exists()


CHILD = r"""
import signal, sys, time
sys.path.insert(0, {root!r})
from keras_pixelembed.watchdog import Watchdog
watchdog = Watchdog(2, "no progress for 2 s")
for _ in range(3):
    time.sleep(1)
    watchdog.kick()
print("kicked", flush=True)
if sys.argv[1] == "close":
    watchdog.close()
    time.sleep(3)
    print("closed", flush=True)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stuck runtime that ignores SIGTERM
    time.sleep(60)
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the watchdog does not depend on the backend: one run is enough")
@pytest.mark.parametrize("mode", ["close", "hang"])
def test_watchdog_ends_a_process_without_progress_and_only_then(mode):
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=ROOT), mode], capture_output=True, text=True, timeout=120
    )
    assert "kicked" in out.stdout  # kicks kept it alive past its 2 s
    if mode == "close":
        assert out.returncode == 0 and "closed" in out.stdout
        assert "no progress" not in out.stderr
    else:
        assert out.returncode == -9  # SIGTERM ignored, then SIGKILL
        assert "pixelembed: error: no progress for 2 s" in out.stderr
        assert time.time() - start < 60
