"""The models' building blocks: preprocessing, augmentation, the CNN, the ResNet50 base.

What notebook 4 does with them (freezing, unfreezing, BatchNorm kept frozen, preprocessing
inside the saved model) is checked on the smoke study's run folder: test_smoke_study.py.
"""

import keras
import numpy as np
import pytest

from helpers import inference, models
from helpers.labels import CLASS_NAMES
from helpers.tools import notebooks
from tests.conftest import small_resnet50

SIZE = 32  # small inputs keep ResNet50 (random weights) fast on a CPU


def study_augmentation(seed: int) -> keras.Sequential:
    """Notebook 3's augmentation (notebook 4 writes the same; test_repository checks)."""
    return notebooks.definitions("03_train_cnn", ("augmentation",))["augmentation"](seed)


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    return images, np.arange(n) % len(CLASS_NAMES)


def test_preprocessing_layer_maps_rgb_0_255_to_caffe_bgr():
    rgb = np.array([[[[255.0, 128.0, 0.0]]]], dtype="float32")
    out = np.asarray(models.ResNetPreprocess()(rgb))
    # caffe: RGB -> BGR, then subtract the ImageNet means (B 103.939, G 116.779, R 123.68).
    np.testing.assert_allclose(out[0, 0, 0], [0 - 103.939, 128 - 116.779, 255 - 123.68],
                               atol=1e-3)


def notebook_resnet50(weights: str | None) -> tuple[keras.Model, keras.Model]:
    """Notebook 4's ``build_resnet50`` (its cells' code) with WEIGHTS as its derived cell
    gives them to ``keras.applications.ResNet50``: the model and its base."""
    build = notebooks.definitions("04_train_resnet50", ("augmentation", "build_resnet50"),
                                  scope={"WEIGHTS": weights}, RESNET_IMAGE_SIZE=SIZE)
    return build["build_resnet50"]()


def test_unreachable_imagenet_weights_never_fall_back_to_random(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(models.WeightsUnavailableError, match="Colab") as error:
        notebook_resnet50("imagenet")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("build", [
    lambda: notebooks.baseline_cnn(SIZE, widths=(8, 16)),
    lambda: small_resnet50(SIZE),
], ids=["cnn", "resnet50"])
def test_saved_model_loads_in_safe_mode_and_predicts_the_same(build, tmp_path):
    keras.utils.set_random_seed(0)
    model = build()
    images, _ = _batch()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode is on by default
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-5)
    assert loaded.output_shape == (None, len(CLASS_NAMES))


def test_cnn_rescales_inside_and_augments_only_in_training():
    keras.utils.set_random_seed(0)
    model = notebooks.baseline_cnn(SIZE, widths=(8,))
    images, _ = _batch()
    inference = [np.asarray(model(images, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)
    assert not np.allclose(np.asarray(model.get_layer("augmentation")(images, training=True)),
                           images)
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)


def test_augmentation_moves_pixels_without_interpolating_them():
    """Each training view is one of the 8 right-angle rotations and reflections of the image,
    pixel for pixel (resampling would blur training images but not inference ones), and
    all 8 occur."""
    keras.utils.set_random_seed(0)
    geometric = study_augmentation(0).layers[:3]  # flips, transpose; then contrast
    images = np.random.default_rng(1).uniform(0, 255, (64, SIZE, SIZE, 3)).astype("float32")
    augmented = images
    for layer in geometric:
        augmented = np.asarray(layer(augmented, training=True))
    views = np.stack([np.asarray(view) for view in inference.dihedral_views(images)])
    matches = [[int(np.array_equal(augmented[i], views[k, i])) for k in range(8)]
               for i in range(len(images))]
    assert all(sum(row) == 1 for row in matches)  # exactly one view each (random images)
    assert sorted({row.index(1) for row in matches}) == list(range(8))
    transpose = models.RandomTranspose()
    np.testing.assert_array_equal(np.asarray(transpose(images, training=False)), images)


def test_augmentation_lowers_contrast_as_often_as_it_raises_it():
    """Training images must straddle the untouched inference images, not all lie on one side
    (Keras's RandomContrast(0.1) only raises contrast)."""
    keras.utils.set_random_seed(0)
    contrast = study_augmentation(0).get_layer("random_contrast")
    images = np.random.default_rng(2).uniform(50, 200, (256, SIZE, SIZE, 3)).astype("float32")
    ratio = np.asarray(contrast(images, training=True)).std(axis=(1, 2, 3)) / images.std(
        axis=(1, 2, 3))
    assert 0.9 - 1e-3 < ratio.min() < 0.95 and 1.05 < ratio.max() < 1.1 + 1e-3
    assert 0.4 < (ratio < 1).mean() < 0.6


def test_augmentation_noise_is_of_its_size_stays_in_0_255_and_is_off_at_inference():
    keras.utils.set_random_seed(0)
    noise = study_augmentation(0).get_layer("random_noise")
    images = np.random.default_rng(3).uniform(20, 235, (64, SIZE, SIZE, 3)).astype("float32")
    added = np.asarray(noise(images, training=True)) - images
    assert abs(added.std() - noise.stddev) < 0.05 * noise.stddev and abs(added.mean()) < 0.05
    np.testing.assert_array_equal(np.asarray(noise(images, training=False)), images)
    edges = np.concatenate([np.zeros((8, SIZE, SIZE, 3)), np.full((8, SIZE, SIZE, 3), 255)])
    noisy = np.asarray(noise(edges.astype("float32"), training=True))
    assert noisy.min() == 0 and noisy.max() == 255 and noisy[:8].max() > 0 and noisy[8:].min() < 255


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_pixel_noise_keeps_its_size_in_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)  # conftest restores float32
    noise = models.RandomPixelNoise(3.0, seed=0)
    images = np.full((32, SIZE, SIZE, 3), 128.0, dtype="float32")
    added = np.asarray(noise(images, training=True), dtype="float32") - 128
    assert noise.compute_dtype == policy.removeprefix("mixed_")
    assert abs(added.std() - 3.0) < 0.3 and added.min() >= -128 and added.max() <= 127


