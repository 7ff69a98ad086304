"""Load a saved model with what it needs (class names, input size, crop) and predict images.

The sidecar ``NAME.json`` beside ``NAME.keras`` makes predictions prepare images as training did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import files, models, pipeline, progressbar  # noqa: F401 (models: custom layers)
from helpers.errors import DataError
from helpers.images import RESIZE_METHODS, check_crop_fraction, decode_and_resize
from helpers.labels import CLASS_NAMES

PREDICT_BATCH_SIZE = 64
# Show a progress bar from this many images on.
PROGRESS_THRESHOLD = 256


class ModelFileError(DataError):
    """The path is not a model this project saved (missing, not a .keras file, no sidecar)."""


@dataclass
class LoadedModel:
    """A Keras model and the image preparation it was trained with."""

    model: keras.Model
    path: Path
    label: str
    class_names: tuple[str, ...]
    image_size: int
    resize_method: str
    crop_fraction: float

    def __post_init__(self) -> None:
        self._steps: dict[bool, object] = {}

    def step(self, tta: bool):
        """The traced forward pass over one batch (averaged over 8 views with ``tta``), made
        once per model, so predicting many subsets traces it once."""
        if tta not in self._steps:
            views = dihedral_views if tta else (lambda images: [images])

            @tf.function(reduce_retracing=True)
            def traced(images):
                outputs = [self.model(view, training=False) for view in views(images)]
                return tf.add_n(outputs) / len(outputs)

            def step(images):
                with retracing_expected():
                    return traced(images)

            self._steps[tta] = step
        return self._steps[tta]


class DropRetracingWarning(logging.Filter):
    """Drops TensorFlow's warning that a function "triggered tf.function retracing"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def retracing_expected():
    """Silences TensorFlow's retracing warning within it: scoring several models traces the
    same code once per model, so the warning says nothing and would land in the report."""
    quiet = DropRetracingWarning()
    tf.get_logger().addFilter(quiet)
    try:
        yield
    finally:
        tf.get_logger().removeFilter(quiet)


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``NAME.json`` beside ``NAME.keras``."""
    return Path(model_path).with_suffix(".json")


def write_sidecar(model_path: str | os.PathLike, *, label: str, image_size: int,
                  resize_method: str, crop_fraction: float) -> Path:
    """Write ``NAME.json`` beside ``NAME.keras`` (after the model): label, class names, image
    preparation and the model file's sha256, so the two cannot be mismatched unseen."""
    path = sidecar_path(model_path)
    files.write_json({
        "label": label, "class_names": list(CLASS_NAMES), "image_size": image_size,
        "resize_method": resize_method, "crop_fraction": crop_fraction,
        "model_sha256": files.file_sha256(model_path),
        "input": "RGB 0-255: central crop_fraction of each side, resized to image_size x "
                 "image_size (helpers.images.decode_and_resize)"}, path)
    return path


SIDECAR_KEYS = {"label": str, "class_names": list, "image_size": int, "resize_method": str,
                "crop_fraction": (int, float)}
_KIND_NAMES = {str: "text", list: "a list", int: "a whole number", (int, float): "a number"}
# How far a row of outputs may be from summing to 1 (float16 softmax outputs are rounded).
PROBABILITY_TOLERANCE = 1e-2


def _sidecar_problems(info: object) -> list[str]:
    """What is wrong with a sidecar's content (empty: nothing)."""
    if not isinstance(info, dict):
        return ["it is not a JSON object"]
    problems = [f"{key} missing or not {_KIND_NAMES[kind]}"
                for key, kind in SIDECAR_KEYS.items()
                if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool)]
    if problems:
        return problems
    names = info["class_names"]
    if not names or not all(isinstance(name, str) and name for name in names):
        problems.append(f"class_names must be non-empty strings, got {names!r}")
    elif len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        problems.append(f"class_names repeats {', '.join(repeated)}")
    elif names != list(CLASS_NAMES):  # outputs read in another order: labels swapped
        differing = [f"output {index} {name!r} where the study has {study!r}"
                     for index, (name, study) in enumerate(zip(names, CLASS_NAMES,
                                                               strict=False))
                     if name != study][:3]
        problems.append(
            f"class_names must be the study's {len(CLASS_NAMES)} classes in its order "
            f"({', '.join(CLASS_NAMES)}), else every figure would swap labels; "
            + ("; ".join(differing) if differing else f"it names {len(names)} classes"))
    if info["image_size"] <= 0:
        problems.append(f"image_size must be positive, got {info['image_size']}")
    if info["resize_method"] not in RESIZE_METHODS:
        problems.append(f"resize_method {info['resize_method']!r} is none of "
                        f"{', '.join(RESIZE_METHODS)}")
    try:
        check_crop_fraction(info["crop_fraction"])
    except ValueError as error:
        problems.append(str(error))
    return problems


def read_sidecar(path: Path) -> dict:
    """A sidecar's content, checked; ModelFileError names the file and what is wrong."""
    try:
        info = files.read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path} is not readable JSON ({error}). Copy it again from the "
                             "run folder's models/.") from None
    problems = _sidecar_problems(info)
    if problems:
        raise ModelFileError(f"{path} is damaged: {'; '.join(problems)}. Copy it again from "
                             "the run folder's models/.")
    return info


