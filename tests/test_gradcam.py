"""Grad-CAM points at the region that drives the class score."""

import keras
import numpy as np
import pytest
from keras import layers

from helpers import gradcam
from helpers.tools import notebooks
from tests.conftest import small_resnet50


def _corner_detector() -> keras.Model:
    """Class 0's logit grows with the brightness of the (only) feature channel."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(1, 1, kernel_initializer="ones", use_bias=False, name="conv")(inputs)
    x = layers.ReLU(name="relu")(x)
    x = layers.MaxPooling2D(name="maxpool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("probabilities").set_weights([np.array([[1.0, -1.0]]), np.zeros(2)])
    return model


def test_heat_map_lies_on_the_bright_corner():
    model = _corner_detector()
    assert gradcam.target_layer(model).name == "relu"  # max-pooling is skipped
    image = np.zeros((1, 8, 8, 3), dtype=np.float32)
    image[0, :4, :4] = 200.0
    heat_map = gradcam.gradcam(model, image, class_indices=np.array([0]))
    assert heat_map.shape == (1, 8, 8)
    assert heat_map.max() == pytest.approx(1.0)
    assert heat_map[0, :4, :4].mean() > 5 * heat_map[0, 4:, 4:].mean()
    # The other class's score falls with brightness: nothing positive to show.
    assert gradcam.gradcam(model, image, class_indices=np.array([1])).max() == 0


def test_target_layers_of_the_study_models():
    cnn = notebooks.baseline_cnn(32, widths=(4, 8), seed=0)
    assert gradcam.target_layer(cnn).name == "block2_relu2"
    resnet = small_resnet50(32)
    assert gradcam.target_layer(resnet).name == "resnet50"
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for model in (cnn, resnet):
        heat_maps = gradcam.gradcam(model, images)
        assert heat_maps.shape == (2, 32, 32)
        assert heat_maps.min() >= 0 and heat_maps.max() <= 1
