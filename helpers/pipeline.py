"""From a split to a tf.data pipeline: decode, resize, cache, shuffle, batch, prefetch.

Only loads images (augmentation lives in the models); cached as uint8 after resizing, a
quarter of float32's memory, and cast to float32 0-255 per batch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import tensorflow as tf

from helpers import images
from helpers import split as split_module
from helpers.errors import DataError
from helpers.labels import CLASS_NAMES


def _shuffle_per_pass(dataset: tf.data.Dataset, size: int, seed: int,
                      epoch_counter: tf.Variable | None) -> tf.data.Dataset:
    """Shuffle with a seed made of ``seed`` and the pass number held by ``epoch_counter``."""
    counter = epoch_counter if epoch_counter is not None else tf.Variable(
        0, dtype=tf.int64, trainable=False)

    def one_pass(_):
        # A fixed graph-level seed for this function: TF compares a global seed of 0 with a
        # tensor op seed in Python and fails (tf.random.set_seed(0) before this would break).
        tf.random.set_seed(1)
        pass_number = counter.assign_add(1) - 1
        return dataset.shuffle(size, seed=seed * 1_000_003 + pass_number,
                               reshuffle_each_iteration=False)

    # flat_map hides the length from Keras, which then warns that the input "ran out".
    return tf.data.Dataset.from_tensors(0).flat_map(one_pass).apply(
        tf.data.experimental.assert_cardinality(size))


def dataset_options(deterministic: bool) -> tf.data.Options:
    """The options of every dataset the study iterates: ``deterministic`` order, and where no
    GPU is seen, no autotuning. On 2 CPU cores its optimizing thread held each iterator's end
    until its next wake-up, which padded a 20 s CNN epoch to 40 (docs/performance.md);
    without it, ``AUTOTUNE`` maps still run on every core."""
    options = tf.data.Options()
    options.deterministic = deterministic
    if not tf.config.list_logical_devices("GPU"):  # GPUs: not measured, TensorFlow's default
        options.autotune.enabled = False
    return options


def _cache_file(cache_dir: Path, frame: pd.DataFrame, subset: str, processing: str) -> str:
    """A cache file name unique to the images and their processing: no stale cache is read."""
    fingerprint = hashlib.sha256(
        "\n".join(frame["path"] + ":" + frame["sha256"]).encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return str(cache_dir / f"{subset}-{processing}-{fingerprint}")


def sample_training(split: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """``split`` with a fixed sample of ``max_images`` training images (0: all)."""
    if not max_images:
        return split
    train_rows = split[split["split"] == "train"]
    keep = train_rows.sample(n=min(max_images, len(train_rows)), random_state=seed).index
    return split[(split["split"] != "train") | split.index.isin(keep)]


def make_dataset(split: pd.DataFrame, data_root: str | os.PathLike, subset: str, *,
                 image_size: int, batch_size: int, cache: str | os.PathLike | None = "memory",
                 shuffle: bool | None = None, seed: int = 0, deterministic: bool = False,
                 resize_method: str = "bilinear", crop_fraction: float = 1.0,
                 epoch_counter: tf.Variable | None = None) -> tf.data.Dataset:
    """Build the batched dataset of one subset: (float32 0-255 images, int32 label indices).

    ``cache`` is "memory", a folder for file caches, or None; ``shuffle`` defaults to "train"
    only. Pass ``k``'s order depends only on ``seed`` and ``k`` (from ``epoch_counter``), so
    a resumed run sees the same order as one that never stopped.
    """
    if resize_method not in images.RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {images.RESIZE_METHODS}, got "
                         f"{resize_method!r}")
    frame = split_module.subset_rows(split, subset)
    unknown = set(frame["label"]) - set(CLASS_NAMES)
    if unknown:
        raise DataError(f"Unknown labels in the split: {sorted(unknown)}")
    data_root = Path(data_root)
    paths = [str(data_root / path) for path in frame["path"]]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{len(missing)} image(s) of the split are missing under {data_root}, "
                        f"e.g. {missing[0]}. Is the data folder the one the split was made from?")
    labels = frame["label"].map(CLASS_NAMES.index).astype("int32").to_numpy()
    if shuffle is None:
        shuffle = subset == "train"
    # Unshuffled data keeps the split's order, so predictions line up with file names.
    deterministic = deterministic or not shuffle

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.map(
        lambda path, label: (images.decode_and_resize(tf.io.read_file(path), image_size,
                                                      resize_method, crop_fraction), label),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if cache == "memory":
        dataset = dataset.cache()
    elif cache is not None:
        processing = f"{image_size}px-{resize_method}-crop{round(crop_fraction * 100)}"
        dataset = dataset.cache(_cache_file(Path(cache), frame, subset, processing))
    if shuffle:
        dataset = _shuffle_per_pass(dataset, len(frame), seed, epoch_counter)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda images, batch_labels: (tf.cast(images, tf.float32),
                                                        batch_labels),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return dataset.with_options(dataset_options(deterministic)).prefetch(tf.data.AUTOTUNE)
