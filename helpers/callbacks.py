"""The callbacks every ``fit`` of the study gets (``standard_callbacks``).

Hand-written where Keras's own do not give the guarantee: its ModelCheckpoint and
EarlyStopping forget their best value on resume (see docs/guarantees.md).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import files, histories, liveprogress


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer uses at its current step."""
    rate = optimizer.learning_rate
    return float(rate(optimizer.iterations) if callable(rate) else keras.ops.convert_to_numpy(
        rate))


class EpochTiming(keras.callbacks.Callback):
    """Adds timing and the learning rate to each epoch's logs (put it before CSVLogger).

    ``images_per_second`` times the training pass alone, without validation.
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


# Part of every run's recipe, so runs trained with the earlier keys ([seed, epoch], which
# replayed the previous epoch's draws) are trained again rather than kept or resumed.
EPOCH_RANDOMNESS = "generator key hash(seed, layer, epoch), counter 0"


class EpochSeeds(keras.callbacks.Callback):
    """Makes each epoch's randomness (shuffle order, random layers) a function of (seed, epoch).

    Generator states are not in Keras checkpoints, so without this a resumed run would replay
    the first epoch's augmentations. Each (layer, epoch) gets its own key with the counter at
    0: keys [seed, epoch] would make epoch 1's k-th draw epoch 0's (k+1)-th.
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
            state.assign(np.array([layer_epoch_key(self.seed, index, epoch), 0],
                                  dtype=state.dtype))


def layer_epoch_key(seed: int, layer: int, epoch: int) -> int:
    """A hash of (seed, layer, epoch) within 31 bits (as runs were first trained, when
    Keras 3.3 kept the state in uint32)."""
    mixed = np.random.SeedSequence([seed % 2**32, layer, epoch]).generate_state(1)[0]
    return int(mixed) % 2**31


class LiveProgress(keras.callbacks.Callback):
    """Keeps the file ``path`` up to date with ``fit``'s epoch, step and time left, for the
    headless study's terminal line (``helpers.tools.progress``). Written at most once a second
    between epochs; a write that fails warns once and training goes on."""

    def __init__(self, path: Path, run_name: str, phase: str | None = None,
                 steps_per_epoch: int | None = None, clock=time.monotonic,
                 wall_clock=time.time):
        super().__init__()
        self.run_name, self.phase, self.steps_per_epoch = run_name, phase, steps_per_epoch
        self.clock = clock
        self.writer = liveprogress.ProgressWriter(path, clock=clock, wall_clock=wall_clock)
        self._in_fit = False

    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._fit_started = self.clock()
        self._epoch_seconds: list[float] = []
        self._epoch_started: float | None = None
        self._epoch = self._initial = None
        self._step, self._stage = 0, "training"

    def on_epoch_begin(self, epoch, logs=None):
        if self._initial is None:
            self._initial = epoch  # where fit starts: initial_epoch, or where it resumed
        self._epoch, self._step, self._stage = epoch, 0, "training"
        self._epoch_started = self.clock()
        self._first_step_ended = self._last_step_ended = None
        self._write(force=True)

    def on_train_batch_end(self, batch, logs=None):
        self._step = batch + 1
        self._last_step_ended = self.clock()
        if self._first_step_ended is None:
            self._first_step_ended, self._first_step = self._last_step_ended, self._step
        if self.writer.due():
            self._write()

    def _step_seconds(self) -> float | None:
        """The mean step of this epoch after its first (which also builds the graph)."""
        if self._first_step_ended is None or self._step <= self._first_step:
            return None
        return (self._last_step_ended - self._first_step_ended) / (self._step - self._first_step)

    def on_test_begin(self, logs=None):
        if self._in_fit and self._epoch_started is not None:  # the validation inside fit
            self._stage = "validating"
            self._write(force=True)

    def on_test_batch_end(self, batch, logs=None):
        if self._in_fit and self.writer.due():
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_seconds.append(self.clock() - self._epoch_started)
        self._epoch_started, self._stage = None, "training"
        self._step = self._steps() or self._step
        self._write(force=True)

    def on_train_end(self, logs=None):
        self._stage = "ended"
        if self._epoch is not None:
            self._write(force=True)
        self._in_fit = False

    def _steps(self) -> int | None:
        return (self.params or {}).get("steps") or self.steps_per_epoch

    def _write(self, force: bool = False) -> None:
        epochs = int(self.params["epochs"])
        between = self._epoch_started is None  # the epoch in progress ended
        completed = self._epoch + 1 if between else self._epoch
        now = self.clock()
        if self._stage == "ended":
            left = 0.0
        else:
            left = liveprogress.seconds_left(
                self._epoch_seconds, epochs - self._epoch - 1,
                None if between else now - self._epoch_started, self._step, self._steps(),
                self._step_seconds())
        self.writer.write({
            "run": self.run_name, "phase": self.phase, "epoch": self._epoch + 1,
            "epochs": epochs, "step": self._step, "steps": self._steps(),
            "stage": self._stage, "completed": completed, "initial": self._initial,
            "elapsed": now - self._fit_started, "eta": left}, force=force)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every trainable BatchNormalization layer of ``model``, nested models included."""
    found, pending = [], list(model.layers)
    while pending:
        layer = pending.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
        pending.extend(getattr(layer, "layers", []))
    return found


def recalibrate_batchnorm(model: keras.Model, dataset: tf.data.Dataset, batches: int) -> None:
    """Replace BatchNorm moving statistics with their exact average over ``batches`` batches.

    At a high learning rate the moving averages lag the weights, so validation accuracy jumps
    between epochs; recomputing them with the current weights removes the lag.
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