@pytest.mark.parametrize("stddev", [-1.0, True, "3", float("nan"), float("inf")])
def test_pixel_noise_refuses_a_standard_deviation_that_is_not_a_finite_number_from_0(stddev):
    with pytest.raises(ValueError, match="stddev"):
        models.RandomPixelNoise(stddev)
    assert models.RandomPixelNoise(np.float32(2.5)).stddev == 2.5  # NumPy numbers are numbers


def test_pixel_noise_of_size_0_is_accepted_and_leaves_training_images_alone():
    images, _ = _batch()
    no_noise = models.RandomPixelNoise(0.0)
    np.testing.assert_array_equal(np.asarray(no_noise(images, training=True)), images)


def test_pixel_noise_is_saved_with_its_size_and_seed(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, models.RandomPixelNoise(7.5, seed=11, name="noise")(inputs))
    model.save(tmp_path / "noise.keras")
    loaded = keras.saving.load_model(tmp_path / "noise.keras").get_layer("noise")
    assert (loaded.stddev, loaded.seed) == (7.5, 11)


@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-4), ("mixed_bfloat16", 3e-2)])
def test_fused_batchnorm_trains_like_keras_batchnorm(policy, tolerance):
    import tensorflow as tf

    images = tf.random.stateless_normal((8, 6, 6, 5), seed=(1, 2)) * 3.0 + 1.0
    keras.mixed_precision.set_global_policy(policy)
    try:
        plain = keras.layers.BatchNormalization(momentum=0.9)
        fused = models.FusedBatchNormalization(momentum=0.9)
        for layer in (plain, fused):
            layer.build(images.shape)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    gamma = tf.random.stateless_uniform((5,), seed=(3, 4), minval=0.5, maxval=2.0)
    beta = tf.random.stateless_normal((5,), seed=(5, 6))
    for layer in (plain, fused):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    results = []
    for layer in (plain, fused):
        inputs = tf.cast(images, layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * tf.range(5, dtype="float32"))
        gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        results.append([outputs, *gradients, layer.moving_mean, layer.moving_variance,
                         layer(inputs, training=False)])
    for expected, actual in zip(*results, strict=True):
        expected, actual = (np.asarray(tf.cast(value, "float32")) for value in (expected, actual))
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)
    # The moving averages moved (by Keras's rule) and the variance is the biased one.
    assert not np.allclose(results[1][4], 0) and not np.allclose(results[1][5], 1)
    # ...computed by the fused kernel in training, by Keras's ops at inference.
    for training, expected in ((True, True), (False, False)):
        graph = tf.function(lambda x, training=training: fused(x, training=training)
                            ).get_concrete_function(tf.TensorSpec(images.shape,
                                                                  fused.compute_dtype)).graph
        assert any(op.type.startswith("FusedBatchNorm")
                   for op in graph.get_operations()) == expected


