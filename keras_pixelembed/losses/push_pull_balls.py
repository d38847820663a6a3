"""PushPullBallsLoss: hinged attraction inside a ball, hinged repulsion outside a larger one."""

from __future__ import annotations

import keras
from keras import ops

from keras_pixelembed.losses.base import MaskSetLoss
from keras_pixelembed.validation import check_number


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class PushPullBallsLoss(MaskSetLoss):
    """Hinged push-pull loss around each mask's centroid.

    For one image with valid pixels Omega and M non-empty masks, z = activation(y_pred):

        L_A = (1/M) sum_m mean_{x in m} [||mu_m - z_x|| - r_A]_+
        L_R = (1/M) sum_m 1/(|Omega| - |m|) sum_{x in Omega \\ m} [r_R - ||mu_m - z_x||]_+
        L = alpha * L_A + L_R

    Pixels of a mask closer than `r_attract` to its centroid, and other pixels farther than
    `r_repel`, add nothing. A mask covering all of Omega has no repulsion; an image with no
    mask has a loss of 0.

    Args:
        alpha: weight of the attraction term. Defaults to `1.0`.
        r_attract: radius r_A of the attraction ball. Defaults to `0.5`.
        r_repel: radius r_R of the repulsion ball, usually 2 to 3 times `r_attract`.
            Defaults to `1.5`.
        activation: applied to `y_pred` inside the loss: None, `"sigmoid"`, `"tanh"`,
            `"l2_normalize"` or any Keras activation name. Defaults to `None`.
        max_instances: bound on masks per image (static shapes under jit). Defaults to `64`.
        reduction: Keras reduction of the per-image losses. Defaults to
            `"sum_over_batch_size"`.
        name: optional name of the loss.
        dtype: dtype of the computation. Defaults to `None`.

    Example:

    ```python
    model.compile(optimizer="adam", loss=PushPullBallsLoss(r_attract=0.5, r_repel=1.5))
    ```

    The hinges are those of the discriminative loss (De Brabandere et al., "Semantic Instance
    Segmentation with a Discriminative Loss Function", arXiv:1708.02551), applied to pixels
    instead of centroids for the repulsion; the formula above is the whole definition.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        r_attract: float = 0.5,
        r_repel: float = 1.5,
        activation: str | None = None,
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = "push_pull_balls_loss",
        dtype=None,
    ):
        super().__init__(
            activation=activation, max_instances=max_instances, reduction=reduction, name=name, dtype=dtype
        )
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.r_attract = check_number("r_attract", r_attract, minimum=0.0)
        self.r_repel = check_number("r_repel", r_repel, minimum=0.0)

    def compute(self, instances):
        attract = instances.inside_mean(lambda d: ops.relu(d - self.r_attract))
        repel = instances.outside_mean(
            lambda d: ops.relu(self.r_repel - d), lambda d: -ops.cast(d < self.r_repel, d.dtype)
        )
        return self.alpha * instances.mean_over_instances(attract) + instances.mean_over_instances(repel)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"alpha": self.alpha, "r_attract": self.r_attract, "r_repel": self.r_repel})
        return config
