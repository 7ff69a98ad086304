"""The tiny recipe of tests/scripts/tiny_training.py on simulated GPUs, for
tests/test_replicas.py: one device, two replicas in float32 and in mixed_float16 (with
precise BatchNorm and the BatchNorm probe), and a two-replica float16 run stopped after an
epoch and resumed. Prints one JSON object with what each run logged.

    python tests/scripts/replicas_training.py RUN_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import simulated_gpus  # noqa: E402

simulated_gpus.install(2)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import callbacks, devices, training  # noqa: E402
from helpers.runfolder import RunFolder  # noqa: E402
from helpers.tools import notebooks  # noqa: E402

EPOCHS = 3
mirrored = devices.select_strategy
run = RunFolder(sys.argv[1])


def train(name: str, *, replicas: int, precision: str, stop_after_epoch: int = 0) -> dict:
    devices.select_strategy = mirrored if replicas > 1 else tf.distribute.get_strategy
    training_run = training.TrainingRun(run, name, label=name, seed=7, deterministic=True,
                                        precision=precision)
    # The same global batch (16) on one device and on two replicas.
    train_data, validation_data = training_run.datasets(image_size=24,
                                                        batch_size=16 // replicas, cache=None)
    with training_run.strategy.scope():
        model = notebooks.baseline_cnn(24, widths=(16, 32), seed=7)
        optimizer = keras.optimizers.AdamW(
            training.warmup_cosine(3e-3, training_run.steps_per_epoch, EPOCHS))
        if precision == "mixed_float16":  # what compile does, with a scale that moves
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, dynamic_growth_steps=4)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    if training_run.needs_training(model):
        try:
            model.fit(train_data, validation_data=validation_data, epochs=EPOCHS, verbose=0,
                      callbacks=training_run.callbacks(precise_batchnorm_images=32,
                                                       probe_batchnorm_images=32,
                                                       stop_after_epoch=stop_after_epoch))
        except callbacks.TrainingStoppedError:
            return {}
    validation = training_run.finish(model)
    evaluated = model.evaluate(validation_data, verbose=0, return_dict=True)
    return {
        "replicas": training_run.strategy.num_replicas_in_sync,
        "global_batch_size": training_run.global_batch_size,
        "steps_per_epoch": training_run.steps_per_epoch,
        "training_images": training_run.training_images,
        "policy": keras.mixed_precision.global_policy().name,
        "history": run.read_history(name).to_dict(orient="list"),
        "validation": validation,
        "evaluated_accuracy": evaluated["accuracy"],
        "loss_scale": (float(optimizer.dynamic_scale.numpy())
                       if hasattr(optimizer, "dynamic_scale") else None),
        "weights_finite": bool(all(np.isfinite(w).all() for w in model.get_weights())),
    }


results = {
    "one_device": train("one_device", replicas=1, precision="float32"),
    "two_float32": train("two_float32", replicas=2, precision="float32"),
    "two_float16": train("two_float16", replicas=2, precision="mixed_float16"),
}
assert train("two_float16_resumed", replicas=2, precision="mixed_float16",
             stop_after_epoch=2) == {}
results["two_float16_resumed"] = train("two_float16_resumed", replicas=2,
                                       precision="mixed_float16")
print(json.dumps(results, default=float))
