"""Pictures: embeddings as RGB, segment boundaries on images, side-by-side panels, curves.

matplotlib is only needed for `panel`, `plot_training_log` and `plot_curves` (the `viz` extra).
"""

from __future__ import annotations

import csv

import numpy as np

from keras_pixelembed.validation import require


def _pyplot():
    """matplotlib's pyplot on the non-interactive backend (pictures are written to files)."""
    matplotlib = require("matplotlib", "keras_pixelembed.viz")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, path):
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def embedding_to_rgb(embeddings) -> np.ndarray:
    """`(h, w, c)` -> `(h, w, 3)` float in [0, 1]: the first three principal components,
    each stretched to [0, 1] (robustly, 1st to 99th percentile)."""
    z = np.asarray(embeddings, np.float64)
    if z.ndim != 3:
        raise ValueError(f"Expected `embeddings` of shape (h, w, c). Received: {z.shape}")
    h, w, c = z.shape
    flat = z.reshape(-1, c) - z.reshape(-1, c).mean(0)
    if c > 3:
        sample = flat[:: max(1, flat.shape[0] // 20000)]
        _, _, vt = np.linalg.svd(sample, full_matrices=False)
        flat = flat @ vt[:3].T
    elif c < 3:
        flat = np.concatenate([flat, np.zeros((flat.shape[0], 3 - c))], -1)
    lo, hi = np.percentile(flat, 1, axis=0), np.percentile(flat, 99, axis=0)
    out = (flat - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.clip(out, 0, 1).reshape(h, w, 3).astype(np.float32)


def label_to_rgb(labels, seed: int = 0) -> np.ndarray:
    """A random color per label (0 stays black, negatives gray)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.2, 1.0, (ids.size, 3))
    out = palette[np.searchsorted(ids, labels)]
    out[labels == 0] = 0
    out[labels < 0] = 0.5
    return out.astype(np.float32)


def overlay_segments(image, labels, color=(1.0, 1.0, 0.0), background: int | None = None) -> np.ndarray:
    """The image with the segment boundaries drawn in `color`: `(h, w, 3)` float in [0, 1].

    With `background` (the label of unassigned pixels, 0 for spatial heads), those pixels are
    dimmed to a third of their brightness, so what no segment covers is visible at a glance.
    """
    from keras_pixelembed.metrics.segmentation import _boundaries

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"`labels` {labels.shape} and `image` {image.shape[:2]} differ in size")
    out = image[..., :3].copy()
    if background is not None:
        out[labels == background] *= 1.0 / 3.0
    out[_boundaries(labels)] = color
    return out


def panel(image, embeddings, ours, slic, path: str | None = None, titles=("image", "embedding", "ours", "SLIC")):
    """image | embedding as RGB | our segments | SLIC, as one figure (saved when `path`)."""
    plt = _pyplot()

    pictures = [
        np.asarray(image),
        embedding_to_rgb(embeddings),
        overlay_segments(image, ours),
        overlay_segments(image, slic),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    for ax, pic, title in zip(axes, pictures, titles):
        ax.imshow(np.clip(pic, 0, 1))
        ax.set_title(title)
        ax.axis("off")
    return _finish(plt, fig, path)


def plot_training_log(csv_path: str, path: str | None = None):
    """Loss (and validation loss) per epoch from a `CSVLogger` file."""
    plt = _pyplot()

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} holds no epochs")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [int(r["epoch"]) for r in rows]
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            ax.plot(epochs, [float(r[key]) for r in rows], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return _finish(plt, fig, path)


def plot_curves(curves: dict, path: str | None = None):
    """ASA, UE and boundary recall against the number of segments (`evaluation.superpixel_curves`)."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, title in zip(
        axes, ("asa", "ue", "br"), ("ASA (higher is better)", "UE (lower is better)", "boundary recall")
    ):
        for name in ("embedding_slic", "slic"):
            ax.plot(curves[name]["segments"], curves[name][key], marker="o", label=name)
        ax.set_xlabel("segments")
        ax.set_title(title)
        ax.legend()
    return _finish(plt, fig, path)
