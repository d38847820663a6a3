"""The fused distance sums of the push-pull repulsion (`distance_sums`, a custom gradient)
against plain automatic differentiation of the same formula, eager and compiled."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from keras_pixelembed.ops.instance_stats import distance_sums
from keras_pixelembed.testing import value_and_grad
from tests.helpers import BACKEND

FUNCTIONS = {  # name: (fn, derivative)
    "identity": (None, None),
    "hinge": (lambda d: ops.relu(0.8 - d), lambda d: -ops.cast(d < 0.8, d.dtype)),
}


def _inputs(rng):
    z = rng.normal(size=(2, 30, 3)).astype(np.float32)
    mu = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mu[0, 1] = z[0, 7]  # a pixel exactly at a centroid: distance 0, zero gradient there
    weights = (rng.random((2, 4, 30)) < 0.7).astype(np.float32)
    upstream = rng.normal(size=(2, 4)).astype(np.float32)
    return z, mu, weights, upstream


def _plain(z, mu, weights, fn):  # the formula, differentiated by the backend
    d2 = ops.sum(ops.square(ops.expand_dims(z, 1) - ops.expand_dims(mu, 2)), axis=-1)
    d = ops.sqrt(ops.maximum(d2, 1e-12))
    return ops.sum(weights * (d if fn is None else fn(d)), axis=-1)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("jit", [False, True])
def test_fused_sums_and_gradients_equal_plain_autodiff(name, jit):
    if jit and BACKEND == "torch":
        pytest.skip("jit: TensorFlow and JAX")
    fn, derivative = FUNCTIONS[name]
    z, mu, weights, upstream = _inputs(np.random.default_rng(0))
    w, u = ops.convert_to_tensor(weights), ops.convert_to_tensor(upstream)
    packed = ops.convert_to_tensor(np.concatenate([z.reshape(-1), mu.reshape(-1)]))

    def unpack(x):
        return ops.reshape(x[: z.size], z.shape), ops.reshape(x[z.size :], mu.shape)

    def objective(sums_fn):
        def f(x):
            sums = sums_fn(*unpack(x))
            return ops.sum(sums * u), sums

        return f

    (_, fused), fused_grad = value_and_grad(
        objective(lambda a, b: distance_sums(a, b, w, fn, derivative)), jit=jit, has_aux=True
    )(packed)
    (_, plain), plain_grad = value_and_grad(objective(lambda a, b: _plain(a, b, w, fn)), has_aux=True)(packed)
    np.testing.assert_allclose(ops.convert_to_numpy(fused), ops.convert_to_numpy(plain), rtol=1e-5, atol=1e-5)
    fused_grad, plain_grad = ops.convert_to_numpy(fused_grad), ops.convert_to_numpy(plain_grad)
    assert np.all(np.isfinite(fused_grad))
    np.testing.assert_allclose(fused_grad, plain_grad, rtol=1e-4, atol=1e-5)