def test_fused_batchnorm_normalizes_with_the_layers_own_epsilon():
    import tensorflow as tf

    images = tf.random.stateless_normal((8, 6, 6, 5), seed=(1, 2)) * 0.1  # variance near 0.01
    plain = keras.layers.BatchNormalization(epsilon=0.01)
    fused = models.FusedBatchNormalization(epsilon=0.01)
    np.testing.assert_allclose(np.asarray(fused(images, training=True)),
                               np.asarray(plain(images, training=True)), rtol=1e-4, atol=1e-4)


def test_the_trainable_parameters_leave_out_frozen_layers():
    inputs = keras.Input((3,))
    frozen = keras.layers.Dense(4, trainable=False)  # 16 parameters
    model = keras.Model(inputs, keras.layers.Dense(2)(frozen(inputs)))  # 10 parameters
    assert models.count_trainable(model) == 10 and model.count_params() == 26


def test_an_error_building_a_resnet50_of_random_weights_is_not_said_to_be_the_weights():
    with pytest.raises(ValueError, match="a shape error"), models.explained_weights_errors(None):
        raise ValueError("a shape error")


def test_the_cnn_uses_fused_batchnorm_and_loads_back(tmp_path):
    model = notebooks.baseline_cnn(16, widths=(4, 8), seed=0)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 4 and all(isinstance(layer, models.FusedBatchNormalization)
                                   for layer in norms)
    model.save(tmp_path / "cnn.keras")
    loaded = keras.saving.load_model(tmp_path / "cnn.keras")
    assert isinstance(loaded.get_layer("block1_bn1"), models.FusedBatchNormalization)


def _legacy_h5(model: keras.Model, path) -> None:
    """Write ``model``'s weights in the legacy HDF5 layout (a group per layer, named by
    ``layer_names``), as Keras's own ImageNet download is."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


@pytest.mark.parametrize("layout", ["weights.h5", "legacy h5"])
def test_resnet50_weights_from_a_file_load_exactly(layout, tmp_path):
    keras.utils.set_random_seed(1)
    _, source = notebook_resnet50(None)
    path = tmp_path / ("base.weights.h5" if layout == "weights.h5" else "base_notop.h5")
    if layout == "weights.h5":
        source.save_weights(path)
    else:
        _legacy_h5(source, path)
    keras.utils.set_random_seed(2)  # other random weights, which the file must replace
    _, loaded = notebook_resnet50(models.resnet50_weights(str(path)))
    for expected, actual in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_a_weights_file_of_another_model_is_one_clear_line(tmp_path):
    path = tmp_path / "cnn.weights.h5"
    notebooks.baseline_cnn(SIZE, widths=(8, 16)).save_weights(path)
    with pytest.raises(models.WeightsUnavailableError,
                       match="holds no weights of a ResNet50 base") as error:
        notebook_resnet50(str(path))
    assert "\n" not in str(error.value)


def test_a_base_whose_weights_are_not_the_files_is_refused(tmp_path):
    """Some Keras versions load a file partly: the base must hold the file's weights."""
    base = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "base.weights.h5"
    base.save_weights(path)
    models.check_weights_file(base, str(path))  # its own file: accepted
    first = base.get_layer("conv1_conv").kernel
    first.assign(np.zeros(first.shape))  # one convolution not loaded from the file
    with pytest.raises(models.WeightsUnavailableError, match="1 of its 53 convolutions"):
        models.check_weights_file(base, str(path))


def test_resnet50_weights_setting_and_label_say_where_the_weights_come_from(tmp_path):
    path = tmp_path / "my_weights.h5"
    path.write_bytes(b"")
    assert models.resnet50_weights("imagenet") == "imagenet"
    assert models.resnet50_weights("none") is None
    assert models.resnet50_weights(str(path)) == str(path)
    with pytest.raises(models.WeightsUnavailableError, match="no weights file"):
        models.resnet50_weights(str(tmp_path / "missing.h5"))
    assert models.resnet50_label("none") == "ResNet50, random init"
    assert "ImageNet" in models.resnet50_label("imagenet")
    assert models.resnet50_label(str(path)) == (
        "ResNet50, weights from my_weights.h5, frozen then fine-tuned")


def test_the_study_checks_the_imagenet_file_keras_downloads():
    """helpers.study looks for ResNet50's ImageNet weights without importing Keras: the file
    and address it checks must be the ones keras.applications.ResNet50 downloads."""
    from keras.src.applications import resnet

    from helpers.tools import study

    assert study.IMAGENET_URL == resnet.BASE_WEIGHTS_PATH + study.IMAGENET_FILE
    assert study.IMAGENET_FILE == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
