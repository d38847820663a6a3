"""Training on several devices, processes or hosts with the engines users already run.

* `mirrored`: `tf.distribute.MirroredStrategy` over the visible devices (TensorFlow backend).
* `data_parallel`: `keras.distribution.DataParallel` over the JAX devices of one process, or of
  several processes on one or more hosts. The processes are named by `JAX_COORDINATOR_ADDRESS`
  (`host:port` of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (or the command line's
  `--coordinator-address`, `--num-processes`, `--process-id`); on CPU the collectives run over
  gloo. Each process reads its own shard of the training images and its own `--batch-size`; the
  global batch is the sum of the local ones.
* `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy` from `TF_CONFIG`. Keras 3's
  `Model.fit` cannot train under it (keras-team/keras#20585), so it is refused at once, before
  any worker waits for another; `PIXELEMBED_TRY_MULTI_WORKER=1` tries it anyway, under the
  watchdog.

Nothing multi-process waits without a deadline: processes that do not all reach the
coordinator within `PIXELEMBED_INIT_TIMEOUT` seconds end with one line saying so; a dead peer is
noticed by the other processes within `PIXELEMBED_HEARTBEAT_TIMEOUT` seconds; a run in which no
training step finishes for `PIXELEMBED_STEP_TIMEOUT` seconds is ended by the watchdog
(`keras_pixelembed.watchdog`).

The losses are per-image losses reduced over the global batch, so N devices give the result
of one device on the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import keras

from keras_pixelembed.validation import check_choice

CHOICES = ("none", "mirrored", "multi_worker", "data_parallel")
_BACKENDS = {"mirrored": "tensorflow", "multi_worker": "tensorflow", "data_parallel": "jax"}

MULTI_WORKER_REFUSAL = (
    "--distribute multi_worker cannot train: Keras 3 Model.fit fails under "
    "tf.distribute.MultiWorkerMirroredStrategy with 'Attempt to convert a value (PerReplica...)' "
    "(keras-team/keras#20585, open upstream). Use --distribute data_parallel with KERAS_BACKEND=jax "
    "for several processes or hosts, or --distribute mirrored for the devices of one machine "
    "(PIXELEMBED_TRY_MULTI_WORKER=1 tries it anyway, under the watchdog)"
)

# environment variables of the process group: name -> (command line flag, default, meaning)
ENVIRONMENT = {
    "JAX_COORDINATOR_ADDRESS": ("--coordinator-address", None, "host:port of process 0, the same for every process"),
    "JAX_NUM_PROCESSES": ("--num-processes", "1", "number of processes"),
    "JAX_PROCESS_ID": (
        "--process-id",
        None,
        "this process, 0 to JAX_NUM_PROCESSES - 1; 0 writes the run directory",
    ),
    "PIXELEMBED_INIT_TIMEOUT": ("--init-timeout", "300", "seconds for every process to reach the coordinator"),
    "PIXELEMBED_HEARTBEAT_TIMEOUT": ("--heartbeat-timeout", "60", "seconds after which a silent peer counts as dead"),
    "PIXELEMBED_STEP_TIMEOUT": (
        "--step-timeout",
        "900",
        "seconds without a finished training step before the watchdog ends the run",
    ),
}
FLAGS = {name: flag for name, (flag, _, _) in ENVIRONMENT.items()}


class GroupError(RuntimeError):
    """The processes of a run cannot go on together (raised in every process alike)."""


@dataclass(frozen=True)
class ProcessGroup:
    """The processes of a run, as the environment names them (`process_group()`)."""

    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    init_timeout: float = 300.0
    heartbeat_timeout: float = 60.0
    step_timeout: float = 900.0

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    def describe(self) -> str:
        return f"process {self.process_id} of {self.num_processes}"


def _env_number(environ, name: str, kind=float, minimum: float = 0.0, strict: bool = True):
    text = environ.get(name) or ENVIRONMENT[name][1]
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(
            f"Invalid value for {name} ({FLAGS[name]}). Expected {'an integer' if kind is int else 'a number'} "
            f"{bound}. Received: {name}={text!r}"
        )
    return value


def process_group(environ=None) -> ProcessGroup:
    """The `ProcessGroup` named by the environment (`ENVIRONMENT`), checked: every error names
    the variable, its flag and the value received."""
    environ = os.environ if environ is None else environ
    num = _env_number(environ, "JAX_NUM_PROCESSES", int, minimum=1, strict=False)
    address = environ.get("JAX_COORDINATOR_ADDRESS") or None
    timeouts = {
        "init_timeout": _env_number(environ, "PIXELEMBED_INIT_TIMEOUT"),
        "heartbeat_timeout": _env_number(environ, "PIXELEMBED_HEARTBEAT_TIMEOUT"),
        "step_timeout": _env_number(environ, "PIXELEMBED_STEP_TIMEOUT"),
    }
    if num == 1:
        if address:
            raise ValueError(
                f"JAX_COORDINATOR_ADDRESS={address!r} is set but JAX_NUM_PROCESSES is not (or is 1): set "
                "JAX_NUM_PROCESSES (--num-processes) to the number of processes, or unset the address"
            )
        return ProcessGroup(**timeouts)
    if not address:
        raise ValueError(
            f"JAX_NUM_PROCESSES={num} needs JAX_COORDINATOR_ADDRESS (--coordinator-address), the host:port "
            "of process 0, the same for every process"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"Invalid value for JAX_COORDINATOR_ADDRESS (--coordinator-address). Expected host:port with a port "
            f"in 1..65535. Received: JAX_COORDINATOR_ADDRESS={address!r}"
        )
    if environ.get("JAX_PROCESS_ID") in (None, ""):
        raise ValueError(f"JAX_NUM_PROCESSES={num} needs JAX_PROCESS_ID (--process-id), 0 to {num - 1}")
    pid = _env_number(environ, "JAX_PROCESS_ID", int, minimum=0, strict=False)
    if pid >= num:
        raise ValueError(
            f"Invalid value for JAX_PROCESS_ID (--process-id). Expected 0 to {num - 1} "
            f"(JAX_NUM_PROCESSES={num}). Received: JAX_PROCESS_ID={pid}"
        )
    return ProcessGroup(num, pid, address, **timeouts)


def check_distribute(distribute: str, backend: str | None = None) -> str:
    """Raises a ValueError naming the backend and the choices that fit it; a RuntimeError for
    `multi_worker` (see `MULTI_WORKER_REFUSAL`); a ValueError when the environment names several
    processes but `distribute` is not `data_parallel` (each would train alone)."""
    backend = backend or keras.backend.backend()
    check_choice("distribute", distribute, CHOICES)
    needed = _BACKENDS.get(distribute)
    if needed and needed != backend:
        fits = ["none"] + [c for c, b in _BACKENDS.items() if b == backend]
        raise ValueError(
            f"--distribute {distribute} needs the {needed} backend, but KERAS_BACKEND is {backend}. "
            f"Choices on {backend}: {', '.join(fits)}"
        )
    if distribute == "multi_worker" and os.environ.get("PIXELEMBED_TRY_MULTI_WORKER") != "1":
        raise RuntimeError(MULTI_WORKER_REFUSAL)
    group = process_group()
    if group.multi_process and distribute != "data_parallel":
        raise ValueError(
            f"JAX_NUM_PROCESSES={group.num_processes} names several processes, but --distribute is {distribute}: "
            "pass --distribute data_parallel (KERAS_BACKEND=jax), or each process would train alone"
        )
    return distribute


def is_chief() -> bool:
    """Whether this process writes the run directory: the chief of `TF_CONFIG` (or worker 0),
    else process 0 of the JAX process group, or the only process."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task", {})
    if not task:
        return process_group().is_chief
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def connect(group: ProcessGroup) -> None:
    """Joins the JAX process group (`jax.distributed.initialize`, gloo collectives on CPU), or
    ends this process with one line when not every process arrives within `init_timeout`."""
    import jax

    from keras_pixelembed.watchdog import Watchdog

    if not group.multi_process or jax.distributed.is_initialized():
        return
    # the CPU devices talk over gloo (TCP); a GPU's collectives are unaffected by this setting
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    message = (
        f"data_parallel: {group.describe()} did not reach all {group.num_processes} processes through the "
        f"coordinator {group.coordinator_address} within {group.init_timeout:g} s: start every process "
        f"(JAX_PROCESS_ID 0 to {group.num_processes - 1}) with the same JAX_COORDINATOR_ADDRESS and "
        f"JAX_NUM_PROCESSES, and let process 0's host accept that port (PIXELEMBED_INIT_TIMEOUT sets the wait)"
    )
    # JAX aborts with a misleading message after its own timeout; the watchdog speaks first
    with Watchdog(group.init_timeout, message):
        try:
            jax.distributed.initialize(
                coordinator_address=group.coordinator_address,
                num_processes=group.num_processes,
                process_id=group.process_id,
                initialization_timeout=int(group.init_timeout) + 60,
                heartbeat_timeout_seconds=max(1, int(round(group.heartbeat_timeout))),
                shutdown_timeout_seconds=max(1, int(round(group.init_timeout))),
            )
        except RuntimeError as error:
            raise RuntimeError(
                f"data_parallel: could not join the process group ({str(error).splitlines()[0]}); "
                "it must be joined before any JAX computation in this process"
            ) from error
    if jax.process_count() != group.num_processes:
        raise RuntimeError(
            f"data_parallel: JAX sees {jax.process_count()} processes, JAX_NUM_PROCESSES is {group.num_processes}"
        )


