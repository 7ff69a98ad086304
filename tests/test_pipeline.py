import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from helpers import images, pipeline, split
from helpers.errors import DataError
from helpers.labels import CLASS_NAMES


@pytest.fixture(scope="module")
def synthetic_split(synthetic_source, synthetic_audit, tmp_path_factory):
    split_csv = tmp_path_factory.mktemp("split") / "split.csv"
    return split.make_split(synthetic_audit, split_csv, seed=0).split


def _collect(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_batches_have_the_right_shape_dtype_range_and_labels(synthetic_source, synthetic_split):
    root, _ = synthetic_source
    dataset = pipeline.make_dataset(synthetic_split, root, "validation", image_size=32,
                                    batch_size=5, shuffle=False)
    images, labels = _collect(dataset)
    frame = synthetic_split[synthetic_split["split"] == "validation"].sort_values("path")
    assert images.shape == (len(frame), 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 1
    assert labels.tolist() == [CLASS_NAMES.index(label) for label in frame["label"]]


def test_without_a_gpu_the_datasets_are_not_autotuned(synthetic_source, synthetic_split,
                                                      monkeypatch):
    """On CPU cores tf.data's autotuning held each epoch's end until its optimizing thread
    woke (docs/performance.md); where a GPU is seen, TensorFlow's default stays."""
    root, _ = synthetic_source
    for shuffle in (True, False):
        options = pipeline.make_dataset(synthetic_split, root, "train", image_size=16,
                                        batch_size=5, shuffle=shuffle, cache=None).options()
        assert options.autotune.enabled is False
        assert options.deterministic is (not shuffle)  # shuffled data: any order of decoding
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/device:GPU:0"] if kind == "GPU" else [])
    assert pipeline.dataset_options(deterministic=True).autotune.enabled is None


@pytest.mark.parametrize("name, mode, fmt", [
    ("gray.jpg", "L", "JPEG"), ("rgba.png", "RGBA", "PNG"), ("rgb.bmp", "RGB", "BMP"),
    ("palette.png", "P", "PNG"),
])
def test_any_format_and_mode_becomes_three_channels(tmp_path, name, mode, fmt):
    color = np.zeros((40, 40, 3), np.uint8)
    color[:, :20] = (200, 40, 40)
    Image.fromarray(color).convert(mode).save(tmp_path / name, fmt)
    image = images.decode_and_resize(tf.io.read_file(str(tmp_path / name)), 16)
    assert image.shape == (16, 16, 3) and image.dtype == tf.uint8
    # Palette images are dithered, so compare with the mean colour of the red half.
    expected = np.asarray(Image.open(tmp_path / name).convert("RGB"))[:, :18].mean(axis=(0, 1))
    np.testing.assert_allclose(image.numpy()[8, 2], expected, atol=4)


def test_resize_is_antialiased():
    # A one-pixel checkerboard shrunk 8x must average to grey, not alias to black or white.
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    png = tf.io.encode_png(np.repeat(board[..., None], 3, axis=2))
    small = images.decode_and_resize(png, 8).numpy().astype(float)
    assert np.all(np.abs(small - 127.5) < 20)


def test_training_order_is_seeded_and_reshuffled_each_epoch(synthetic_source, synthetic_split):
    root, _ = synthetic_source

    def epochs(seed):
        dataset = pipeline.make_dataset(synthetic_split, root, "train", image_size=16,
                                        batch_size=8, seed=seed, deterministic=True)
        return [_collect(dataset)[1].tolist() for _ in range(2)]

    first, second = epochs(1)
    assert first != second  # reshuffled between epochs
    assert sorted(first) == sorted(second)  # same images
    assert epochs(1) == [first, second]  # the same sequence on a rerun
    assert epochs(2) != [first, second]


def test_file_cache_is_written_and_named_for_its_images(synthetic_source, synthetic_split,
                                                        tmp_path):
    root, _ = synthetic_source
    kwargs = dict(image_size=16, batch_size=8, cache=tmp_path, shuffle=False)
    first = _collect(pipeline.make_dataset(synthetic_split, root, "test", **kwargs))
    cached = sorted(path.name for path in tmp_path.iterdir())
    assert cached and all(name.startswith("test-16px-bilinear-crop100-") for name in cached)
    second = _collect(pipeline.make_dataset(synthetic_split, root, "test", **kwargs))
    np.testing.assert_array_equal(first[0], second[0])
    fewer = synthetic_split.drop(synthetic_split[synthetic_split["split"] == "test"].index[0])
    _collect(pipeline.make_dataset(fewer, root, "test", **kwargs))
    prefixes = {path.name.split(".")[0] for path in tmp_path.iterdir()}
    assert len(prefixes) == 2  # other images, another cache file


def test_missing_images_are_a_clear_error(synthetic_source, synthetic_split, tmp_path):
    with pytest.raises(DataError, match="missing"):
        pipeline.make_dataset(synthetic_split, tmp_path, "train", image_size=16, batch_size=4)


def test_empty_subset_and_bad_resize_method_are_errors(synthetic_source, synthetic_split):
    root, _ = synthetic_source
    with pytest.raises(DataError, match="no images"):
        pipeline.make_dataset(synthetic_split, root, "holdout", image_size=16, batch_size=4)
    with pytest.raises(ValueError, match="resize_method"):
        pipeline.make_dataset(synthetic_split, root, "train", image_size=16, batch_size=4,
                              resize_method="nearest-ish")


def test_unknown_label_is_an_error(synthetic_source):
    root, _ = synthetic_source
    frame = pd.DataFrame({"path": ["ig/ig_0000.jpg"], "label": ["blast"],
                          "sha256": ["0" * 64], "split": ["train"]})
    with pytest.raises(DataError, match="Unknown labels"):
        pipeline.make_dataset(frame, root, "train", image_size=16, batch_size=4)


def test_central_crop_keeps_the_middle_of_the_image():
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 10:30] = (30, 200, 90)  # the "cell" in the middle half
    png = tf.io.encode_png(image)
    cropped = images.decode_and_resize(png, 8, crop_fraction=0.5).numpy()
    assert (np.abs(cropped.astype(int) - (30, 200, 90)) <= 1).all()
    whole = images.decode_and_resize(png, 8).numpy()
    assert (whole[0, 0] == 0).all()
    with pytest.raises(ValueError, match="crop_fraction"):
        images.decode_and_resize(png, 8, crop_fraction=0)


def test_training_order_works_after_a_global_seed_of_zero(synthetic_source, synthetic_split):
    import keras

    root, _ = synthetic_source
    keras.utils.set_random_seed(0)
    dataset = pipeline.make_dataset(synthetic_split, root, "train", image_size=16, batch_size=8)
    assert len(_collect(dataset)[1]) == (synthetic_split["split"] == "train").sum()


def test_the_cache_file_names_the_images_content_and_the_sample_follows_the_seed(tmp_path):
    frame = pd.DataFrame({"path": [f"ig/{i}.jpg" for i in range(20)],
                          "label": ["ig"] * 20, "sha256": [f"{i:064x}" for i in range(20)],
                          "split": ["train"] * 20})
    name = pipeline._cache_file(tmp_path, frame, "train", "64px")
    assert pipeline._cache_file(tmp_path, frame.copy(), "train", "64px") == name
    # An image replaced under the same name: another cache, never the old images' one.
    replaced = frame.assign(sha256=["f" * 64] + frame["sha256"][1:].tolist())
    assert pipeline._cache_file(tmp_path, replaced, "train", "64px") != name
    first, other = (set(pipeline.sample_training(frame, 5, seed)["path"]) for seed in (1, 2))
    assert len(first) == 5 and first != other
    assert set(pipeline.sample_training(frame, 5, 1)["path"]) == first
