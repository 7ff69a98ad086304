"""The study's learning-rate schedule, registered so that a saved model's optimizer loads
wherever the model's layers do: ``helpers.models`` imports this module."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="blood_cells")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's ``CosineDecay`` with a warm-up, computed without a conditional: Keras's rate
    at every step (in a graph, within float32 rounding).

    Keras's ``ops.cond`` is traced per variable AdamW decays, which slowed ResNet50's first
    ``fit`` (docs/performance.md). ``fingerprints.recipe_fingerprint`` counts it as CosineDecay.
    """

    def __call__(self, step):
        if self.warmup_target is None:  # Keras's version has no conditional then
            return super().__call__(step)
        initial_learning_rate = ops.convert_to_tensor(self.initial_learning_rate)
        dtype = initial_learning_rate.dtype
        decay_steps = ops.cast(self.decay_steps, dtype)
        warmup_target = ops.cast(self.warmup_target, dtype)
        warmup_steps = ops.cast(self.warmup_steps, dtype)
        step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
        # The operations of Keras's two branches, in its order, so the values are equal.
        warming_up = ((warmup_target - initial_learning_rate) * (step / warmup_steps)
                      + initial_learning_rate)
        completed_fraction = ops.divide(step - warmup_steps, decay_steps)
        cosine_decayed = 0.5 * (1.0 + ops.cos(ops.multiply(ops.array(math.pi, dtype=dtype),
                                                           completed_fraction)))
        decayed = (1 - self.alpha) * cosine_decayed + self.alpha
        return ops.where(step < warmup_steps, warming_up,
                         ops.multiply(warmup_target, decayed))
