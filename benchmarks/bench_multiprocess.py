"""Images per second of `fit` in one process and in two processes (`--distribute data_parallel`
across processes, JAX, gloo collectives on CPU), side by side in one run.

    KERAS_BACKEND=jax python benchmarks/bench_multiprocess.py [--steps 20] [--batch-size 8] [--image-size 128]

Rows: one process with the whole batch; two processes of one CPU device each, each with half the
batch (the same global batch, so the same training); two processes with the whole batch each
(twice the global batch). The model is the default U-Net with the spatial-embedding loss, fed by
the synthetic pipeline, compiled (jit). Images/s counts the global batch of the timed steps
(after two warm-up steps). On a machine whose cores the processes share, the two-process rows
measure what the collectives and the sharing cost, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 2


def _process(steps: int, local_batch: int, size: int) -> None:
    """One process of a measured run (the process group comes from the environment)."""
    sys.path.insert(0, ROOT)
    from keras_pixelembed import data
    from keras_pixelembed.distribute import end_distribution, process_group, shard_source, strategy_scope
    from keras_pixelembed.training import TrainConfig, make_loss, make_model

    group = process_group()
    distribute = "data_parallel" if group.multi_process else "none"
    strategy_scope(distribute)
    import keras

    config = TrainConfig(image_size=(size, size), batch_size=local_batch)
    keras.utils.set_random_seed(0)
    source = shard_source(data.synthetic(400, (size, size), seed=0), group)
    dataset = data.make_dataset(
        source,
        batch_size=local_batch,
        image_size=(size, size),
        max_instances=config.max_instances,
        shuffle=True,
        repeat=True,
        augment=True,
        seed=0,
        on_overflow="drop_smallest",
    )
    model = make_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(config), jit_compile=True)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    model.fit(dataset, epochs=1, steps_per_epoch=WARMUP + steps, callbacks=[Clock()], verbose=0)
    seconds = times[-1] - times[WARMUP - 1]
    end_distribution(distribute)
    print("RESULT " + json.dumps({"seconds": seconds, "process": group.process_id}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(processes: int, local_batch: int, args, deadline: float = 1800) -> float:
    """Global images/s of `processes` processes, each fitting `local_batch` images a step."""
    port = _free_port()
    procs = []
    for index in range(processes):
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
        if processes > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index)
            )
        command = [sys.executable, __file__, "--process", "--steps", str(args.steps), "--batch-size", str(local_batch)]
        command += ["--image-size", str(args.image_size)]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    try:
        outputs = [p.communicate(timeout=deadline)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    seconds = []
    for p, out in zip(procs, outputs):
        if p.returncode != 0 or "RESULT " not in out:
            raise RuntimeError(f"a measured process failed (exit {p.returncode})")
        seconds.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0])["seconds"])
    return processes * local_batch * args.steps / max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after 2 warm-up steps")
    parser.add_argument("--batch-size", type=int, default=8, help="the one-process batch")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process:
        _process(args.steps, args.batch_size, args.image_size)
        return
    b = args.batch_size
    rows = [
        ("1 process, 1 device", 1, b),
        ("2 processes x 1 device, same global batch", 2, b // 2),
        ("2 processes x 1 device, twice the global batch", 2, b),
    ]
    print(f"fit images/s, default U-Net + SpatialEmbeddingLoss, {args.image_size}^2, jit, {os.cpu_count()} CPU cores")
    print("| run | global batch | images/s |")
    print("|---|---|---|")
    for name, processes, local in rows:
        print(f"| {name} | {processes * local} | {_measure(processes, local, args):.1f} |", flush=True)


if __name__ == "__main__":
    main()