def disconnect(group: ProcessGroup) -> None:
    """Leaves the JAX process group (every process at the same point, so nobody waits)."""
    import jax

    if group.multi_process and jax.distributed.is_initialized():
        jax.distributed.shutdown()


def strategy_scope(distribute: str):
    """`(context manager for building and compiling the model, tf strategy or None)`.

    For `data_parallel` this joins the process group (`connect`) and sets the global
    `keras.distribution.DataParallel`; `end_distribution` undoes it after the fit."""
    check_distribute(distribute)
    if distribute == "none":
        return contextlib.nullcontext(), None
    if distribute in ("mirrored", "multi_worker"):
        import tensorflow as tf

        strategy = (
            tf.distribute.MirroredStrategy()
            if distribute == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
        return strategy.scope(), strategy
    group = process_group()
    connect(group)
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    # each process feeds its own shard (`shard_source`); Keras' auto-sharding would make every
    # process read and decode the whole data set and keep one batch in N
    distribution.auto_shard_dataset = False
    keras.distribution.set_distribution(distribution)
    return contextlib.nullcontext(), None


def end_distribution(distribute: str) -> None:
    """After a `data_parallel` fit: back to one device, and out of the process group."""
    if distribute == "data_parallel":
        keras.distribution.set_distribution(None)
        disconnect(process_group())


def shard_source(source, group: ProcessGroup):
    """This process's share of the training images: every `num_processes`-th item from
    `process_id`, so that the shards are disjoint and together hold every image."""
    from keras_pixelembed.data import Subset

    if not group.multi_process:
        return source
    if len(source) < group.num_processes:
        raise ValueError(
            f"the training set has {len(source)} images, fewer than the {group.num_processes} processes "
            "that each read a shard of it"
        )
    return Subset(source, range(group.process_id, len(source), group.num_processes))


def same_everywhere(value: int, what: str) -> None:
    """Raises a `GroupError` in every process when the processes of the group hold different
    values of `what` (an integer); call it at the same point in every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int64))).reshape(-1)
    if np.any(values != values[0]):
        raise GroupError(f"data_parallel: the processes disagree on {what}: {values.tolist()} (process 0 first)")


class GroupGuard(keras.callbacks.Callback):
    """Guards a distributed fit: every finished batch moves `watchdog`'s deadline on, and when
    `check_epoch`, the processes compare the epoch they start from at the first epoch (a restart
    whose processes restored different backups stops at once instead of training apart)."""

    def __init__(self, watchdog, check_epoch: bool = False):
        super().__init__()
        self.watchdog, self.check_epoch = watchdog, check_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.watchdog.kick()
        if self.check_epoch:
            same_everywhere(epoch, "the epoch to resume from (is the run directory on storage every process sees?)")
            self.check_epoch = False

    def on_train_batch_end(self, batch, logs=None):
        self.watchdog.kick()

    def on_test_batch_end(self, batch, logs=None):
        self.watchdog.kick()


def shard_by_data(dataset):
    """Shards a `make_dataset` pipeline by element across TF workers (the sources are indexed and
    cheap to skip, and synthetic sources have no files to shard by)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
