"""Run in a subprocess: `fit` steps of every loss on a fixed batch of 4 images, on one device or
under a distribution; prints the losses and updated weights as JSON.

    python tests/distributed/one_step.py single|mirrored|data_parallel|processes [POLICY [STEPS [LOSSES]]]

POLICY: float32 (default), mixed_float16 or mixed_bfloat16; STEPS: steps on the batch (1);
LOSSES: comma-separated case names (all). `processes` is one process of a JAX process group
named by the environment (`keras_pixelembed.distribute`), fed its share of the batch (2 of 4
images when there are two processes): the global batch is the same 4 images.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

MODE = sys.argv[1]
POLICY = sys.argv[2] if len(sys.argv) > 2 else "float32"
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
LOSSES = sys.argv[4].split(",") if len(sys.argv) > 4 else None

if MODE == "mirrored":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_pixelembed import losses  # noqa: E402


def cases():
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 16, 16), np.int32)
    for b in range(4):
        for k in range(1, 4):
            r, c = rng.integers(0, 10, 2)
            labels[b, r : r + 6, c : c + 6] = k
    labels[0, 0, :4] = -1
    masks = np.stack([(labels == k) for k in (1, 2, 3)], -1).astype(np.float32)
    yield "push_pull_centroid", losses.PushPullCentroidLoss(max_instances=8), labels, 4
    yield "push_pull_balls", losses.PushPullBallsLoss(max_instances=8), labels, 4
    yield "discriminative", losses.DiscriminativeLoss(max_instances=8), labels, 4
    yield "metric_learning", losses.MetricLearningLoss(samples_per_mask=None, max_instances=8), labels, 4
    yield "spatial_embedding", losses.SpatialEmbeddingLoss(max_instances=8, pixel_size=1 / 64), labels, 4
    yield "offset_uncertainty", losses.OffsetUncertaintyLoss(num_classes=2), np.maximum(labels, 0) % 2, 5
    yield "lovasz_hinge", losses.LovaszHingeLoss(), masks, 3


def build(channels):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(channels, 1, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def main():
    keras.mixed_precision.set_global_policy(POLICY)
    if MODE == "data_parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    images = np.random.default_rng(1).random((4, 16, 16, 3)).astype(np.float32)
    share = slice(None)
    if MODE == "processes":
        from keras_pixelembed.distribute import process_group, strategy_scope

        group = process_group()
        strategy_scope("data_parallel")
        local = 4 // group.num_processes
        share = slice(group.process_id * local, (group.process_id + 1) * local)
    out = {"devices": len(keras.distribution.list_devices()) if keras.backend.backend() == "jax" else None}
    strategy = None
    if MODE == "mirrored":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one strategy for every run
    for name, loss, y, channels in cases():
        if LOSSES and name not in LOSSES:
            continue
        if MODE == "mirrored":
            out["replicas"] = strategy.num_replicas_in_sync
            with strategy.scope():
                model = build(channels)
                model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        else:
            model = build(channels)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        x, y = images[share], y[share]
        history = model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0)
        out[name] = {"loss": float(history.history["loss"][-1]), "weights": [w.tolist() for w in model.get_weights()]}
    print(json.dumps(out))


main()
