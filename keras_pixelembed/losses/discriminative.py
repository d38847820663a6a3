"""DiscriminativeLoss (De Brabandere, Neven, Van Gool 2017)."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import MaskSetLoss
from keras_pixelembed.ops.numerics import safe_divide, safe_norm
from keras_pixelembed.validation import check_number


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class DiscriminativeLoss(MaskSetLoss):
    """The discriminative loss of "Semantic Instance Segmentation with a Discriminative Loss
    Function" (De Brabandere, Neven, Van Gool, 2017, arXiv:1708.02551).

    For one image with M non-empty masks and centroids mu_m, z = activation(y_pred):

        L_var  = (1/M) sum_m mean_{x in m} [||mu_m - z_x|| - delta_v]_+^2
        L_dist = 1/(M(M-1)) sum_{m1 != m2} [2 delta_d - ||mu_m1 - mu_m2||]_+^2   (0 if M < 2)
        L_reg  = (1/M) sum_m ||mu_m||
        L = alpha * L_var + beta * L_dist + gamma * L_reg

    The sum over ordered pairs is divided by M(M-1), the number of ordered pairs (not
    2M(M-1), M^2 or M-1, as some public versions do). An image with no mask has a loss of 0.

    Args:
        delta_v: margin of the variance (pull) term. Defaults to `0.5`.
        delta_d: margin of the distance (push) term; centroids are pushed `2 * delta_d`
            apart. Defaults to `1.5`.
        alpha: weight of the variance term. Defaults to `1.0`.
        beta: weight of the distance term. Defaults to `1.0`.
        gamma: weight of the regulariser. Defaults to `0.001`.
        activation: applied to `y_pred` inside the loss: None, `"sigmoid"`, `"tanh"`,
            `"l2_normalize"` or any Keras activation name. Defaults to `None`.
        max_instances: bound on masks per image (static shapes under jit). Defaults to `64`.
        reduction: Keras reduction of the per-image losses. Defaults to
            `"sum_over_batch_size"`.
        name: optional name of the loss.
        dtype: dtype of the computation. Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=DiscriminativeLoss(delta_v=0.5, delta_d=1.5))
    ```

    Cluster the embeddings with `delta_v` as radius (`keras_pixelembed.cluster.greedy_ball`).
    """

    def __init__(
        self,
        delta_v: float = 0.5,
        delta_d: float = 1.5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.001,
        activation: str | None = None,
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = "discriminative_loss",
        dtype=None,
    ):
        super().__init__(
            activation=activation, max_instances=max_instances, reduction=reduction, name=name, dtype=dtype
        )
        self.delta_v = check_number("delta_v", delta_v, minimum=0.0)
        self.delta_d = check_number("delta_d", delta_d, minimum=0.0)
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.beta = check_number("beta", beta, minimum=0.0)
        self.gamma = check_number("gamma", gamma, minimum=0.0)

    def compute(self, instances):
        pull = instances.inside_mean(lambda d: ops.square(ops.relu(d - self.delta_v)))
        variance = instances.mean_over_instances(pull)

        present = instances.present
        pairs = ops.expand_dims(present, 2) * ops.expand_dims(present, 1)
        pairs = pairs * (1.0 - ops.eye(instances.num_slots, dtype=pairs.dtype))
        push = ops.square(ops.relu(2.0 * self.delta_d - instances.centroid_distances()))
        m = instances.n_instances
        distance = safe_divide(ops.sum(pairs * push, axis=(1, 2)), m * (m - 1.0))

        regulariser = instances.mean_over_instances(safe_norm(instances.means, axis=-1))
        return self.alpha * variance + self.beta * distance + self.gamma * regulariser

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "delta_v": self.delta_v,
                "delta_d": self.delta_d,
                "alpha": self.alpha,
                "beta": self.beta,
                "gamma": self.gamma,
            }
        )
        return config
