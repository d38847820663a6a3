"""Run in a subprocess: one process of a `--distribute data_parallel` run (`train`) on synthetic
images; the process group comes from the environment (JAX_COORDINATOR_ADDRESS, ...).

    python tests/distributed/train_process.py OUT_DIR WEIGHTS.npz [KILL_AT_EPOCH [KILL_AT_BATCH]]

Writes this process's final weights to WEIGHTS.npz; with KILL_AT_EPOCH it kills itself (SIGKILL)
in that epoch, after that batch, as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_pixelembed import data  # noqa: E402
from keras_pixelembed.training import TrainConfig, train  # noqa: E402
from tests.helpers import TINY_TRAIN_CONFIG  # noqa: E402

OUT, WEIGHTS = sys.argv[1], sys.argv[2]
KILL = [int(a) for a in sys.argv[3:5]]


class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if KILL and self.epoch == KILL[0] and batch == (KILL[1] if len(KILL) > 1 else 0):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_end(self, logs=None):
        np.savez(WEIGHTS, *self.model.get_weights())


config = TrainConfig(
    **dict(TINY_TRAIN_CONFIG, epochs=int(os.environ.get("TEST_EPOCHS", "3"))),
    out_dir=OUT,
    distribute="data_parallel",
    jit_compile=True,
)
result = train(
    config,
    data.synthetic(8, (32, 32), seed=0),
    data.synthetic(2, (32, 32), seed=1),
    data.synthetic(2, (32, 32), seed=2),
    verbose=0,
    callbacks=[Record()],
)
print("RESULT " + json.dumps({"loss": result["final_loss"]}))
