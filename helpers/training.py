"""Training machinery: devices and precision, seeds, learning rates, and the standard callbacks.

Everything a training run needs besides the model and the data, so the notebooks show only
the decisions (model, learning rate, epochs) and every run behaves the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

LR_STRATEGIES = ("constant", "schedule", "plateau")


# -- devices and precision -------------------------------------------------------------------

def choose_strategy_kind(n_gpus: int, tpu_available: bool) -> str:
    """"tpu" when a TPU is attached, "mirrored" with several GPUs, else "default"."""
    if tpu_available:
        return "tpu"
    return "mirrored" if n_gpus > 1 else "default"


def _connect_tpu():
    """Return a TPU cluster resolver when a (Colab) TPU is attached, else None."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None


def select_strategy() -> tf.distribute.Strategy:
    """The distribution strategy for this machine (see ``choose_strategy_kind``).

    The global batch size is the per-replica one times ``strategy.num_replicas_in_sync``.
    """
    resolver = _connect_tpu() if os.environ.get("COLAB_TPU_ADDR") or os.environ.get(
        "TPU_NAME") else None
    kind = choose_strategy_kind(len(tf.config.list_logical_devices("GPU")), resolver is not None)
    if kind == "tpu":
        return tf.distribute.TPUStrategy(resolver)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def choose_precision(strategy_kind: str, gpu_compute_capabilities: list[tuple[int, int]]) -> str:
    """The Keras dtype policy that speeds training up on this hardware.

    bfloat16 on TPUs; float16 on GPUs with tensor cores (compute capability 7.0 or newer);
    float32 on CPUs and older GPUs, where reduced precision gains nothing.
    """
    if strategy_kind == "tpu":
        return "mixed_bfloat16"
    if gpu_compute_capabilities and min(gpu_compute_capabilities) >= (7, 0):
        return "mixed_float16"
    return "float32"


def configure_precision(strategy: tf.distribute.Strategy) -> str:
    """Set and return the global dtype policy chosen by ``choose_precision``."""
    kind = "tpu" if isinstance(strategy, tf.distribute.TPUStrategy) else "other"
    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    policy = choose_precision(kind, capabilities)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def device_names() -> list[str]:
    """Human-readable names of the devices TensorFlow sees."""
    names = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device)
        names.append(f"{device.device_type}: {details.get('device_name', device.name)}")
    return names


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TF ops deterministic.

    Determinism costs speed on GPUs and makes some ops raise; use it for checks, not for the
    full study.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


# -- learning rates --------------------------------------------------------------------------

