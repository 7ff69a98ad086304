"""Building blocks of the study's two models: the baseline CNN, and the parts notebook 4
assembles ResNet50 from (the ImageNet base, its preprocessing layer, the block names).

Both models take raw 0-255 RGB images. Augmentation and input scaling are layers inside the
models, so they run on the accelerator, are off at inference, and no caller can get the
scale wrong.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from helpers import project
from helpers.labels import CLASS_NAMES


@keras.saving.register_keras_serializable(package="blood_cells")
class RandomTranspose(layers.Layer):
    """Swaps the rows and columns of each square image with probability 1/2, in training only.

    With a random horizontal and a random vertical flip this gives all 8 right-angle rotations
    and reflections of the image, each pixel moved and none interpolated.
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
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization, computed in training by TensorFlow's fused kernel.

    Keras 3 normalises with separate moment, subtract, scale and shift ops, whose forward and
    backward passes took about half of the CNN's training step on a CPU, in float32 and in
    bfloat16 alike (README, "Performance"); oneDNN's fused kernel does the same work about
    four times faster. Same arithmetic (batch statistics in float32, the biased batch
    variance in the moving average, Keras's momentum update) and the same variables, so the
    layer is interchangeable with Keras's. Inference, masks, renorm, synchronized statistics
    and anything but channels-last 4-D inputs take Keras's own path.
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
        # The kernel returns the batch variance with Bessel's correction; Keras averages the
        # biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = unbiased_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return outputs


def augmentation(seed: int | None = None) -> keras.Sequential:
    """Every right-angle rotation and reflection, and contrast changed by up to 10% either way.

    Cells have no "up", so all 8 orientations of the square are equally real. They move
    pixels without interpolating them: rotations by other angles and zooms resample every
    training image, which blurs it, while images at inference are sharp. A CNN trained that
    way scored 0.944 on clean validation images and 0.974 on the same images resampled
    (README, "Training"): the gap between training and inference inputs, not overfitting.
    """
    # One seed per layer: equal seeds would draw equal coins and flip in step. Two flip
    # layers, because Keras's "horizontal_and_vertical" mode flips both axes or neither.
    seeds = [None] * 4 if seed is None else [seed + offset for offset in range(4)]
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seeds[0], name="random_flip_horizontal"),
        layers.RandomFlip("vertical", seed=seeds[1], name="random_flip_vertical"),
        RandomTranspose(seed=seeds[2], name="random_transpose"),
        # A (lower, upper) pair: from a single number Keras 3 draws factors in [1, 1.1] only,
        # so every training image would have more contrast than any image at inference.
        layers.RandomContrast((0.1, 0.1), seed=seeds[3], name="random_contrast"),
    ], name="augmentation")


def build_cnn(image_size: int, filters: tuple[int, ...] = (32, 64, 128, 256),
              dropout: float = 0.3, batchnorm_momentum: float = 0.9,
              augment: bool = True, stem_stride: int = 1,
              seed: int | None = None) -> keras.Model:
    """A VGG-style CNN: per block two 3x3 conv + BatchNorm + ReLU, then max-pooling.

    ``stem_stride`` 2 puts a strided 3x3 conv (``filters[0]`` wide) before the blocks: the
    network then sees an image twice as large for about the cost of the plain one at half
    the size, learning its own downsampling instead of losing the fine texture to a resize.

    ``batchnorm_momentum`` 0.9 (Keras defaults to 0.99) lets the moving statistics that
    validation uses follow the weights within an epoch; with 0.99 they lag many steps behind
    at a high learning rate and validation accuracy jumps from epoch to epoch.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation(seed)(inputs) if augment else inputs
    x = layers.Rescaling(1 / 255, name="rescale")(x)
    if stem_stride > 1:
        x = layers.Conv2D(filters[0], 3, strides=stem_stride, padding="same", use_bias=False,
                          name="stem_conv")(x)
        x = FusedBatchNormalization(momentum=batchnorm_momentum, name="stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                              name=f"block{block}_conv{conv}")(x)
            x = FusedBatchNormalization(momentum=batchnorm_momentum,
                                        name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    # float32 output keeps softmax stable under mixed precision.
    outputs = layers.Dense(len(CLASS_NAMES), activation="softmax", dtype="float32",
                           name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


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
    "none" (random weights), or the path of a weights file (relative paths from the project's
    root), which must exist."""
    if setting in ("imagenet", "none"):
        return None if setting == "none" else setting
    path = project.resolve(setting)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"RESNET_WEIGHTS: no weights file at {path}. Give \"imagenet\", \"none\" (random "
            "weights) or the path of a ResNet50 weights file (.h5 or .weights.h5).")
    return str(path)


