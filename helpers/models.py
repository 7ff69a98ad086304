"""Building blocks of the study's two models, which notebooks 3 and 4 assemble: the layers
Keras lacks, the weights' checks and labels, and the block names.

Both models take raw 0-255 RGB; augmentation and scaling are layers inside them (docs/training.md).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

# Saved models name the study's schedule in their optimizer: importing it registers it.
from helpers import (
    project,
    schedules,  # noqa: F401
)
from helpers.labels import CLASS_NAMES  # noqa: F401 (the classifier's width, in the notebooks)


@keras.saving.register_keras_serializable(package="blood_cells")
class RandomTranspose(layers.Layer):
    """Swaps the rows and columns of each square image with probability 1/2, in training only.

    With random flips this gives all 8 right-angle rotations and reflections, none interpolated.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        if not training:
            return inputs
        coin = keras.random.uniform((keras.ops.shape(inputs)[0], 1, 1, 1),
                                    seed=self.seed_generator) < 0.5
        return keras.ops.where(coin, keras.ops.transpose(inputs, (0, 2, 1, 3)), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="blood_cells")
class RandomPixelNoise(layers.Layer):
    """Adds Gaussian noise of ``stddev`` to 0-255 images, in training only, clipped to 0-255.

    Keras's GaussianNoise accepts a standard deviation of at most 1, a scale for 0-1 inputs.
    """

    def __init__(self, stddev: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if (isinstance(stddev, bool) or not isinstance(stddev, numbers.Real)
                or not math.isfinite(stddev) or stddev < 0):
            raise ValueError(f"stddev must be a finite number >= 0 (0-255 units), got "
                             f"{stddev!r}")
        self.stddev = float(stddev)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        if not training or self.stddev == 0:
            return inputs
        noise = keras.random.normal(keras.ops.shape(inputs), stddev=self.stddev,
                                    dtype=inputs.dtype, seed=self.seed_generator)
        return keras.ops.clip(inputs + noise, 0, 255)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


@keras.saving.register_keras_serializable(package="blood_cells")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization, computed in training by TensorFlow's fused kernel.

    About four times faster on a CPU (docs/performance.md), with the same arithmetic and
    variables as Keras's. Inference, masks, renorm, synchronized statistics and anything but
    channels-last 4-D inputs take Keras's own path.
    """

    def call(self, inputs, training=None, mask=None):
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        fused = (training and self.trainable and mask is None and len(inputs.shape) == 4
                 and axes in ([3], [-1]) and not getattr(self, "renorm", False)
                 and not getattr(self, "synchronized", False))
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), "float32")
        offset = self.beta if self.center else tf.zeros((channels,), "float32")
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(scale, "float32"), tf.cast(offset, "float32"),
            epsilon=max(self.epsilon, 1.001e-5), is_training=True)
        # The kernel applies Bessel's correction; Keras averages the biased variance.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = unbiased_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return outputs


@keras.saving.register_keras_serializable(package="blood_cells")
class ResNetPreprocess(layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` as a layer: RGB 0-255 to caffe BGR.

    Registered, so a saved model loads in safe mode once ``helpers.models`` is imported.
    """

    def call(self, inputs):
        return keras.applications.resnet50.preprocess_input(inputs)


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights could not be loaded; never replaced by random weights silently."""


def resnet50_weights(setting: str) -> str | None:
    """What ``keras.applications.ResNet50`` takes for RESNET_WEIGHTS: "imagenet", None for
    "none", or the path of an existing weights file (relative to the project's root)."""
    if setting in ("imagenet", "none"):
        return None if setting == "none" else setting
    path = project.resolve(setting)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"RESNET_WEIGHTS: no weights file at {path}. Give \"imagenet\", \"none\" (random "
            "weights) or the path of a ResNet50 weights file (.h5 or .weights.h5).")
    return str(path)


def resnet50_label(setting: str) -> str:
    """How every result names the ResNet50 of RESNET_WEIGHTS: random init is not transfer
    learning, and weights from a file are named by the file."""
    if setting == "none":
        return "ResNet50, random init"
    source = "ImageNet" if setting == "imagenet" else f"weights from {Path(setting).name}"
    return f"ResNet50, {source}, frozen then fine-tuned"


@contextlib.contextmanager
def explained_weights_errors(weights: str | None) -> Iterator[None]:
    """Around ``keras.applications.ResNet50(weights=WEIGHTS, ...)``: a failed download or an
    unreadable file becomes a WeightsUnavailableError that says what to do."""
    try:
        yield
    except Exception as error:  # get_file and h5py raise several types
        if weights is None:
            raise
        if weights == "imagenet":
            raise WeightsUnavailableError(
                f"Could not download the ImageNet weights for ResNet50 ({error}). Run where "
                "the internet is reachable (Colab), or download "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere and set "
                "RESNET_WEIGHTS to its path. RESNET_WEIGHTS = \"none\" runs on random "
                "weights, which is not transfer learning and is labelled so.") from None
        message = str(error).strip().splitlines()
        raise WeightsUnavailableError(
            f"{weights} holds no weights of a ResNet50 base without its top "
            f"(include_top=False), so it cannot be used ({type(error).__name__}: "
            f"{message[0][:200] if message else ''}).") from None


def check_weights_file(base: keras.Model, weights: str | None) -> None:
    """For WEIGHTS from a file: check that every convolution of ``base`` came from it.

    Some Keras versions load another model's file partly, with fresh weights where names
    differ. Raises WeightsUnavailableError.
    """
    if weights in ("imagenet", None):
        return
    reference = keras.applications.ResNet50(include_top=False, weights=None,
                                            input_shape=base.input_shape[1:])
    before = {weight.path: weight.numpy() for weight in reference.weights
              if weight.path.endswith("kernel")}
    with warnings.catch_warnings(), explained_weights_errors(weights):
        warnings.simplefilter("ignore")  # Keras's per-layer warnings; summed up below
        reference.load_weights(weights)
    loaded = {weight.path: weight.numpy() for weight in reference.weights
              if weight.path.endswith("kernel")}
    unchanged = [path for path, value in before.items() if np.array_equal(value, loaded[path])]
    mismatched = [weight.path for weight in base.weights if weight.path in loaded
                  and not np.array_equal(weight.numpy(), loaded[weight.path])]
    if unchanged or mismatched:
        example = (unchanged or mismatched)[0]
        raise WeightsUnavailableError(
            f"{weights} holds no weights of a ResNet50 base without its top "
            f"(include_top=False), so it cannot be used ({len(unchanged or mismatched)} of "
            f"its {len(before)} convolutions were not in the file, e.g. {example}).")


def count_trainable(model: keras.Model) -> int:
    """Number of trainable parameters (what the optimizer updates)."""
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


# The 16 residual blocks of ResNet50, bottom to top; layer names start with "BLOCK_".
RESNET50_BLOCKS = [f"conv{stage}_block{block}"
                   for stage, n_blocks in [(2, 3), (3, 4), (4, 6), (5, 3)]
                   for block in range(1, n_blocks + 1)]
