"""Slow, obvious numpy references written from the formulas: loops over images and masks.

Everything here is float64 and deliberately unvectorized; the tests compare the fast losses
(values, and gradients through central finite differences of these functions) against it.
"""

from __future__ import annotations

import numpy as np


def activation(z: np.ndarray, name: str | None) -> np.ndarray:
    if name is None:
        return z
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "l2_normalize":
        return z / np.sqrt(np.maximum((z**2).sum(-1, keepdims=True), 1e-12))
    raise ValueError(name)


def image_masks(y_true_image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """One image's non-empty masks (bool (h, w)) and its valid pixels, per the convention."""
    y = np.asarray(y_true_image, dtype=np.float64)
    if y.ndim == 3 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim == 2:
        labels = np.round(y).astype(int)
        valid = labels >= 0
        masks = []
        for k in range(1, labels.max() + 1 if labels.size else 1):
            m = labels == k
            if m.any():
                masks.append(m)
        return masks, valid
    valid = np.ones(y.shape[:2], dtype=bool)
    masks = []
    for j in range(y.shape[-1]):
        m = y[..., j] > 0.5
        if m.any():
            masks.append(m)
    return masks, valid


def norm(v: np.ndarray) -> float:
    return float(np.sqrt(np.sum(v * v)))


def push_pull_centroid(y_true, y_pred, alpha=1.0, act="sigmoid") -> np.ndarray:
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, valid = image_masks(y_true[b])
        if not masks:
            out.append(0.0)
            continue
        la, lr = 0.0, 0.0
        n_omega = valid.sum()
        for m in masks:
            mu = z[m].mean(axis=0)
            la += np.mean([norm(mu - zx) for zx in z[m]])
            outside = valid & ~m
            if outside.sum() > 0:
                lr -= sum(norm(mu - zx) for zx in z[outside]) / (n_omega - m.sum())
        out.append(alpha * la / len(masks) + lr / len(masks))
    return np.array(out)


def push_pull_balls(y_true, y_pred, alpha=1.0, r_attract=0.5, r_repel=1.5, act=None) -> np.ndarray:
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, valid = image_masks(y_true[b])
        if not masks:
            out.append(0.0)
            continue
        la, lr = 0.0, 0.0
        n_omega = valid.sum()
        for m in masks:
            mu = z[m].mean(axis=0)
            la += np.mean([max(norm(mu - zx) - r_attract, 0.0) for zx in z[m]])
            outside = valid & ~m
            if outside.sum() > 0:
                lr += sum(max(r_repel - norm(mu - zx), 0.0) for zx in z[outside]) / (n_omega - m.sum())
        out.append(alpha * la / len(masks) + lr / len(masks))
    return np.array(out)


def discriminative(
    y_true, y_pred, delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001, act=None
) -> np.ndarray:
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, _ = image_masks(y_true[b])
        n = len(masks)
        if n == 0:
            out.append(0.0)
            continue
        mus = [z[m].mean(axis=0) for m in masks]
        l_var = sum(np.mean([max(norm(mu - zx) - delta_v, 0.0) ** 2 for zx in z[m]]) for m, mu in zip(masks, mus)) / n
        l_dist = 0.0
        if n > 1:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        l_dist += max(2 * delta_d - norm(mus[i] - mus[j]), 0.0) ** 2
            l_dist /= n * (n - 1)
        l_reg = sum(norm(mu) for mu in mus) / n
        out.append(alpha * l_var + beta * l_dist + gamma * l_reg)
    return np.array(out)


def numerical_gradient(fn, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of `sum(fn(x))` in float64."""
    x = np.asarray(x, np.float64).copy()
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(fn(x))
        flat[i] = old - eps
        down = np.sum(fn(x))
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def metric_learning_dense(y_true, y_pred, act=None) -> np.ndarray:
    """Fathi et al.: S = every pixel of every mask (once per mask holding it)."""
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, _ = image_masks(y_true[b])
        samples = [(i, j) for m in masks for i, j in zip(*np.nonzero(m))]
        if not samples:
            out.append(0.0)
            continue
        total = 0.0
        for x1 in samples:
            for x2 in samples:
                d2 = float(np.sum((z[x1] - z[x2]) ** 2))
                for m in masks:
                    if not m[x1]:
                        continue
                    if m[x2]:
                        total += (np.log(2.0) - np.logaddexp(0.0, d2)) / m.sum()
                    else:
                        total += np.log(np.tanh(d2 / 2.0)) / m.sum()
        out.append(-total / len(samples))
    return np.array(out)
