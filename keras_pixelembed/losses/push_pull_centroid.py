"""PushPullCentroidLoss: attraction to the mask's centroid, repulsion of every other pixel."""

from __future__ import annotations

import keras

from keras_pixelembed.losses.base import MaskSetLoss
from keras_pixelembed.validation import check_number


@keras.saving.register_keras_serializable(package="keras_pixelembed")
class PushPullCentroidLoss(MaskSetLoss):
    """Pulls each mask's pixels to its centroid and pushes all other pixels away.

    For one image with valid pixels Omega and M non-empty masks, z = activation(y_pred):

        L_A = (1/M) sum_m mean_{x in m} ||mu_m - z_x||
        L_R = -(1/M) sum_m 1/(|Omega| - |m|) sum_{x in Omega \\ m} ||mu_m - z_x||
        L = alpha * L_A + L_R

    A mask that covers all of Omega has a repulsion term of 0; an image with no mask has a
    loss of 0. The repulsion is unbounded below, so the default activation is `"sigmoid"`,
    which keeps the embeddings in the unit cube.

    Args:
        alpha: weight of the attraction term. Defaults to `1.0`.
        activation: applied to `y_pred` inside the loss: None, `"sigmoid"`, `"tanh"`,
            `"l2_normalize"` or any Keras activation name. Defaults to `"sigmoid"`.
        max_instances: bound on masks per image (static shapes under jit). Defaults to `64`.
        reduction: Keras reduction of the per-image losses. Defaults to
            `"sum_over_batch_size"`.
        name: optional name of the loss.
        dtype: dtype of the computation. Defaults to `None` (float32 under mixed precision).

    Example:

    ```python
    model.compile(optimizer="adam", loss=PushPullCentroidLoss(alpha=1.0))
    ```

    `y_true` is a label map `(batch, h, w)` (0 = no mask, < 0 = ignored) or a mask stack
    `(batch, h, w, M)`; `y_pred` is `(batch, h, w, channels)`. It is the unhinged relative of
    the discriminative loss (De Brabandere et al., "Semantic Instance Segmentation with a
    Discriminative Loss Function", arXiv:1708.02551), with every pixel, not every centroid,
    pushed away; the formula above is the whole definition.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        activation: str | None = "sigmoid",
        max_instances: int = 64,
        reduction: str = "sum_over_batch_size",
        name: str | None = "push_pull_centroid_loss",
        dtype=None,
    ):
        super().__init__(
            activation=activation, max_instances=max_instances, reduction=reduction, name=name, dtype=dtype
        )
        self.alpha = check_number("alpha", alpha, minimum=0.0)

    def compute(self, instances):
        attract = instances.mean_over_instances(instances.inside_mean(lambda d: d))
        repel = instances.mean_over_instances(instances.outside_mean())
        return self.alpha * attract - repel

    def get_config(self) -> dict:
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