class TrainingDivergedError(RuntimeError):
    """The loss of a run went non-finite: the run is discarded, never kept."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss (a batch's or ``val_loss``) by raising
    ``diverged(epoch, batch, values)``, so a diverged run's figures never read as results.
    """

    def __init__(self, diverged):
        super().__init__()
        self.diverged = diverged

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise self.diverged(self.epoch, batch, {"loss": float(loss)})

    def on_epoch_end(self, epoch, logs=None):
        values = {name: float(value) for name, value in (logs or {}).items()
                  if name in ("loss", "val_loss")}
        if not all(math.isfinite(value) for value in values.values()):
            raise self.diverged(epoch, None, values)


class StopAfterEpoch(keras.callbacks.Callback):
    """Stops training with TrainingStoppedError after epoch ``epoch`` (1-based), as a crash
    would, once BackupAndRestore has saved it: a way to see and test resuming."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise TrainingStoppedError(f"Stopped after epoch {self.epoch} as asked.")


class BatchNormStatisticsProbe(keras.callbacks.Callback):
    """Logs ``val_accuracy_recomputed_bn``: validation accuracy with BatchNorm statistics
    recomputed; the moving averages are restored afterwards, so training is unchanged.
    """

    def __init__(self, training_data: tf.data.Dataset, validation_data: tf.data.Dataset,
                 batches: int):
        super().__init__()
        self.training_data = training_data
        self.validation_data = validation_data
        self.batches = batches

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        layers = batchnorm_layers(self.model)
        saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
        recalibrate_batchnorm(self.model, self.training_data, self.batches)
        correct = total = 0
        for images, labels in self.validation_data:
            predicted = np.argmax(self.model(images, training=False), axis=-1)
            correct += int(np.sum(predicted == labels.numpy()))
            total += len(predicted)
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        logs["val_accuracy_recomputed_bn"] = correct / total


def first_non_finite(history_csv: Path) -> tuple[int, dict] | None:
    """The first epoch whose loss or validation loss is not finite, with those values, or None."""
    history = histories.read_history(history_csv)
    if history is None:
        return None
    losses = history[[column for column in ("loss", "val_loss") if column in history]]
    bad = ~np.isfinite(losses.to_numpy(dtype=float)).all(axis=1)
    if not bad.any():
        return None
    row = history[bad].iloc[0]
    return int(row["epoch"]), {column: row[column] for column in losses.columns}


def best_logged(history_csv: Path, monitor: str = "val_loss", from_epoch: int = 0) -> float | None:
    """The lowest ``monitor`` value logged from epoch ``from_epoch`` (0-based) on, or None."""
    history = histories.read_history(history_csv)
    if history is None:
        return None
    history = history[history["epoch"] >= from_epoch] if "epoch" in history else history
    return float(history[monitor].min()) if monitor in history and len(history) else None


class ForgetRestoredEpoch(keras.callbacks.Callback):
    """Clears the epoch a previous ``fit`` restored from a backup (put it first).

    Keras never resets ``model._initial_epoch``: phase 2 after a resumed phase 1 would start
    at phase 1's resumed epoch instead of its own ``initial_epoch``.
    """

    def on_train_begin(self, logs=None):
        if getattr(self.model, "_initial_epoch", None) is not None:
            self.model._initial_epoch = None


class BuildBeforeTracing(keras.callbacks.Callback):
    """Creates the metrics' and optimizer's variables before ``fit`` traces its step (put it
    before BackupAndRestore, which may load them).

    Otherwise a ``tf.function`` that creates variables is traced twice (see
    docs/performance.md). Calls Keras's private ``_symbolic_build``, as Keras 3.5+ does under
    a strategy; without it, only time is lost.
    """

    def __init__(self, element_spec):
        super().__init__()
        self.element_spec = element_spec

    def on_train_begin(self, logs=None):
        symbolic_build = getattr(self.model, "_symbolic_build", None)
        if symbolic_build is None or "data_batch" not in inspect.signature(
                symbolic_build).parameters:
            return
        with self.model.distribute_strategy.scope():
            symbolic_build(data_batch=self.element_spec)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, except that a finished ``fit`` leaves an "all epochs done"
    backup, so a kill before ``TrainingRun.finish`` does not retrain. The previous backup is
    kept too, for a fall-back when one is damaged mid-write."""

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir), delete_checkpoint=False, double_checkpoint=True)
        self.metadata_path = Path(backup_dir) / "training_metadata.json"

    def on_train_end(self, logs=None):
        if self.metadata_path.exists():
            metadata = files.read_json(self.metadata_path)
            files.write_json({**metadata, "epoch": self.params["epochs"]}, self.metadata_path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model after each epoch with a lower validation loss than ``best`` (or every
    epoch with ``every_epoch``), atomically: a kill mid-save leaves the previous one whole."""

    def __init__(self, path: Path, best: float | None, every_epoch: bool = False):
        super().__init__()
        self.path = Path(path)
        self.best = math.inf if best is None else best
        self.every_epoch = every_epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs and (self.every_epoch or logs.get("val_loss", math.inf) < self.best):
            self.best = logs["val_loss"]
            with files.atomic_output(self.path, suffix=".keras") as temporary:
                self.model.save(temporary)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on validation loss that, resumed, counts the epochs already in the
    history since ``from_epoch`` (Keras's would grant ``patience`` more epochs per resume)."""

    def __init__(self, history_csv: Path, from_epoch: int, patience: int):
        super().__init__(monitor="val_loss", patience=patience)
        self.history_csv, self.from_epoch = history_csv, from_epoch

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        history = histories.read_history(self.history_csv)
        if history is None:
            return
        losses = history.loc[history["epoch"] >= self.from_epoch, "val_loss"].to_numpy()
        if len(losses):
            best_at = int(np.argmin(losses))
            self.best = float(losses[best_at])
            self.wait = len(losses) - 1 - best_at


def standard_callbacks(*, checkpoint: Path, history_csv: Path, backup_dir: Path,
                       training_data: tf.data.Dataset, validation_data: tf.data.Dataset,
                       global_batch_size: int, training_images: int, steps_per_epoch: int,
                       epoch_counter: tf.Variable, seed: int, diverged,
                       progress_name: str, progress_phase: str | None,
                       initial_epoch: int = 0, patience: int = 6,
                       precise_batchnorm_images: int = 1024, probe_batchnorm_images: int = 0,
                       stop_after_epoch: int = 0, keep_best: bool = True,
                       ) -> list[keras.callbacks.Callback]:
    """The callbacks for one ``fit`` of a training run, in order.

    ``keep_best=False`` trains as the earlier study did: no early stopping, a checkpoint every
    epoch. BackupAndRestore comes last, so an epoch is backed up only once checkpoint and
    history have it; LiveProgress is added only under the headless study.
    """
    callbacks = [
        ForgetRestoredEpoch(),
        BuildBeforeTracing(training_data.element_spec),
        NonFiniteLossGuard(diverged),
        EpochSeeds(epoch_counter, seed),
        BestCheckpoint(checkpoint, best_logged(history_csv, from_epoch=initial_epoch),
                       every_epoch=not keep_best),
    ]
    if keep_best:
        callbacks.append(ResumableEarlyStopping(history_csv, initial_epoch, patience))
    # Before PreciseBatchNorm: it times training alone.
    callbacks.append(EpochTiming(training_images))
    if precise_batchnorm_images:
        callbacks.append(PreciseBatchNorm(
            training_data, math.ceil(precise_batchnorm_images / global_batch_size)))
    if probe_batchnorm_images:
        callbacks.append(BatchNormStatisticsProbe(
            training_data, validation_data,
            math.ceil(probe_batchnorm_images / global_batch_size)))
    progress_file = liveprogress.path_from_environment()
    if progress_file is not None:  # run by the headless study, which shows it
        callbacks.append(LiveProgress(progress_file, progress_name,
                                                   progress_phase, steps_per_epoch))
    callbacks.append(keras.callbacks.CSVLogger(str(history_csv), append=True))
    callbacks.append(BackupAndRestore(backup_dir))
    if stop_after_epoch:
        callbacks.append(StopAfterEpoch(stop_after_epoch))
    return callbacks
