"""A tiny two-phase training run in RUN_DIR, as notebook 4 writes its recipe; for the
fault-injection tests, which kill it at random moments and run it again.

    python tests/scripts/tiny_training.py RUN_DIR [--simulated-gpus N] [--precision POLICY]

With ``--simulated-gpus`` it trains under MirroredStrategy on N logical CPU devices; with
``--precision mixed_float16`` its loss scale grows every 2 finite steps, so the scale is part
of what a resume must restore.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--simulated-gpus", type=int, default=0)
parser.add_argument("--precision", default="auto")
arguments = parser.parse_args()
if arguments.simulated_gpus:
    import simulated_gpus  # noqa: E402

    simulated_gpus.install(arguments.simulated_gpus)

import keras  # noqa: E402

from helpers import training  # noqa: E402
from helpers.runfolder import RunFolder  # noqa: E402
from helpers.tools import notebooks  # noqa: E402

run = RunFolder(arguments.run_dir)
training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=7, deterministic=True,
                                    precision=arguments.precision)
train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                    max_images=48, cache=None)


def compiled(model: keras.Model, epochs: int) -> keras.Model:
    with training_run.strategy.scope():
        optimizer = keras.optimizers.AdamW(
            training.warmup_cosine(2e-3, training_run.steps_per_epoch, epochs))
        if training_run.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, dynamic_growth_steps=2)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model


with training_run.strategy.scope():
    model = compiled(notebooks.baseline_cnn(16, widths=(4, 8), seed=7), 3)
if training_run.needs_training(model, "first"):
    model.fit(train_data, validation_data=validation_data, epochs=3, verbose=0,
              callbacks=training_run.callbacks("first", precise_batchnorm_images=16))
    training_run.end_phase("first")
model.load_weights(training_run.checkpoint("first"))
compiled(model, 2)
boundary = training_run.phase_boundary("first")
if training_run.needs_training(model):
    model.fit(train_data, validation_data=validation_data, initial_epoch=boundary,
              epochs=boundary + 2, verbose=0,
              callbacks=training_run.callbacks(initial_epoch=boundary,
                                               precise_batchnorm_images=16))
training_run.finish(model)
print("finished")
