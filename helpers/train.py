"""Train one model of the study on a prepared run folder, from the command line.

    python -m helpers.train cnn --run-dir runs/latest [--image-size 64] [--epochs 18] ...
    python -m helpers.train resnet50 --run-dir runs/latest [--weights imagenet|none|FILE] ...

The run folder must hold ``data/split.csv`` (``python -m helpers.data prepare``). NAME is the
model (``cnn``, ``resnet50``) unless ``--name`` gives another. The model is
saved as ``RUN_DIR/models/NAME.keras`` with ``NAME.json`` beside it (class names, input size,
resize method, crop), ResNet50's phase-1 model as ``NAME_frozen.keras`` and the phase
boundary in ``history/NAME_phases.json``, the history in ``RUN_DIR/history/NAME.csv``
(both phases), its configuration, library
versions, devices and the split's hash in ``RUN_DIR/config/NAME.json``, and its validation
metrics in ``RUN_DIR/metrics/NAME_validation.json``. Killed and restarted with the same
arguments, a run resumes from its last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import files, metrics, models, pipeline, split, training
from helpers.errors import DataError
from helpers.labels import CLASS_NAMES


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in the run folder."""

    model: str = "cnn"
    name: str = ""  # the run's files are NAME.keras, NAME.csv...; default: the model's name
    image_size: int = 64
    batch_size: int = 64
    epochs: int = 14  # with image_size 64 and crop 0.7: the CPU configuration, ~35 min here
    learning_rate: float = 2e-3
    lr_strategy: str = "schedule"
    warmup_epochs: int = 1
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 42
    deterministic: bool = False
    xla: bool = False  # compile the training step with XLA (often faster on GPUs, slower on CPUs)
    resize_method: str = "bilinear"
    crop_fraction: float = 0.7  # central share of each side kept: the cell, less background
    cache: str = "memory"
    augment: bool = True
    batchnorm_momentum: float = 0.9
    stem_stride: int = 1  # CNN only: 2 adds a strided first conv (see models.build_cnn)
    # ResNet50 only
    weights: str = "imagenet"
    fine_tune_epochs: int = 10
    fine_tune_blocks: int = 3
    fine_tune_learning_rate: float = 1e-4  # 20x below phase 1: small steps keep ImageNet features
    max_images: int = 0  # use at most this many training images (0: all); for quick checks
    # Recompute BatchNorm statistics on this many training images before each validation
    # (0: off, Keras's moving averages only); see training.recalibrate_batchnorm.
    precise_batchnorm_images: int = 1024
    stop_after_epoch: int = 0  # simulate a crash after this epoch (0: never); shows resuming

    @property
    def run_name(self) -> str:
        """What the run's files are called: ``name``, or the model when no name is given."""
        return self.name or self.model


def git_commit() -> str:
    """The checkout's commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_run(run_dir: Path, config: TrainConfig, split_csv: Path, precision: str) -> None:
    """Write what reproduces this run: config, split hash, versions, devices, commit."""
    files.write_json({
        "config": asdict(config),
        "split_csv": str(split_csv),
        "split_sha256": files.file_sha256(split_csv),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
        "platform": platform.platform(),
        "devices": training.device_names(),
        "precision": precision,
        "git_commit": git_commit(),
    }, run_dir / "config" / f"{config.run_name}.json")


def model_label(config: TrainConfig) -> str:
    """How results of this model are labelled everywhere: random init is never "transfer"."""
    if config.model == "cnn":
        return "Baseline CNN"
    if config.weights == "none":
        return "ResNet50, random init"
    return "ResNet50, ImageNet, frozen then fine-tuned"


def save_model_info(run_dir: Path, config: TrainConfig) -> Path:
    """The sidecar that makes a saved model usable on its own (class names, input size...)."""
    path = run_dir / "models" / f"{config.run_name}.json"
    files.write_json({"label": model_label(config), "class_names": list(CLASS_NAMES),
                "image_size": config.image_size, "resize_method": config.resize_method,
                "crop_fraction": config.crop_fraction,
                "input": "RGB 0-255: central crop_fraction of each side, resized to "
                         "image_size x image_size (helpers.pipeline.decode_and_resize)"}, path)
    return path


def predict_labels(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices over an unshuffled dataset."""
    true = np.concatenate([labels.numpy() for _, labels in dataset])
    probabilities = model.predict(dataset.map(lambda images, _: images), verbose=0)
    return true, np.argmax(probabilities, axis=1)


def quick_metrics(model: keras.Model, dataset: tf.data.Dataset) -> dict:
    """Accuracy and macro-F1 (the full evaluation is ``helpers.evaluate``)."""
    true, predicted = predict_labels(model, dataset)
    return {"n_images": int(len(true)), "accuracy": metrics.accuracy(true, predicted),
            "macro_f1": metrics.macro_f1(true, predicted)}


def clear_finished_run(run_dir: Path, name: str) -> bool:
    """Delete the files of run NAME when it finished before, so training starts afresh.

    A run finished when its validation metrics were written (the last step). An unfinished
    run keeps its files: training resumes from them (backups, phase 1's model, history).
    """
    if not (run_dir / "metrics" / f"{name}_validation.json").exists():
        return False
    for relative in (f"history/{name}.csv", f"history/{name}_phases.json",
                     f"models/{name}.keras", f"models/{name}_frozen.keras",
                     f"models/{name}.json", f"metrics/{name}_validation.json"):
        (run_dir / relative).unlink(missing_ok=True)
    return True


