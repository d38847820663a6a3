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


def image_masks(y_true_image: np.ndarray, dims: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """One image's non-empty masks (bool (h, w); volumes, `dims=3`: (d, h, w)) and its valid
    pixels, per the convention."""
    y = np.asarray(y_true_image, dtype=np.float64)
    if y.ndim == dims + 1 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim == dims:
        labels = np.round(y).astype(int)
        valid = labels >= 0
        masks = []
        for k in range(1, labels.max() + 1 if labels.size else 1):
            m = labels == k
            if m.any():
                masks.append(m)
        return masks, valid
    valid = ~np.any(y < 0, axis=-1)
    masks = []
    for j in range(y.shape[-1]):
        m = (y[..., j] > 0.5) & valid
        if m.any():
            masks.append(m)
    return masks, valid


def norm(v: np.ndarray) -> float:
    return float(np.sqrt(np.sum(v * v)))


def _push_pull(y_true, y_pred, attract, repel, alpha, act) -> np.ndarray:
    """(alpha/M) sum_m mean_{x in m} attract(d) + (1/M) sum_m mean_{x in Omega \\ m} repel(d),
    d = ||mu_m - z_x||, one image and one mask at a time."""
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, valid = image_masks(y_true[b], np.ndim(y_pred) - 2)
        if not masks:
            out.append(0.0)
            continue
        la, lr = 0.0, 0.0
        n_omega = valid.sum()
        for m in masks:
            mu = z[m].mean(axis=0)
            la += np.mean([attract(norm(mu - zx)) for zx in z[m]])
            outside = valid & ~m
            if outside.sum() > 0:
                lr += sum(repel(norm(mu - zx)) for zx in z[outside]) / (n_omega - m.sum())
        out.append(alpha * la / len(masks) + lr / len(masks))
    return np.array(out)


def push_pull_centroid(y_true, y_pred, alpha=1.0, act="sigmoid") -> np.ndarray:
    return _push_pull(y_true, y_pred, lambda d: d, lambda d: -d, alpha, act)


def push_pull_balls(y_true, y_pred, alpha=1.0, r_attract=0.5, r_repel=1.5, act=None) -> np.ndarray:
    return _push_pull(y_true, y_pred, lambda d: max(d - r_attract, 0.0), lambda d: max(r_repel - d, 0.0), alpha, act)


def discriminative(y_true, y_pred, delta_v=0.5, delta_d=1.5, alpha=1.0, beta=1.0, gamma=0.001, act=None) -> np.ndarray:
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, _ = image_masks(y_true[b], np.ndim(y_pred) - 2)
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
    """Fathi et al.: S = the set of pixels that lie in at least one mask (each pixel once)."""
    out = []
    for b in range(len(y_pred)):
        z = activation(np.asarray(y_pred[b], np.float64), act)
        masks, _ = image_masks(y_true[b], np.ndim(y_pred) - 2)
        samples = sorted({(int(i), int(j)) for m in masks for i, j in zip(*np.nonzero(m))})
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


def bilinear_sample(values, offsets) -> np.ndarray:
    """Each pixel (voxel) of `values (batch, *spatial, c)` sampled at its position plus `offsets`."""
    out = np.zeros(values.shape, np.float64)
    for b in range(values.shape[0]):
        for at in np.ndindex(*values.shape[1:-1]):
            out[b][at] = _linear_voxel(values[b], [i + o for i, o in zip(at, offsets[b][at])])
    return out


def ohem(ce: list, p: list, threshold: float, min_kept: float) -> float:
    if not ce:
        return 0.0
    k = int(np.ceil(min_kept * len(p)))
    kth = sorted(p)[k - 1] if k > 0 else -np.inf
    kept = [c for c, q in zip(ce, p) if q < threshold or q <= kth]
    return float(np.mean(kept)) if kept else 0.0


def _linear_voxel(values, position):
    """`values (*spatial, c)` at a real `position` (one coordinate per axis), clamped, by
    linear interpolation: the sum over the 2^dims corners of the product of their weights."""
    sizes = values.shape[:-1]
    low, frac = [], []
    for p, n in zip(position, sizes):
        p = min(max(p, 0.0), n - 1.0)
        low.append(int(np.floor(p)))
        frac.append(p - np.floor(p))
    out = np.zeros(values.shape[-1], np.float64)
    for corner in np.ndindex(*([2] * len(sizes))):
        weight = np.prod([f if up else 1 - f for f, up in zip(frac, corner)])
        at = tuple(min(lo + up, n - 1) for lo, up, n in zip(low, corner, sizes))
        out = out + weight * values[at]
    return out


def offset_uncertainty(
    y_true, y_pred, num_classes, max_offset=0.5, kappa=0.5, lam=0.5, ohem_threshold=0.7, min_kept=0.2, ignore_index=-1
) -> np.ndarray:
    """Per image (or volume), a loop over its pixels (voxels)."""
    y_pred = np.asarray(y_pred, np.float64)
    out = []
    for b in range(len(y_pred)):
        labels = np.round(np.asarray(y_true[b], np.float64)).astype(int)
        sizes = labels.shape
        dims = len(sizes)
        logits = y_pred[b, ..., :num_classes]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        y_i = e / e.sum(-1, keepdims=True)
        terms = {"f": ([], []), "s": ([], []), "i": ([], [])}
        bce = []
        for at in np.ndindex(*sizes):
            if labels[at] == ignore_index:
                continue
            k = labels[at]
            moves = [max_offset * np.tanh(y_pred[b][at][num_classes + a]) * sizes[a] for a in range(dims)]
            u = 1 / (1 + np.exp(-y_pred[b][at][num_classes + dims]))
            s = _linear_voxel(y_i, [i + m for i, m in zip(at, moves)])
            f = (1 - u) * y_i[at] + u * s
            for key, probs in (("f", f), ("s", s), ("i", y_i[at])):
                terms[key][0].append(-np.log(max(probs[k], 1e-7)))
                terms[key][1].append(probs[k])
            target = tuple(int(np.round(i + m)) for i, m in zip(at, moves))
            if all(0 <= t < n for t, n in zip(target, sizes)):
                if labels[target] == ignore_index:
                    continue
                t = float(labels[target] == k)
            else:
                t = 0.0
            bce.append(-(t * np.log(u) + (1 - t) * np.log(1 - u)))
        sem = (
            ohem(*terms["f"], ohem_threshold, min_kept)
            + kappa * ohem(*terms["s"], ohem_threshold, min_kept)
            + lam * ohem(*terms["i"], ohem_threshold, min_kept)
        )
        out.append(sem + (np.mean(bce) if bce else 0.0))
    return np.array(out)


def lovasz_hinge_flat(logits: np.ndarray, labels: np.ndarray) -> float:
    """Berman et al.'s Lovasz hinge of one vector of logits against 0/1 labels, by loops."""
    logits = np.asarray(logits, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    if logits.size == 0:
        return 0.0
    errors = [1.0 - logits[i] * (2.0 * labels[i] - 1.0) for i in range(logits.size)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total = labels.sum()
    value, previous, cum_in, cum_out = 0.0, 0.0, 0.0, 0.0
    for i in order:
        cum_in += labels[i]
        cum_out += 1.0 - labels[i]
        jaccard = 1.0 - (total - cum_in) / (total + cum_out)
        value += max(errors[i], 0.0) * (jaccard - previous)
        previous = jaccard
    return value


def lovasz_hinge_images(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: the mean over channels of the Lovasz hinge over the valid (label >= 0) pixels."""
    out = []
    for b in range(logits.shape[0]):
        values = []
        for k in range(logits.shape[-1]):
            keep = labels[b, ..., k] >= 0
            values.append(lovasz_hinge_flat(logits[b, ..., k][keep], labels[b, ..., k][keep] > 0.5))
        out.append(np.mean(values))
    return np.array(out)


def spatial_embedding(
    y_true,
    y_pred,
    n_sigma=1,
    pixel_size=1.0 / 1024,
    sigma_scale=10.0,
    w_inst=1.0,
    w_var=10.0,
    w_seed=1.0,
    foreground_weight=10.0,
    to_center=False,
    frozen=None,
    z_spacing=1.0,
) -> np.ndarray:
    """Neven et al.'s loss by loops over images (or volumes), masks and pixels.

    The stop-gradient quantities (s_m in L_var, phi in L_seed) are computed from `frozen`
    (default: `y_pred` itself), so that finite differences at `frozen` give the gradient the
    loss defines. Volumes `(batch, d, h, w, 3 + n_sigma + 1)` have positions
    `(z * z_spacing, row, col) * pixel_size`.
    """
    y_pred = np.asarray(y_pred, np.float64)
    frozen = y_pred if frozen is None else np.asarray(frozen, np.float64)
    dims = y_pred.ndim - 2
    spatial = y_pred.shape[1 : 1 + dims]
    steps = [pixel_size * z_spacing, pixel_size, pixel_size] if dims == 3 else [pixel_size, pixel_size]

    def parts(pred):
        position = np.zeros((*spatial, dims))
        for at in np.ndindex(*spatial):
            for a in range(dims):
                position[at + (a,)] = at[a] * steps[a]
        emb = np.tanh(pred[..., :dims]) + position
        sigma = pred[..., dims : dims + n_sigma]
        seed = 1.0 / (1.0 + np.exp(-pred[..., dims + n_sigma]))
        return position, emb, sigma, seed

    def phi_and_s(pred, mask, valid):
        position, emb, sigma, _ = parts(pred)
        center = (position if to_center else emb)[mask].mean(0)
        s = sigma[mask].mean(0)
        scale = np.exp(sigma_scale * s)
        if n_sigma == 1:
            scale = np.repeat(scale, dims)
        phi = np.zeros(spatial)
        for at in np.ndindex(*spatial):
            if valid[at]:
                phi[at] = np.exp(-np.sum(scale * (emb[at] - center) ** 2))
        return phi, s

    out = []
    for b in range(len(y_pred)):
        masks, valid = image_masks(y_true[b], dims)
        _, _, sigma, seed = parts(y_pred[b])
        l_inst, l_var, fg = 0.0, 0.0, 0.0
        for m in masks:
            phi, _ = phi_and_s(y_pred[b], m, valid)
            phi_sg, s_sg = phi_and_s(frozen[b], m, valid)
            l_inst += lovasz_hinge_flat(2 * phi[valid] - 1, m[valid])
            l_var += np.mean((sigma[m] - s_sg) ** 2)
            fg += np.sum((seed[m] - phi_sg[m]) ** 2)
        in_any = np.zeros(spatial, bool)
        for m in masks:
            in_any |= m
        bg = np.sum(seed[valid & ~in_any] ** 2)
        n_masks = max(len(masks), 1)
        n_valid = valid.sum()
        l_seed = (foreground_weight * fg + bg) / n_valid if n_valid else 0.0
        out.append(w_inst * l_inst / n_masks + w_var * l_var / n_masks + w_seed * l_seed)
    return np.array(out)
