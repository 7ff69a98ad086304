"""The model checks that would have caught the earlier study's 66% ResNet50."""

import keras
import numpy as np
import pytest

from helpers import inference, models
from helpers.labels import CLASS_NAMES

SIZE = 32  # small inputs keep ResNet50 (random weights) fast on a CPU


@pytest.fixture(scope="module")
def resnet():
    keras.utils.set_random_seed(0)
    return models.build_resnet50(SIZE, weights=None)


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


def test_phase_one_trains_only_the_head(resnet):
    base = resnet.get_layer("resnet50")
    assert not base.trainable
    head = resnet.get_layer("probabilities")
    assert [id(w) for w in resnet.trainable_weights] == [id(w) for w in head.trainable_weights]


def test_phase_two_unfreezes_top_blocks_but_keeps_batchnorm_frozen():
    keras.utils.set_random_seed(0)
    model = models.build_resnet50(SIZE, weights=None)
    chosen = models.unfreeze_top_blocks(model, 3)
    assert chosen == ["conv5_block1", "conv5_block2", "conv5_block3"]
    base = model.get_layer("resnet50")
    trainable = [layer for layer in base.layers if layer.trainable_weights]
    assert trainable and all(layer.name.startswith("conv5_") for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)

    moving = [w for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
              for w in layer.non_trainable_weights]
    before = [w.numpy() for w in moving]
    conv_before = base.get_layer("conv5_block3_3_conv").kernel.numpy()
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    model.train_on_batch(*_batch())
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-5)
    for old, new in zip(before, moving, strict=True):
        np.testing.assert_array_equal(old, new.numpy())  # BatchNorm statistics unchanged
    assert not np.array_equal(conv_before, base.get_layer("conv5_block3_3_conv").kernel.numpy())


def test_batchnorm_statistics_survive_unfreezing_every_block():
    # Keras 3's fit() calls the model with training=True, which overrides the training=False
    # the base was called with; only trainable=False keeps BatchNorm in inference mode.
    # Unfreezing all 16 blocks must still leave every BatchNorm layer frozen.
    keras.utils.set_random_seed(0)
    model = models.build_resnet50(SIZE, weights=None)
    models.unfreeze_top_blocks(model, len(models.RESNET50_BLOCKS))
    batchnorms = [layer for layer in model.get_layer("resnet50").layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    before = [layer.moving_mean.numpy() for layer in batchnorms]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.train_on_batch(*_batch())
    for old, layer in zip(before, batchnorms, strict=True):
        np.testing.assert_array_equal(old, layer.moving_mean.numpy())


def test_bad_block_count_is_an_error(resnet):
    with pytest.raises(ValueError, match="n_blocks"):
        models.unfreeze_top_blocks(resnet, 17)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(models.WeightsUnavailableError, match="not found"):
        models.build_resnet50(SIZE, weights=str(tmp_path / "nope.h5"))


def test_unreachable_imagenet_weights_never_fall_back_to_random(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(models.WeightsUnavailableError, match="Colab"):
        models.build_resnet50(SIZE, weights="imagenet")


@pytest.mark.parametrize("build", [
    lambda: models.build_cnn(SIZE, filters=(8, 16)),
    lambda: models.build_resnet50(SIZE, weights=None),
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
    model = models.build_cnn(SIZE, filters=(8,))
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
    geometric = models.augmentation(seed=0).layers[:3]  # flips, transpose; then contrast
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
    contrast = models.augmentation(seed=0).get_layer("random_contrast")
    images = np.random.default_rng(2).uniform(50, 200, (256, SIZE, SIZE, 3)).astype("float32")
    ratio = np.asarray(contrast(images, training=True)).std(axis=(1, 2, 3)) / images.std(
        axis=(1, 2, 3))
    assert 0.9 - 1e-3 < ratio.min() < 0.95 and 1.05 < ratio.max() < 1.1 + 1e-3
    assert 0.4 < (ratio < 1).mean() < 0.6


def test_cnn_stem_halves_the_feature_maps_at_the_same_depth():
    plain = models.build_cnn(32, filters=(4, 8), augment=False, seed=0)
    stem = models.build_cnn(64, filters=(4, 8), augment=False, stem_stride=2, seed=0)
    assert stem.get_layer("stem_conv").strides == (2, 2)
    # A 64 px input with the stem gives the same block shapes as a 32 px one without.
    for name in ("block1_relu2", "block2_relu2"):
        assert stem.get_layer(name).output.shape == plain.get_layer(name).output.shape
    assert stem.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape == (1, 8)
