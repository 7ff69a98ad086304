"""Grad-CAM: where in the image the last convolutional features drove a class score.

Selvaraju et al. (2017): weight each channel of the last convolutional feature map by the
mean gradient of the class score over it, sum, keep the positive part, upsample.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

POOLING = (layers.MaxPooling2D, layers.AveragePooling2D)


def target_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer before global pooling whose output is a feature map (ResNet50: the base)."""
    chain = model.layers
    pool_index = next((i for i, layer in enumerate(chain)
                       if isinstance(layer, layers.GlobalAveragePooling2D)), None)
    if pool_index is None:
        raise ValueError(f"{model.name} has no GlobalAveragePooling2D layer")
    for layer in reversed(chain[:pool_index]):
        if len(layer.output.shape) == 4 and not isinstance(layer, POOLING):
            return layer
    raise ValueError(f"{model.name} has no feature map before its global pooling")


def gradcam(model: keras.Model, images: np.ndarray | tf.Tensor,
            class_indices: np.ndarray | None = None) -> np.ndarray:
    """Heat maps ``[n, height, width]`` in [0, 1] for ``images`` (default class: predicted).

    Uses the logit, as the paper does: a saturated softmax has no gradient. Assumes a chain
    of layers ending in a Dense softmax layer.
    """
    target = target_layer(model)
    head = model.layers[-1]
    if not isinstance(head, layers.Dense):
        raise ValueError(f"{model.name} does not end in a Dense layer")
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        x, features = images, None
        for layer in model.layers[:-1]:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            x = layer(x, training=False)
            if layer is target:
                features = x
                tape.watch(features)
        logits = tf.matmul(tf.cast(x, tf.float32), head.kernel) + head.bias
        if class_indices is None:
            class_indices = tf.argmax(logits, axis=1)
        scores = tf.gather(logits, tf.convert_to_tensor(class_indices), batch_dims=1)
    gradients = tape.gradient(scores, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., tf.newaxis]
    maps = tf.image.resize(maps, images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps, peak).numpy()