def train(config: TrainConfig, run_dir: Path) -> dict:
    """Train ``config.model`` on the run folder's split; returns validation metrics.

    An unfinished run of the same name in ``run_dir`` is resumed; a finished one is
    replaced by a new run.
    """
    run_dir = Path(run_dir)
    split_frame, data_root, split_csv = split.load_run_split(run_dir)
    if clear_finished_run(run_dir, config.run_name):
        print(f"{config.run_name} finished before in {run_dir}: training it again from scratch")
    training.set_seed(config.seed, config.deterministic)
    strategy = training.select_strategy()
    precision = training.configure_precision(strategy)
    record_run(run_dir, config, split_csv, precision)
    if config.max_images:
        train_rows = split_frame[split_frame["split"] == "train"]
        keep = train_rows.sample(n=min(config.max_images, len(train_rows)),
                                 random_state=config.seed).index
        split_frame = split_frame[(split_frame["split"] != "train") | split_frame.index.isin(keep)]
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    cache = None if config.cache == "none" else config.cache
    datasets = {
        subset: pipeline.make_dataset(
            split_frame, data_root, subset, image_size=config.image_size,
            batch_size=batch_size, cache=cache, seed=config.seed,
            deterministic=config.deterministic, resize_method=config.resize_method,
            crop_fraction=config.crop_fraction,
            epoch_counter=epoch_counter if subset == "train" else None)
        for subset in ("train", "validation")
    }
    n_train = int((split_frame["split"] == "train").sum())
    steps_per_epoch = math.ceil(n_train / batch_size)

    def fit(model: keras.Model, phase: str, epochs: int, initial_epoch: int = 0) -> None:
        callbacks = training.make_callbacks(
            run_dir, config.run_name, lr_strategy=config.lr_strategy, images_per_epoch=n_train,
            patience=config.patience, epoch_counter=epoch_counter, seed=config.seed,
            backup_name=f"{config.run_name}_{phase}",
            recalibration_data=datasets["train"] if config.precise_batchnorm_images else None,
            recalibration_batches=math.ceil(config.precise_batchnorm_images / batch_size))
        if config.stop_after_epoch:
            callbacks.append(training.StopAfterEpoch(config.stop_after_epoch))
        model.fit(datasets["train"], validation_data=datasets["validation"], epochs=epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=2,
                  shuffle=False)  # the pipeline shuffles

    def compiled(model: keras.Model, base_rate: float, epochs: int) -> keras.Model:
        rate = training.learning_rate(config.lr_strategy, base_rate, steps_per_epoch, epochs,
                                      config.warmup_epochs)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=rate,
                                             weight_decay=config.weight_decay),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"],
            jit_compile=config.xla)
        return model

    models_dir = run_dir / "models"
    if config.model == "cnn":
        with strategy.scope():
            model = compiled(models.build_cnn(
                config.image_size, augment=config.augment,
                batchnorm_momentum=config.batchnorm_momentum,
                stem_stride=config.stem_stride, seed=config.seed),
                config.learning_rate, config.epochs)
        fit(model, "train", config.epochs)
    else:
        name = config.run_name
        frozen_model = models_dir / f"{name}_frozen.keras"
        phases_json = run_dir / "history" / f"{name}_phases.json"
        if not frozen_model.exists():  # phase 1; a rerun after it finished goes on to phase 2
            weights = None if config.weights == "none" else config.weights
            with strategy.scope():
                model = compiled(models.build_resnet50(
                    config.image_size, weights=weights, augment=config.augment,
                    seed=config.seed), config.learning_rate, config.epochs)
            fit(model, "frozen", config.epochs)
            frozen_epochs = len(pd.read_csv(run_dir / "history" / f"{name}.csv"))
            files.write_json({"frozen_epochs": frozen_epochs}, phases_json)
            shutil.copyfile(models_dir / f"{name}.keras", frozen_model)
        if config.fine_tune_epochs > 0:
            # Phase 2 starts from phase 1's best weights and continues its epoch count.
            frozen_epochs = json.loads(phases_json.read_text())["frozen_epochs"]
            with strategy.scope():
                model = keras.saving.load_model(frozen_model)
                models.unfreeze_top_blocks(model, config.fine_tune_blocks)
                compiled(model, config.fine_tune_learning_rate, config.fine_tune_epochs)
            fit(model, "finetune", frozen_epochs + config.fine_tune_epochs,
                initial_epoch=frozen_epochs)
    best = keras.saving.load_model(run_dir / "models" / f"{config.run_name}.keras")
    save_model_info(run_dir, config)
    metrics = quick_metrics(best, datasets["validation"])
    files.write_json(metrics, run_dir / "metrics" / f"{config.run_name}_validation.json")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["cnn", "resnet50"])
    parser.add_argument("--run-dir", default="runs/latest")
    defaults = TrainConfig()
    for field, value in asdict(defaults).items():
        if field == "model":
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    run_dir = Path(args.pop("run_dir"))
    config = TrainConfig(**args)
    try:
        metrics = train(config, run_dir)
    except (DataError, models.WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except training.TrainingStoppedError as error:
        print(f"{error} Run the same command again to resume.", file=sys.stderr)
        return 3
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