def learning_rate(strategy: str, base_rate: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: int = 1):
    """The learning rate to give the optimizer for one of LR_STRATEGIES.

    "constant": ``base_rate`` throughout. "schedule": linear warm-up over ``warmup_epochs``
    then cosine decay to zero at ``epochs``. "plateau": ``base_rate``, lowered by
    ReduceLROnPlateau (added by ``make_callbacks``) when validation loss stalls.
    """
    if strategy not in LR_STRATEGIES:
        raise ValueError(f"lr strategy must be one of {LR_STRATEGIES}, got {strategy!r}")
    if strategy != "schedule":
        return base_rate
    warmup_steps = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base_rate / 10, warmup_target=base_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(1, epochs * steps_per_epoch - warmup_steps))


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer uses at its current step."""
    rate = optimizer.learning_rate
    return float(rate(optimizer.iterations) if callable(rate) else keras.ops.convert_to_numpy(
        rate))


# -- callbacks -------------------------------------------------------------------------------

class EpochTiming(keras.callbacks.Callback):
    """Adds timing and the learning rate to each epoch's logs (put it before CSVLogger).

    ``epoch_seconds`` covers training and validation; ``images_per_second`` is the training
    pass alone (images per epoch over the seconds until validation starts).
    """

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._training_ended = None

    def on_test_begin(self, logs=None):
        if getattr(self, "_training_ended", 0) is None:  # the validation inside fit()
            self._training_ended = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        now = time.perf_counter()
        logs["epoch_seconds"] = now - self._started
        logs["images_per_second"] = self.images_per_epoch / (
            (self._training_ended or now) - self._started)
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)  # at the last step


class EpochSeeds(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of (seed, epoch) alone.

    At each epoch start it sets the pipeline's epoch counter (the shuffle order, see
    ``pipeline.make_dataset``) and re-seeds the model's random layers (augmentation, dropout).
    Their generator states are not in Keras checkpoints, so without this a run resumed by
    BackupAndRestore would replay the first epoch's augmentations instead of continuing.
    """

    def __init__(self, counter: tf.Variable | None, seed: int):
        super().__init__()
        self.counter = counter
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        if self.counter is not None:
            self.counter.assign(epoch)
        states = [variable for variable in self.model.non_trainable_variables
                  if variable.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            state.assign(np.array([self.seed * 10_007 + index, epoch], dtype=state.dtype))


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every trainable BatchNormalization layer of ``model``, nested models included.

    Frozen ones (ResNet50's) keep their ImageNet statistics and are left out.
    """
    found, pending = [], list(model.layers)
    while pending:
        layer = pending.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
        pending.extend(getattr(layer, "layers", []))
    return found


def recalibrate_batchnorm(model: keras.Model, dataset: tf.data.Dataset, batches: int) -> None:
    """Replace BatchNorm moving statistics with their exact average over ``batches`` batches.

    The moving averages that inference uses are updated during training, each step with the
    weights of that step. At a high learning rate the weights move faster than the averages
    follow, so validation runs with statistics of older weights: accuracy jumps from epoch to
    epoch although training accuracy rises steadily. Recomputing the statistics with the
    current weights removes the lag ("precise BatchNorm"); the weights are not changed.
    """
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance))
    try:
        for number, (images, _) in enumerate(dataset.take(batches), start=1):
            for layer in layers:
                layer.momentum = (number - 1) / number  # a running mean of the batch statistics
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recalibrates BatchNorm statistics on training batches before each validation in fit()."""

    def __init__(self, dataset: tf.data.Dataset, batches: int = 16):
        super().__init__()
        self.dataset = dataset
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self._in_fit = True

    def on_test_begin(self, logs=None):
        if getattr(self, "_in_fit", False):
            recalibrate_batchnorm(self.model, self.dataset, self.batches)
            self._in_fit = False


class TrainingStoppedError(Exception):
    """Raised by StopAfterEpoch: the run stopped on purpose and can be resumed."""


class StopAfterEpoch(keras.callbacks.Callback):
    """Stops training with TrainingStoppedError after epoch ``epoch`` (1-based), as a crash
    would, once BackupAndRestore has saved it: a way to see and test resuming."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise TrainingStoppedError(f"Stopped after epoch {self.epoch} as asked.")


def best_logged(history_csv: Path, monitor: str = "val_loss") -> float | None:
    """The lowest ``monitor`` value in a history CSV, or None when there is none yet."""
    if not history_csv.exists() or history_csv.stat().st_size == 0:
        return None
    history = pd.read_csv(history_csv)
    return float(history[monitor].min()) if monitor in history and len(history) else None


def make_callbacks(run_dir: str | os.PathLike, name: str, *, lr_strategy: str,
                   images_per_epoch: int, patience: int = 5,
                   epoch_counter: tf.Variable | None = None, seed: int = 0,
                   tensorboard: bool = False,
                   plateau_factor: float = 0.3, plateau_patience: int = 2,
                   backup_name: str | None = None,
                   recalibration_data: tf.data.Dataset | None = None,
                   recalibration_batches: int = 16) -> list[keras.callbacks.Callback]:
    """The standard callbacks of a training run named ``name`` (e.g. "cnn").

    - ``RUN_DIR/models/NAME.keras``: the best model by validation loss; a resumed run or a
      second training phase only replaces it with a better one than the history file's best.
    - EarlyStopping on validation loss, restoring the best weights.
    - EpochSeeds: the shuffle order (``epoch_counter``) and the model's random layers follow
      ``seed`` and the epoch number, so a resumed run matches an uninterrupted one.
    - ReduceLROnPlateau when ``lr_strategy`` is "plateau".
    - PreciseBatchNorm on ``recalibration_batches`` batches of ``recalibration_data`` (the
      training data) before each validation, when given.
    - ``RUN_DIR/history/NAME.csv``: one row per epoch, appended across resumes and phases,
      with epoch seconds, images/s and the learning rate.
    - BackupAndRestore in ``RUN_DIR/backup/BACKUP_NAME`` (default NAME; one per training
      phase): a killed run resumes where it stopped.
    - TensorBoard logs in ``RUN_DIR/tensorboard/NAME`` when asked.
    """
    if lr_strategy not in LR_STRATEGIES:
        raise ValueError(f"lr strategy must be one of {LR_STRATEGIES}, got {lr_strategy!r}")
    run_dir = Path(run_dir)
    for folder in ("models", "history", "backup"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    history_csv = run_dir / "history" / f"{name}.csv"
    callbacks = [keras.callbacks.BackupAndRestore(str(run_dir / "backup" / (backup_name or name))),
                 EpochSeeds(epoch_counter, seed)]
    callbacks += [
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "models" / f"{name}.keras"), monitor="val_loss",
            save_best_only=True, initial_value_threshold=best_logged(history_csv)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                      restore_best_weights=True),
    ]
    if lr_strategy == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=plateau_factor, patience=plateau_patience,
            min_lr=1e-6))
    callbacks.append(EpochTiming(images_per_epoch))  # before PreciseBatchNorm: times training
    if recalibration_data is not None:
        callbacks.append(PreciseBatchNorm(recalibration_data, recalibration_batches))
    callbacks.append(keras.callbacks.CSVLogger(str(history_csv), append=True))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / name)))
    return callbacks
