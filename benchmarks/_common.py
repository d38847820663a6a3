"""Shared helpers of the benchmarks: timing, peak memory, data (gradients: `keras_pixelembed.testing`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np


def backend() -> str:
    import keras

    return keras.backend.backend()


def block(result) -> None:
    """Waits for asynchronous backends (JAX) to finish."""
    for item in result if isinstance(result, tuple) else (result,):
        if hasattr(item, "block_until_ready"):
            item.block_until_ready()
        elif hasattr(item, "numpy") and backend() == "tensorflow":
            item.numpy()


def time_call(step: Callable, x, repeats: int = 5) -> float:
    """Median seconds of `step(x)` after one warm-up call."""
    block(step(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(step(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def voronoi_labels(batch: int, size: int, n_masks: int, seed: int = 0) -> np.ndarray:
    """Label maps of `n_masks` Voronoi cells per image, a tenth of the pixels background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    out = np.zeros((batch, size, size), np.float32)
    for b in range(batch):
        seeds = rng.random((n_masks, 2)) * size
        d = (rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2
        labels = d.argmin(-1) + 1
        labels[rng.random((size, size)) < 0.1] = 0
        out[b] = labels
    return out


def run_worker(script: str, args: list[str]) -> dict:
    """Runs one measurement in a fresh process (so peak memory is its own) and reads its JSON."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_worker(impl: str, loss, labels_np, naive_fn, x, repeats: int, extra=None) -> None:
    """One worker measurement: the vectorized loss (eager or jit) or `naive_fn` (a loop, a reference);
    prints `{"seconds", "peak_mb"}` as JSON for `run_worker`, with the entries of `extra()` (a
    callable returning a dict, called after the measurement) when given."""
    from keras import ops

    labels = ops.convert_to_tensor(labels_np)
    if naive_fn is not None:  # the loop or the reference
        fn = naive_fn
    else:

        def fn(y_pred):
            return ops.mean(loss.call(labels, y_pred))

    from keras_pixelembed.testing import value_and_grad

    step = value_and_grad(fn, jit=impl == "vectorized_jit")
    before = peak_rss_mb()
    seconds = time_call(step, x, repeats=repeats)
    result = {"seconds": seconds, "peak_mb": peak_rss_mb() - before}
    print(json.dumps({**result, **(extra() if extra else {})}))
