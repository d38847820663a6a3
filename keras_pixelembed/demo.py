"""`pixelembed demo`: train a tiny embedding network on a synthetic batch and show the loss fall.

The images hold objects made of two parts of unrelated colors on a textured background: the
case where color-only grouping (SLIC) splits objects and a learned embedding need not.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_pixelembed.losses import DiscriminativeLoss

def toy_batch(batch: int = 8, size: int = 48, n_objects: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images `(batch, size, size, 3)` in [0, 1] and label maps `(batch, size, size)` int32.

    Each object is a rectangle whose left and right halves have unrelated random colors.
    """
    rng = np.random.default_rng(seed)
    images = (0.4 + 0.2 * rng.random((batch, size, size, 3))).astype(np.float32)
    labels = np.zeros((batch, size, size), np.int32)
    for b in range(batch):
        for k in range(1, n_objects + 1):
            h, w = rng.integers(size // 5, size // 2, size=2)
            r, c = rng.integers(0, size - h), rng.integers(0, size - w)
            labels[b, r : r + h, c : c + w] = k
            images[b, r : r + h, c : c + w // 2] = rng.random(3)
            images[b, r : r + h, c + w // 2 : c + w] = rng.random(3)
    images += rng.normal(0, 0.02, images.shape).astype(np.float32)
    return np.clip(images, 0, 1), labels


def tiny_embedder(embedding_dim: int = 8, width: int = 16) -> keras.Model:
    """A small fully convolutional network with a dilated context, input `(None, None, 3)`."""
    inputs = keras.Input((None, None, 3))
    x = inputs
    for rate in (1, 2, 4, 8, 1):
        x = keras.layers.Conv2D(width, 3, padding="same", dilation_rate=rate, activation="relu")(x)
    outputs = keras.layers.Conv2D(embedding_dim, 1)(x)
    return keras.Model(inputs, outputs, name="tiny_embedder")


def run_demo(steps: int = 60, seed: int = 0, report_every: int = 10) -> list[float]:
    """Trains for `steps` steps on one fixed batch and returns the loss of each step."""
    keras.utils.set_random_seed(seed)
    images, labels = toy_batch(seed=seed)
    model = tiny_embedder()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=DiscriminativeLoss(delta_v=0.5, delta_d=1.5))
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        logs = model.train_on_batch(images, labels, return_dict=True)
        losses.append(float(logs["loss"]))
        if step == 1 or step % report_every == 0:
            print(f"step {step:4d}  DiscriminativeLoss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f} s)")
    return losses
