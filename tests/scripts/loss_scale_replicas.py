"""The minimal reproduction of Keras's loss-scale defect under MirroredStrategy
(helpers/keras_fixes.py): one float16 training step on two replicas (two logical CPU devices),
whose gradients overflow on the second replica only. A correct step is skipped and the loss
scale halved, as on one device; Keras alone applies it and every weight becomes NaN.

    python tests/scripts/loss_scale_replicas.py [--keras-only] [--replicas N]

Prints one JSON line: the loss scale after the step and whether the weights stayed finite.
``--keras-only`` leaves the project's work-around out (plain Keras).
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--keras-only", action="store_true")
parser.add_argument("--replicas", type=int, default=2)
arguments = parser.parse_args()
# Logical devices must be set before TensorFlow initialises the CPU.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * arguments.replicas)

import keras  # noqa: E402

if not arguments.keras_only:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import helpers.training  # noqa: E402, F401  (installs helpers.keras_fixes)

keras.mixed_precision.set_global_policy("mixed_float16")
strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(arguments.replicas)])
# A batch of one image per replica: x = 1 on the first, x = 60000 on the last, whose float16
# gradient overflows at Keras's initial loss scale (2**15). Zero weights: the prediction is
# uncertain, so the gradient is not zero.
x = np.ones((arguments.replicas, 1), "float32")
x[-1] = 60_000.0
y = np.arange(arguments.replicas) % 2
with strategy.scope():
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(2, activation="softmax",
                                                 kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
initial_scale = float(model.optimizer.initial_scale)
model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(arguments.replicas), epochs=1,
          verbose=0)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync, "keras": keras.__version__,
    "initial_loss_scale": initial_scale,
    "loss_scale": float(model.optimizer.dynamic_scale.numpy()),
    "weights_finite": bool(all(np.isfinite(w).all() for w in model.get_weights())),
}))
