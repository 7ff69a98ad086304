"""A tiny two-phase training run in RUN_DIR, as notebook 4 writes its recipe; for the
fault-injection test, which kills it at random moments and runs it again.

    python tests/scripts/tiny_training.py RUN_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402

from helpers import models, training  # noqa: E402
from helpers.runfolder import RunFolder  # noqa: E402

run = RunFolder(sys.argv[1])
training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=7, deterministic=True)
train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                    max_images=48, cache=None)


def compiled(model: keras.Model, epochs: int) -> keras.Model:
    model.compile(optimizer=keras.optimizers.AdamW(
                      training.warmup_cosine(2e-3, training_run.steps_per_epoch, epochs)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


model = compiled(models.build_cnn(16, filters=(4, 8), seed=7), 3)
if not training_run.phase_finished("first"):
    model.fit(train_data, validation_data=validation_data, epochs=3, verbose=0,
              callbacks=training_run.callbacks("first", precise_batchnorm_images=16))
    training_run.end_phase("first")
model.load_weights(training_run.checkpoint("first"))
compiled(model, 2)
boundary = training_run.phase_boundary("first")
model.fit(train_data, validation_data=validation_data, initial_epoch=boundary,
          epochs=boundary + 2, verbose=0,
          callbacks=training_run.callbacks(initial_epoch=boundary, precise_batchnorm_images=16))
training_run.finish()
print("finished")