def check_probabilities(probabilities: np.ndarray, path: Path) -> None:
    """ModelFileError unless every row is a probability distribution (a softmax's output)."""
    sums = probabilities.sum(axis=1)
    if (np.isfinite(probabilities).all() and probabilities.min() >= -PROBABILITY_TOLERANCE
            and probabilities.max() <= 1 + PROBABILITY_TOLERANCE
            and np.abs(sums - 1).max() <= PROBABILITY_TOLERANCE):
        return
    raise ModelFileError(
        f"{path} gives outputs that are not class probabilities (values from "
        f"{np.nanmin(probabilities):.4g} to {np.nanmax(probabilities):.4g}, rows summing to "
        f"{np.nanmin(sums):.4g}-{np.nanmax(sums):.4g}): its last layer must be a softmax, as "
        "the training notebooks build it.")


def load_model(model_path: str | os.PathLike) -> LoadedModel:
    """Load ``NAME.keras`` and its ``NAME.json``; ModelFileError says what is wrong."""
    path = Path(model_path)
    if path.is_dir():
        inside = sorted(path.glob("*.keras"))
        hint = f" (it holds {', '.join(p.name for p in inside[:4])})" if inside else ""
        raise ModelFileError(f"{path} is a folder: give the model file NAME.keras in it{hint}.")
    if not path.is_file():
        raise ModelFileError(f"Model file not found: {path}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a Keras model file (.keras, as saved by "
                             "a training notebook).")
    info_path = sidecar_path(path)
    if not info_path.is_file():
        raise ModelFileError(
            f"{info_path.name} not found beside {path.name}: it holds the class names, input "
            "size, resize method and crop the model was trained with. Copy it from the run "
            "folder's models/ together with the model.")
    info = read_sidecar(info_path)
    recorded = info.get("model_sha256")
    if recorded is not None and recorded != files.file_sha256(path):
        raise ModelFileError(
            f"{path.name} is not the model {info_path.name} was written for (its sha256 "
            f"differs from the {str(recorded)[:12]}... recorded there): copy the two from the "
            "same run folder, or train the model again.")
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a damaged or foreign file
        raise ModelFileError(f"Could not load {path} as a Keras model: {error}") from error
    input_shape, output_shape = model.input_shape, model.output_shape
    if not (isinstance(input_shape, tuple) and len(input_shape) == 4
            and isinstance(output_shape, tuple) and len(output_shape) == 2):
        raise ModelFileError(f"{path.name} takes {input_shape} and gives {output_shape}: a model "
                             "of this study takes a batch of RGB images and gives one row of "
                             "class probabilities per image.")
    size = info["image_size"]
    if input_shape[-1] != 3 or any(side not in (None, size) for side in input_shape[1:3]):
        raise ModelFileError(f"{path.name} takes images of shape {input_shape[1:]} but "
                             f"{info_path.name} says {size}x{size} RGB: the sidecar belongs "
                             "to another model. Copy both from the same run folder.")
    n_outputs = output_shape[-1]
    if n_outputs != len(info["class_names"]):
        raise ModelFileError(f"{path.name} has {n_outputs} outputs but {info_path.name} names "
                             f"{len(info['class_names'])} classes.")
    loaded = LoadedModel(model=model, path=path, label=info["label"],
                         class_names=tuple(info["class_names"]), image_size=size,
                         resize_method=info["resize_method"],
                         crop_fraction=info["crop_fraction"])
    # Fail before any work on a model without a softmax (every batch is checked as well);
    # one eager call, as tracing the step here would cost more than it checks.
    check_probabilities(np.asarray(model(tf.fill((1, size, size, 3), 128.0), training=False),
                                   dtype=np.float32), path)
    return loaded


def image_dataset(paths: Sequence[str | os.PathLike], loaded: LoadedModel,
                  batch_size: int = PREDICT_BATCH_SIZE) -> tf.data.Dataset:
    """Batches of float32 0-255 images prepared as the model was trained, in ``paths`` order.

    The files must be decodable (audit them first: ``helpers.audit.inspect_file``)."""
    dataset = tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
    dataset = dataset.map(
        lambda path: tf.cast(decode_and_resize(tf.io.read_file(path), loaded.image_size,
                                               loaded.resize_method, loaded.crop_fraction),
                             tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return (dataset.batch(batch_size).with_options(pipeline.dataset_options(deterministic=True))
            .prefetch(tf.data.AUTOTUNE))


def dihedral_views(images: tf.Tensor) -> list[tf.Tensor]:
    """The 8 flips and 90-degree rotations of a batch of square images (identity first)."""
    views = []
    for flipped in (images, tf.image.flip_left_right(images)):
        views += [tf.image.rot90(flipped, k) for k in range(4)]
    return views


def predict_probabilities(loaded: LoadedModel, paths: Sequence[str | os.PathLike],
                          tta: bool = False, batch_size: int = PREDICT_BATCH_SIZE,
                          progress: bool | None = None) -> np.ndarray:
    """Class probabilities ``[len(paths), n_classes]`` for image files.

    ``tta`` averages over the 8 flips and rotations (cells have no orientation), at 8x the cost.
    """
    n_classes = len(loaded.class_names)
    if not len(paths):
        return np.zeros((0, n_classes), dtype=np.float32)
    batches = image_dataset(paths, loaded, batch_size)
    if progress is None:
        progress = len(paths) >= PROGRESS_THRESHOLD
    bar = (progressbar.Progress(len(paths), "predict" + (" (TTA x8)" if tta else ""),
                                     "image") if progress else None)
    step = loaded.step(tta)
    outputs = []
    for images in batches:
        probabilities = step(images).numpy()
        check_probabilities(probabilities, loaded.path)
        outputs.append(probabilities)
        if bar is not None:
            bar.update(len(probabilities))
    if bar is not None:
        bar.close()
    return np.concatenate(outputs).astype(np.float32)