def resnet50_label(setting: str) -> str:
    """How every table, print and legend names the ResNet50 of RESNET_WEIGHTS: random
    initialisation is not transfer learning, and weights from a file are named by the file,
    not called ImageNet's."""
    if setting == "none":
        return "ResNet50, random init"
    source = "ImageNet" if setting == "imagenet" else f"weights from {Path(setting).name}"
    return f"ResNet50, {source}, frozen then fine-tuned"


def resnet50_base(image_size: int, weights: str | os.PathLike | None = "imagenet"):
    """``keras.applications.ResNet50`` without its top; ``weights`` as Keras takes them:
    "imagenet", None, or a weights file (Keras's ``.weights.h5``, or the legacy ``.h5``
    layout of Keras's own ImageNet download).

    Raises WeightsUnavailableError with what to do when the ImageNet weights cannot be had
    or the file holds no weights of a ResNet50 base without its top.
    """
    if weights not in ("imagenet", None):
        return _resnet50_from_file(image_size, weights)
    try:
        return keras.applications.ResNet50(include_top=False, weights=weights,
                                           input_shape=(image_size, image_size, 3))
    except Exception as error:  # get_file raises several types for a failed download
        if weights is None:
            raise
        raise WeightsUnavailableError(
            f"Could not download the ImageNet weights for ResNet50 ({error}). Run where the "
            "internet is reachable (Colab), or download "
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere and set "
            "RESNET_WEIGHTS to its path. RESNET_WEIGHTS = \"none\" runs on random weights, "
            "which is not transfer learning and is labelled so.") from None


def _resnet50_from_file(image_size: int, path: str | os.PathLike) -> keras.Model:
    """The base with every weight from ``path``. Some Keras versions load a file of another
    model partly, with a warning and fresh weights where names differ: every kernel is
    checked to have changed, so a part-loaded base is an error, not a silent mix."""
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"ResNet50 weights file not found: {path}")
    base = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(image_size, image_size, 3))
    fresh = {weight.path: weight.numpy() for weight in base.weights
             if weight.path.endswith("kernel")}
    problem = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras's per-layer warnings; summed up below
        try:
            base.load_weights(path)
        except Exception as error:  # h5py, ValueError...: several types for a wrong file
            message = str(error).strip().splitlines()
            problem = f"{type(error).__name__}: {message[0][:200] if message else ''}"
    if problem is None:
        unchanged = [name for name, value in fresh.items()
                     if np.array_equal(value, base.get_layer(name.split("/")[0]).kernel.numpy())]
        if unchanged:
            problem = (f"{len(unchanged)} of its {len(fresh)} convolutions were not in the "
                       f"file, e.g. {unchanged[0]}")
    if problem:
        raise WeightsUnavailableError(
            f"{path} holds no weights of a ResNet50 base without its top (include_top=False), "
            f"so it cannot be used ({problem}).")
    return base


def count_trainable(model: keras.Model) -> int:
    """Number of trainable parameters (what the optimizer updates)."""
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


# The 16 residual blocks of ResNet50, bottom to top; layer names start with "BLOCK_".
RESNET50_BLOCKS = [f"conv{stage}_block{block}"
                   for stage, n_blocks in [(2, 3), (3, 4), (4, 6), (5, 3)]
                   for block in range(1, n_blocks + 1)]
