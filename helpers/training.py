"""Training plumbing: devices and precision, seeds, the schedule, the standard callbacks and
``TrainingRun``, which keeps a run resumable and recorded in its run folder.

The recipe itself (model, freezing, optimizer, ``compile``, ``fit`` per phase) is in the
notebooks; this module holds what every run needs besides it, so all runs behave the same.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
import warnings
import weakref
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from helpers import (
    files,
    inference,
    keras_fixes,
    liveprogress,
    metrics,
    pipeline,
    runfolder,
    runlock,
    schedules,
)
from helpers.runfolder import RunFolder

keras_fixes.apply()  # float16 on several GPUs trains with NaN weights without it

# Every training run (each seed, each phase, each of notebook 4's mistake runs) builds and
# compiles a model of its own, so Keras traces a new train step for each: TensorFlow's
# warning that functions are traced again says nothing here, and would land in the report.
tf.get_logger().addFilter(inference.DropRetracingWarning())

# The pipeline shuffles (helpers.pipeline); Keras warns that fit's own shuffle=True, its
# default, does nothing for a tf.data.Dataset. Silenced rather than passing shuffle=False to
# every fit, which would read as "not shuffled".
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed", category=UserWarning)
# Loading a phase's best model (a .keras file, optimizer included) into a model whose new
# optimizer has not run yet: Keras warns that it skips the optimizer's state, which the next
# phase's compile replaces anyway.
warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer",
                        category=UserWarning)

# The key of the last (or only) training phase, whose ``phase`` is None.
LAST_PHASE = "last"


def _phase_text(phase: str | None) -> str:
    return f"phase {phase!r}" if phase else "the last phase"


# -- devices and precision -------------------------------------------------------------------

def choose_strategy_kind(n_gpus: int) -> str:
    """"mirrored" with several GPUs, else "default" (one GPU or the CPU). TPUs are not
    supported: Colab's TPU runtimes ship without TensorFlow (``helpers.colab`` says so)."""
    return "mirrored" if n_gpus > 1 else "default"


def select_strategy() -> tf.distribute.Strategy:
    """The distribution strategy for this machine (see ``choose_strategy_kind``).

    The global batch size is the per-replica one times ``strategy.num_replicas_in_sync``.
    """
    if choose_strategy_kind(len(tf.config.list_logical_devices("GPU"))) == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# CPU flags (Linux /proc/cpuinfo) of units that run bfloat16 matrix products fast: Intel AMX
# (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake and later, AMD Zen 4 and later).
BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_supports_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AMX-BF16 or AVX512-BF16 (read from ``/proc/cpuinfo``, or the text
    given; False where there is none, as on macOS and Windows)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(BFLOAT16_CPU_FLAGS & set(line.partition(":")[2].split()))
    return False


def choose_precision(gpu_compute_capabilities: list[tuple[int, int]],
                     cpu_bfloat16: bool = False, requested: str = "auto") -> str:
    """The Keras dtype policy: ``requested`` unless it is "auto", which picks what speeds
    training up on this hardware without costing accuracy.

    GPUs: float16 with tensor cores (compute capability 7.0 or newer, the slowest GPU
    decides), else float32. CPUs: bfloat16 where the CPU has bfloat16 units (AMX or
    AVX512-BF16: several times float32's convolution rate), else float32. Either way the
    softmax output, the loss, the metrics and BatchNorm's statistics stay float32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if gpu_compute_capabilities:
        return "mixed_float16" if min(gpu_compute_capabilities) >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_bfloat16 else "float32"


def configure_precision(requested: str = "auto") -> str:
    """Set and return the global dtype policy chosen by ``choose_precision``."""
    capabilities = [
        tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    policy = choose_precision(capabilities, cpu_supports_bfloat16(), requested)
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

def warmup_cosine(peak_rate: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: int = 1, warmup_from: float = 0.1,
                  ) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from ``warmup_from`` times ``peak_rate`` to ``peak_rate`` over
    ``warmup_epochs``, then cosine decay to zero at ``epochs``: the schedule both models of
    the study train with (the notebooks pass every argument, so the recipe reads there)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    return schedules.WarmupCosineDecay(
        initial_learning_rate=peak_rate * warmup_from, warmup_target=peak_rate,
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


# How EpochSeeds draws each epoch's randomness: part of every run's recipe, so runs trained
# with the earlier keys ([seed, epoch], which replayed the draws of the epoch before shifted
# by one batch) are trained again rather than kept or resumed with other draws.
EPOCH_RANDOMNESS = "generator key hash(seed, layer, epoch), counter 0"


class EpochSeeds(keras.callbacks.Callback):
    """Makes each epoch's randomness a function of (seed, epoch) alone.

    At each epoch start it sets the pipeline's epoch counter (the shuffle order, see
    ``pipeline.make_dataset``) and re-seeds the model's random layers (augmentation, dropout).
    Their generator states are not in Keras checkpoints, so without this a run resumed by
    BackupAndRestore would replay the first epoch's augmentations instead of continuing.

    Keras's generator state is a pair [key, counter] whose counter goes up by one per draw,
    so each (layer, epoch) gets a key of its own, mixed from the seed, the layer's index and
    the epoch, with the counter at 0. Keys of the form [seed, epoch] would replay: epoch 1's
    k-th draw would be epoch 0's (k+1)-th.
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
    """The generator key of random layer number LAYER in EPOCH of a run seeded SEED: a hash
    of the three, within 31 bits (Keras 3.3.3 keeps the state in uint32, later ones in
    int64)."""
    mixed = np.random.SeedSequence([seed % 2**32, layer, epoch]).generate_state(1)[0]
    return int(mixed) % 2**31


class LiveProgress(keras.callbacks.Callback):
    """Keeps the file ``path`` up to date with what ``fit`` is doing, for the headless study's
    line on the terminal (``helpers.liveprogress``): the run ``run_name`` and its ``phase``,
    the epoch of epochs as ``fit`` counts them (a resumed run, and a phase that continues the
    count with ``initial_epoch``, show e.g. epoch 7/9), the step of the epoch, the seconds
    since ``fit`` began and an estimate of those left. Written at each epoch's start and end,
    when validation starts and when ``fit`` ends, and at most once a second in between; a
    write that fails warns once and training goes on."""

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


class TrainingDivergedError(RuntimeError):
    """The loss of a run went non-finite: the run is discarded, never kept."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first loss that is not finite, a batch's or an epoch's
    validation loss, with ``TrainingDivergedError`` from ``diverged(epoch, batch, values)``.

    A diverged run would otherwise go on at chance (NaN weights give constant predictions),
    and its figures would read as results. Reading the loss every batch costs a device sync
    per step, as Keras's TerminateOnNaN does.
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
    """Logs ``val_accuracy_recomputed_bn``: validation accuracy of the same weights with
    BatchNorm statistics recomputed on training batches, beside Keras's ``val_accuracy``
    (moving averages). The moving averages are restored afterwards, so training goes on
    exactly as without the probe: the difference between the two is the statistics alone.
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


def best_logged(history_csv: Path, monitor: str = "val_loss", from_epoch: int = 0) -> float | None:
    """The lowest ``monitor`` value logged from epoch ``from_epoch`` (0-based) on, or None."""
    if not history_csv.exists() or history_csv.stat().st_size == 0:
        return None
    history = pd.read_csv(history_csv)
    history = history[history["epoch"] >= from_epoch] if "epoch" in history else history
    return float(history[monitor].min()) if monitor in history and len(history) else None


def git_commit(folder: str | os.PathLike = Path(__file__).parent) -> str:
    """The commit of the checkout holding ``folder`` (this project's by default), followed
    by " with uncommitted changes" when its files differ from that commit (a run of edited
    code must not pass for a run of the commit); "unknown" outside a git checkout."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], capture_output=True, text=True, check=True,
                              cwd=folder).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + (" with uncommitted changes" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class ForgetRestoredEpoch(keras.callbacks.Callback):
    """Clears the epoch a previous ``fit`` restored from a backup (put it first).

    BackupAndRestore tells ``fit`` where to resume through ``model._initial_epoch``, which
    Keras never resets: a second ``fit`` of the same model (phase 2 after a resumed phase 1)
    would start at phase 1's resumed epoch instead of its own ``initial_epoch``.
    """

    def on_train_begin(self, logs=None):
        if getattr(self.model, "_initial_epoch", None) is not None:
            self.model._initial_epoch = None


class BuildBeforeTracing(keras.callbacks.Callback):
    """Creates the metrics' and the optimizer's variables before ``fit`` traces its training
    step (put it before BackupAndRestore, which may load them).

    On one device Keras creates them while it traces the step, and a ``tf.function`` that
    created variables is traced a second time: every ``fit`` traced twice (on 2 CPU cores,
    ResNet50's first ``fit`` took 77 s against 66 s with its optimizer built first). Under a
    distribution strategy Keras 3.5 and newer build them first with
    ``Trainer._symbolic_build``; this calls it, inside the model's strategy scope, on one
    device and in older versions too, from the shapes of the training data. The variables
    are the ones Keras would create, zeros for the same weights. A Keras without that method
    (it is private) traces twice, as before: only time is at stake.
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
    """Keras's BackupAndRestore, except that a finished ``fit`` leaves a backup that says
    "all epochs done" instead of deleting it: a kill between the end of ``fit`` and
    ``TrainingRun.finish`` (which removes it) then resumes at the end, rather than training
    the whole run again (or past where early stopping ended it). Where Keras can (3.7 and
    newer) the previous backup is kept too, so one damaged by a kill mid-write falls back."""

    def __init__(self, backup_dir: Path):
        options = {"delete_checkpoint": False}
        if "double_checkpoint" in inspect.signature(
                keras.callbacks.BackupAndRestore).parameters:
            options["double_checkpoint"] = True
        super().__init__(str(backup_dir), **options)
        self.metadata_path = Path(backup_dir) / "training_metadata.json"

    def on_train_end(self, logs=None):
        if self.metadata_path.exists():
            metadata = json.loads(self.metadata_path.read_text())
            files.write_json({**metadata, "epoch": self.params["epochs"]}, self.metadata_path)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model after each epoch with a lower validation loss than ``best`` (the best
    of this phase so far, from the history when resumed), or after every epoch with
    ``every_epoch`` (no selection: the last epoch is the model), through a temporary file
    and a rename: a kill mid-save leaves the previous one whole."""

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
    history since ``from_epoch`` (Keras's starts counting afresh at every ``fit``, so each
    resume would grant ``patience`` more epochs). The kept model is the best checkpoint, so
    the weights are not restored here."""

    def __init__(self, history_csv: Path, from_epoch: int, patience: int):
        super().__init__(monitor="val_loss", patience=patience)
        self.history_csv, self.from_epoch = history_csv, from_epoch

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            # Older Keras (3.3.3, which the requirements admit) chooses it at the first
            # epoch's end and then resets ``best`` to infinity, throwing the restored one
            # away; choosing it now keeps it. Newer Keras leaves ``best`` alone.
            self._set_monitor_op()
        if not self.history_csv.exists() or self.history_csv.stat().st_size == 0:
            return
        history = pd.read_csv(self.history_csv)
        losses = history.loc[history["epoch"] >= self.from_epoch, "val_loss"].to_numpy()
        if len(losses):
            best_at = int(np.argmin(losses))
            self.best = float(losses[best_at])
            self.wait = len(losses) - 1 - best_at


def _readable_weights(path: Path) -> bool:
    """Whether a ``.weights.h5`` file opens (a kill mid-write leaves one that does not)."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _readable_json(path: Path) -> bool:
    """Whether ``path`` holds JSON (Keras writes its backup's metadata in place)."""
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def recipe_fingerprint(model: keras.Model, *settings) -> str:
    """A hash of what defines a run: the model's and the optimizer's configurations (layers,
    sizes, schedule...) and ``settings``; the same in every session where the layers Keras
    would number (below) are named or created in the same order."""
    # A model never compiled (an ensemble) has no optimizer attribute.
    optimizer = getattr(model, "optimizer", None)
    optimizer = _as_keras_schedule(optimizer.get_config()) if optimizer is not None else {}
    loss = getattr(model, "loss", None)
    text = json.dumps([model.get_config(), optimizer, loss, *settings], sort_keys=True,
                      default=str)
    # Keras numbers what it names itself within a session (input_layer_1, adam_w_1...).
    text = re.sub(r'("name": "[^"]*?)_\d+"', r'\1"', text)
    return hashlib.sha256(text.encode()).hexdigest()


def _as_keras_schedule(config):
    """``config`` with each WarmupCosineDecay written as the Keras CosineDecay it equals.

    Runs trained before ``helpers.schedules`` existed used Keras's class, with the same
    rates to float32 rounding: the same recipe, so they are kept, not trained again.
    """
    if isinstance(config, dict):
        if (config.get("registered_name")
                == keras.saving.get_registered_name(schedules.WarmupCosineDecay)
                and isinstance(config.get("config"), dict)):
            return keras.saving.serialize_keras_object(
                keras.optimizers.schedules.CosineDecay(**config["config"]))
        return {key: _as_keras_schedule(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [_as_keras_schedule(value) for value in config]
    return config


def _normalized(data: dict) -> dict:
    """``data`` as JSON would give it back (tuples as lists...), for comparing records."""
    return json.loads(json.dumps(data))


class TrainingRun:
    """The plumbing of one training run named NAME in a run folder: what makes a run
    reproducible, resumable and recorded. The recipe (model, optimizer, ``compile``,
    ``fit``) stays with the caller, i.e. in the notebooks.

    A run trains in its work folder (``work/NAME/``: checkpoints, history, backups, record)
    and ``finish`` copies its results into place (``models/``, ``history/``, ``config/``,
    ``metrics/``). So finished results of an earlier run of NAME are replaced only by a
    finished new one; a failed or interrupted run leaves them whole. An unfinished run is
    resumed (by BackupAndRestore) when its notebook runs again, and set aside
    (``work/NAME.set-aside-TIME``) when the split, the seed, its parameters or its precision
    changed since it started, so a failed experiment never blocks the next run. A finished
    run whose files are not all in place is not finished: it trains again. The run folder's
    lock (``runlock``) is held from creation to ``finish``. ``needs_training``, called after
    each phase's ``compile``, compares that phase's recipe with the one that finished before:
    a phase trains again when its recipe or an earlier phase's changed, and only then.
    A loss that is not finite stops the run as diverged (``TrainingDivergedError``); nothing
    of it is kept.

    Creating it seeds everything and picks the distribution strategy and precision.
    ``datasets`` builds the training and validation data and writes the run record;
    ``callbacks`` gives the standard callbacks for ``fit``; ``end_phase`` closes a training
    phase; ``finish`` keeps the best model with its sidecar and validation metrics, and puts
    its weights into the notebook's model.
    """

    def __init__(self, run: RunFolder, name: str, *, label: str, seed: int,
                 deterministic: bool = False, precision: str = "auto",
                 parameters: dict | None = None):
        self.run, self.name, self.label, self.seed = run, name, label, seed
        self.deterministic = deterministic
        self._requested_precision = precision
        self.parameters = _normalized(parameters or {})
        self.work = run.work(name)
        self.split_frame, self.data_root = run.load_split()  # no split: refused, no lock taken
        self.split_sha256 = files.file_sha256(run.split_csv)
        # One writer per run folder: this run holds the lock until ``finish``, or until it is
        # dropped (a run that failed and is replaced by a new one in a notebook's kernel).
        runlock.acquire(run.root, f"training {name}")
        self._release_lock = weakref.finalize(self, runlock.release, run.root)
        runfolder.mark(run.root)
        try:
            self._start()
        except BaseException:
            self._release_lock()
            raise

    def _start(self) -> None:
        run, name = self.run, self.name
        self._kept = False  # the whole run finished before with the same recipe
        self._kept_phases: list[str] = []  # phases kept from the finished run, in order
        self._training = False  # a phase of this run trains, so every later one does
        self.fingerprints: dict[str, str] = {}  # each phase's recipe, at its compile
        if self.work.exists() and not self._trained_anything():
            shutil.rmtree(self.work)  # e.g. the model could not be built: nothing to resume
        if self.work.exists():
            self._check_resumable()
        elif run.validation_metrics(name).exists():
            missing = self._missing_finished_files()
            if missing:
                print(f"{name} finished before in {run.root}, but {', '.join(missing)} "
                      "is missing: it trains again.")
            else:
                print(f"{name} finished before in {run.root}: kept if this is the same recipe, "
                      "else trained again (its results stay in place until the new run "
                      "finishes).")
        set_seed(self.seed, self.deterministic)
        self.strategy = select_strategy()
        self.precision = configure_precision(self._requested_precision)
        if self.work.exists():
            self._check_resumable_precision()
        # The training data's pass number: EpochSeeds sets it to the epoch, so the shuffle
        # order of a resumed epoch is the one an uninterrupted run would have seen.
        self.epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.image_settings: dict | None = None

    # -- the work folder -----------------------------------------------------------------
    @property
    def history_csv(self) -> Path:
        return self.work / "history.csv"

    def checkpoint(self, phase: str | None = None) -> Path:
        """The best model so far of this run (of training phase ``phase``); of a ``kept``
        run, its model in the run folder."""
        if self._kept or phase in self._kept_phases:
            return self.run.model(self.name, phase)
        return self._work_checkpoint(phase)

    def _work_checkpoint(self, phase: str | None) -> Path:
        return self.work / (f"{self.name}_{phase}.keras" if phase else f"{self.name}.keras")

    def _backup_dir(self, phase: str | None) -> Path:
        return self.work / (f"backup_{phase}" if phase else "backup")

    def _record_path(self) -> Path:
        return self.work / "record.json"

    def _phases_path(self) -> Path:
        return self.work / "phases.json"

    def _fingerprints_path(self) -> Path:
        return self.work / "fingerprints.json"

    def _set_aside(self, why: str) -> None:
        """Move an unfinished run that cannot be resumed out of the way
        (``work/NAME.set-aside-TIME``), so this run starts afresh and nothing is lost."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.work.with_name(f"{self.name}.set-aside-{stamp}")
        number = 1
        while aside.exists():  # two set aside within a second
            number += 1
            aside = self.work.with_name(f"{self.name}.set-aside-{stamp}-{number}")
        os.replace(self.work, aside)
        print(f"The unfinished run {self.name!r} in {self.run.root} started with {why}: "
              f"resuming it would mix two runs. It is set aside in {aside} (to resume it, set "
              f"that back and move it back to {self.work}); this run starts afresh.")

    def _trained_anything(self) -> bool:
        return (self.history_csv.exists() or self._phases_path().exists()
                or any(self.work.glob("backup*")))

    def _check_resumable(self) -> None:
        """An unfinished run resumes only with the split, seed and parameters it started
        with; else it is set aside (``_set_aside``)."""
        if not self._record_path().exists():
            return  # killed before its record was written: nothing trained yet
        record = json.loads(self._record_path().read_text())
        if record["split_sha256"] != self.split_sha256:
            self._set_aside(f"another split than {self.run.split_csv} holds now")
        elif (record["seed"], record["deterministic"]) != (self.seed, self.deterministic):
            self._set_aside(f"seed {record['seed']} (deterministic {record['deterministic']}), "
                            f"not {self.seed} ({self.deterministic})")
        elif record["parameters"] != self.parameters:
            changed = sorted(key for key in {*record["parameters"], *self.parameters}
                             if record["parameters"].get(key) != self.parameters.get(key))
            self._set_aside(f"other parameters ({', '.join(changed)})")

    def _check_resumable_precision(self) -> None:
        if not self._record_path().exists():
            return
        recorded = json.loads(self._record_path().read_text()).get("precision")
        if recorded is not None and recorded != self.precision:
            self._set_aside(f"precision {recorded}, where this machine and PRECISION give "
                            f"{self.precision} (PRECISION = \"{recorded}\" resumes it)")

    def datasets(self, *, image_size: int, batch_size: int, crop_fraction: float = 1.0,
                 resize_method: str = "bilinear", max_images: int = 0,
                 cache: str | None = "memory") -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """The (training, validation) datasets of the run folder's split.

        ``batch_size`` is per replica. ``max_images`` > 0 keeps that many training images
        (a fixed sample by ``seed``; validation stays whole). Also writes the run record
        and sets ``steps_per_epoch`` and ``training_images``.
        """
        frame = self.split_frame
        if max_images:
            train_rows = frame[frame["split"] == "train"]
            keep = train_rows.sample(n=min(max_images, len(train_rows)),
                                     random_state=self.seed).index
            frame = frame[(frame["split"] != "train") | frame.index.isin(keep)]
        self.global_batch_size = batch_size * self.strategy.num_replicas_in_sync
        self.training_images = int((frame["split"] == "train").sum())
        self.steps_per_epoch = math.ceil(self.training_images / self.global_batch_size)
        self.image_settings = {"image_size": image_size, "resize_method": resize_method,
                               "crop_fraction": crop_fraction}
        self.data_settings = {**self.image_settings, "max_images": max_images,
                              "batch_size": batch_size, "training_images": self.training_images,
                              "steps_per_epoch": self.steps_per_epoch}
        self._write_record()
        self.training_data, self.validation_data = (
            pipeline.make_dataset(frame, self.data_root, subset,
                                  batch_size=self.global_batch_size, cache=cache,
                                  seed=self.seed, deterministic=self.deterministic,
                                  epoch_counter=self.epoch_counter if subset == "train" else None,
                                  **self.image_settings)
            for subset in ("train", "validation"))
        return self.training_data, self.validation_data

    def _write_record(self) -> None:
        if self._record_path().exists():
            recorded = json.loads(self._record_path().read_text())["data"]
            if recorded == _normalized(self.data_settings):
                return
            self._set_aside(f"other data settings ({recorded})")
        files.write_json({
            "name": self.name, "label": self.label, "seed": self.seed,
            "deterministic": self.deterministic, "parameters": self.parameters,
            "data": self.data_settings,
            "split_csv": self.run.split_csv.relative_to(self.run.root).as_posix(),
            "split_sha256": self.split_sha256,
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "numpy": np.__version__},
            "platform": platform.platform(), "devices": device_names(),
            "replicas": self.strategy.num_replicas_in_sync,
            "global_batch_size": self.global_batch_size,
            "precision": self.precision, "git_commit": git_commit(),
        }, self._record_path())

    def callbacks(self, phase: str | None = None, *, initial_epoch: int = 0, patience: int = 6,
                  precise_batchnorm_images: int = 1024, probe_batchnorm_images: int = 0,
                  stop_after_epoch: int = 0, keep_best: bool = True,
                  ) -> list[keras.callbacks.Callback]:
        """The standard callbacks for ``fit`` of this run (of training phase ``phase``).

        - BuildBeforeTracing: the metrics' and the optimizer's variables exist before ``fit``
          traces its step, so it traces it once.
        - NonFiniteLossGuard: a loss that is not finite stops the run as diverged
          (``TrainingDivergedError``), its work folder moved aside; nothing of it is kept.
        - EpochSeeds: shuffle order and random layers follow the seed and the epoch number,
          so a resumed run matches an uninterrupted one.
        - BestCheckpoint: the best epoch by validation loss (``checkpoint(phase)``); a
          resumed phase replaces it only with a better epoch than the history's best since
          ``initial_epoch``.
        - ResumableEarlyStopping on validation loss after ``patience`` epochs without a
          better one, counted across resumes.
        - With ``keep_best=False``, as the earlier study trained: no selection and no early
          stopping, the checkpoint saved after every epoch, so the last epoch is the model.
        - EpochTiming: epoch seconds, images/s and the learning rate in the history.
        - PreciseBatchNorm: BatchNorm statistics recomputed on ``precise_batchnorm_images``
          training images before each validation (0: off, Keras's moving averages).
        - BatchNormStatisticsProbe on ``probe_batchnorm_images`` images (0: off).
        - LiveProgress, only in a kernel the headless study started (it sets
          ``liveprogress.PROGRESS_VARIABLE``): the run's epoch, step, time and time left,
          for the study's line on the terminal. Its phase is ``phase``, or "phase N" for the
          last phase of a run with earlier ones.
        - CSVLogger: the history, appended across resumes and phases.
        - BackupAndRestore, last: an epoch is backed up only once checkpoint and history have
          it, so a killed run resumes after the last epoch that is fully recorded.
        - StopAfterEpoch(``stop_after_epoch``) when given: a deliberate crash, to try resuming.
        """
        if self.image_settings is None:
            raise RuntimeError("Call datasets() before callbacks(): they need the data.")
        self.work.mkdir(parents=True, exist_ok=True)
        backup_dir = self._backup_dir(phase)
        self._check_backup(backup_dir)
        self._drop_unbacked_history(backup_dir, initial_epoch)
        batches = math.ceil(precise_batchnorm_images / self.global_batch_size)
        self._current_phase = phase
        callbacks = [
            ForgetRestoredEpoch(),
            BuildBeforeTracing(self.training_data.element_spec),
            NonFiniteLossGuard(self._diverged),
            EpochSeeds(self.epoch_counter, self.seed),
            BestCheckpoint(self.checkpoint(phase),
                           best_logged(self.history_csv, from_epoch=initial_epoch),
                           every_epoch=not keep_best),
        ]
        if keep_best:
            callbacks.append(ResumableEarlyStopping(self.history_csv, initial_epoch, patience))
        # Before PreciseBatchNorm: it times training alone.
        callbacks.append(EpochTiming(self.training_images))
        if precise_batchnorm_images:
            callbacks.append(PreciseBatchNorm(self.training_data, batches))
        if probe_batchnorm_images:
            callbacks.append(BatchNormStatisticsProbe(
                self.training_data, self.validation_data,
                math.ceil(probe_batchnorm_images / self.global_batch_size)))
        progress_file = liveprogress.path_from_environment()
        if progress_file is not None:  # run by the headless study, which shows it
            earlier = list(self.finished_phases())
            callbacks.append(LiveProgress(
                progress_file, self.name,
                phase or (f"phase {len(earlier) + 1}" if earlier else None),
                self.steps_per_epoch))
        callbacks.append(keras.callbacks.CSVLogger(str(self.history_csv), append=True))
        callbacks.append(BackupAndRestore(backup_dir))
        if stop_after_epoch:
            callbacks.append(StopAfterEpoch(stop_after_epoch))
        return callbacks

    def _check_backup(self, backup_dir: Path) -> None:
        """A backup damaged by a kill mid-write: resume from the one before when Keras kept
        it (it falls back by itself), else start this phase again; say which."""
        latest = backup_dir / "latest.weights.h5"
        if not latest.exists() or (_readable_weights(latest) and _readable_json(
                backup_dir / "training_metadata.json")):
            return
        previous = latest.with_name(latest.name + ".bkp")
        previous_metadata = backup_dir / "training_metadata.json.bkp"
        if (previous.exists() and _readable_weights(previous)
                and _readable_json(previous_metadata)):
            print(f"The backup of {self.name} in {backup_dir} is damaged (a kill while it was "
                  "written): resuming from the one before it.")
            files.copy_atomically(previous, latest)
            files.copy_atomically(previous_metadata, backup_dir / "training_metadata.json")
            return
        print(f"The backup of {self.name} in {backup_dir} is damaged (a kill while it was "
              "written) and there is no earlier one: this phase starts again from its "
              "first epoch.")
        shutil.rmtree(backup_dir)

    def _drop_unbacked_history(self, backup_dir: Path, initial_epoch: int) -> None:
        """Remove history rows of epochs the backup does not hold (a kill between the row
        and the backup), which the resumed ``fit`` trains again."""
        if not self.history_csv.exists() or self.history_csv.stat().st_size == 0:
            return
        metadata = backup_dir / "training_metadata.json"
        resume_at = (json.loads(metadata.read_text())["epoch"] if metadata.exists()
                     else initial_epoch)
        history = pd.read_csv(self.history_csv)
        if (history["epoch"] >= resume_at).any():
            files.write_text_atomically(
                history[history["epoch"] < resume_at].to_csv(index=False), self.history_csv)

    def needs_training(self, model: keras.Model, phase: str | None = None, *,
                       later_parameters: tuple[str, ...] = ()) -> bool:
        """Whether training phase ``phase`` (None: the last or only one) has to run ``fit``;
        call it after the phase's ``compile``.

        The phase's recipe is a fingerprint of ``model`` as compiled (its layers and which of
        them train, the optimizer and its schedule, the loss), the run's parameters but
        ``later_parameters`` (those only later phases use), seed, data and split. False when
        this phase finished before with the same recipe and every earlier phase was kept
        too: in the unfinished work folder (a rerun resumes after it), or in the run folder
        (its results are kept as they are; of the last phase, ``finish`` then returns the
        kept metrics). Else True: ``fit`` trains, or resumes, this phase. A phase whose
        recipe changed trains again from its start, from the earlier phases' kept models,
        and every later phase trains again after it.
        """
        key = phase or LAST_PHASE
        unknown = set(later_parameters) - set(self.parameters)
        if unknown:
            raise ValueError(f"later_parameters names no parameter of the run: {sorted(unknown)}")
        parameters = {name: value for name, value in self.parameters.items()
                      if name not in later_parameters}
        fingerprint = recipe_fingerprint(model, parameters, self.seed, self.deterministic,
                                         self.data_settings, self.split_sha256,
                                         EPOCH_RANDOMNESS)
        self.fingerprints[key] = fingerprint
        if not self._training and self.work.exists() and self._trained_anything():
            recorded = self._work_fingerprints().get(key)
            if recorded is not None and recorded != fingerprint:
                print(f"{self.name}: the recipe of {_phase_text(phase)} changed since it "
                      "started: it trains again from its start.")
                self._discard_phase(phase)
            elif recorded is not None and phase is not None and phase in self.finished_phases():
                return False  # finished in the work folder; a later phase resumes
        elif not self._training and self._finished_fingerprints().get(key) == fingerprint and (
                phase is None or phase in self.run.finished_phases(self.name)):
            if phase is not None:
                self._kept_phases.append(phase)
                return False
            self._kept = True
            shutil.rmtree(self.work, ignore_errors=True)  # holds only the new record
            print(f"{self.name}: the same recipe finished before in {self.run.root}: "
                  "kept as it is (nothing to train).")
            return False
        elif not self._training:
            self._start_from_kept_phases()
        self._training = True
        files.write_json({**self._work_fingerprints(), key: fingerprint},
                         self._fingerprints_path())
        return True

    def _work_fingerprints(self) -> dict[str, str]:
        path = self._fingerprints_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def _missing_finished_files(self) -> list[str]:
        """The files of the run that finished before that are gone (relative to the run
        folder): such a run is not finished, and trains again."""
        run, name = self.run, self.name
        needed = [run.model(name), inference.sidecar_path(run.model(name)), run.history(name),
                  run.run_record(name), run.validation_metrics(name)]
        try:
            needed += [run.model(name, phase) for phase in run.finished_phases(name)]
        except ValueError:  # a damaged phases file
            needed.append(run.phases(name))
        return [str(path.relative_to(run.root)) for path in needed if not path.is_file()]

    def _finished_fingerprints(self) -> dict[str, str]:
        """Each phase's recipe of the run that finished before ({} if none did, or if any of
        its files is missing)."""
        if self._missing_finished_files():
            return {}
        record = self.run.read_run_record(self.name)
        if "fingerprints" in record:
            return record["fingerprints"]
        # Records before per-phase fingerprints hold one, taken the same way at the first
        # compile: the whole recipe of a one-phase run, which so stays kept.
        if record.get("fingerprint") and not self.run.finished_phases(self.name):
            return {LAST_PHASE: record["fingerprint"]}
        return {}

    def _start_from_kept_phases(self) -> None:
        """Start the work folder from the phases kept from the finished run (their models,
        history and boundaries), so that the phase about to train continues from them."""
        if not self._kept_phases:
            return
        boundaries = self.run.finished_phases(self.name)
        kept = {phase: boundaries[phase] for phase in self._kept_phases}
        for phase in kept:
            files.copy_atomically(self.run.model(self.name, phase),
                                  self._work_checkpoint(phase))
        history = self.run.read_history(self.name)
        files.write_text_atomically(
            history[history["epoch"] < max(kept.values())].to_csv(index=False),
            self.history_csv)
        files.write_json({phase: self.fingerprints[phase] for phase in kept},
                         self._fingerprints_path())
        files.write_json(kept, self._phases_path())  # last: the phases now count as done
        print(f"{self.name}: {', '.join(kept)} kept from the run that finished before; "
              "training goes on from there.")
        self._kept_phases = []

    def _discard_phase(self, phase: str | None) -> None:
        """Forget what the work folder holds of ``phase`` and of every phase after it."""
        closed = self.finished_phases()
        names = list(closed)
        earlier = names[:names.index(phase)] if phase in closed else names
        started = [None if key == LAST_PHASE else key for key in self._work_fingerprints()]
        for name in {*names, *started, phase, None} - set(earlier):  # this phase and later
            self._work_checkpoint(name).unlink(missing_ok=True)
            shutil.rmtree(self._backup_dir(name), ignore_errors=True)
        start = closed[earlier[-1]] if earlier else 0
        if self.history_csv.exists() and self.history_csv.stat().st_size:
            history = pd.read_csv(self.history_csv)
            files.write_text_atomically(history[history["epoch"] < start].to_csv(index=False),
                                        self.history_csv)
        files.write_json({name: value for name, value in self._work_fingerprints().items()
                          if name in earlier}, self._fingerprints_path())
        files.write_json({name: closed[name] for name in earlier}, self._phases_path())

    def epochs_done(self) -> int:
        """Epochs in the history so far (every phase)."""
        if not self.history_csv.exists() or self.history_csv.stat().st_size == 0:
            return 0
        return len(pd.read_csv(self.history_csv))

    def finished_phases(self) -> dict[str, int]:
        path = self._phases_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def end_phase(self, phase: str) -> int:
        """Record that training phase ``phase`` finished; returns the epochs done so far.

        Raises RuntimeError when the phase kept no checkpoint (it trained no epoch).
        """
        if not self.checkpoint(phase).exists():
            raise RuntimeError(f"Phase {phase!r} of {self.name} kept no model: it trained no "
                               "epoch (check its number of epochs).")
        finished = {**self.finished_phases(), phase: self.epochs_done()}
        files.write_json(finished, self._phases_path())
        return finished[phase]

    def phase_boundary(self, phase: str) -> int:
        """The epoch count at the end of finished phase ``phase`` (where the next begins)."""
        if self._kept or phase in self._kept_phases:
            return self.run.finished_phases(self.name)[phase]
        return self.finished_phases()[phase]

    def finish(self, model: keras.Model | None = None) -> dict:
        """Keep the run: its best model (the last phase's best checkpoint; when the last
        phase trained no epoch, the last closed phase's best) with its sidecar and
        validation metrics, its history, phases and record, moved into the run folder in
        place of an earlier run's. Returns the validation metrics.

        ``model``, the notebook's, then holds the kept model's weights (``fit`` leaves it
        with the last epoch's), so what a later cell computes with it is what was reported.
        Raises TrainingDivergedError, keeping nothing, when a loss in the history is not
        finite."""
        if self._kept:
            result, kept_model = json.loads(
                self.run.validation_metrics(self.name).read_text()), None
        else:
            self._check_finite_history()
            result, kept_model = self._keep_best()
        if model is not None:
            if kept_model is None:
                kept_model = keras.saving.load_model(self.run.model(self.name), compile=False)
            model.set_weights(kept_model.get_weights())
        self._release_lock()
        return result

    def _check_finite_history(self) -> None:
        """A run that went on after a non-finite loss (trained without ``callbacks``) is
        refused here too."""
        if not self.history_csv.exists() or not self.history_csv.stat().st_size:
            return
        history = pd.read_csv(self.history_csv)
        losses = history[[column for column in ("loss", "val_loss") if column in history]]
        bad = ~np.isfinite(losses.to_numpy(dtype=float)).all(axis=1)
        if bad.any():
            row = history[bad].iloc[0]
            raise self._diverged(int(row["epoch"]), None,
                                 {column: row[column] for column in losses.columns})

    def _diverged(self, epoch: int, batch: int | None, values: dict) -> TrainingDivergedError:
        """The error for a run whose loss went non-finite; its work folder is moved aside
        (``work/NAME.diverged``), so a rerun starts afresh and finished results stay."""
        in_phase = self._phase_in_progress()  # read before the work folder moves
        aside = self.work.with_name(f"{self.name}.diverged")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            if self.work.exists():
                os.replace(self.work, aside)
        except OSError:  # a file still open (Windows): the next run must not resume it
            aside = self.work
            print(f"Could not move {self.work} aside: delete it before running {self.name} "
                  "again.")
        where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        shown = ", ".join(f"{name} = {value}" for name, value in values.items())
        causes = "a learning rate too high for this model (lower it)"
        if self.precision == "mixed_float16":
            causes += ("; float16's range (PRECISION = \"float32\" rules it out; float16 "
                       "overflows above 65504)")
        self._release_lock()
        return TrainingDivergedError(
            f"Run {self.name!r} diverged at {where}{in_phase}: {shown}. "
            f"Nothing of it is kept; results that finished before stay in {self.run.root}. "
            f"Likely causes: {causes}. Its history is in {aside}.")

    def _phase_in_progress(self) -> str:
        if not hasattr(self, "_current_phase"):
            return ""
        phase = self._current_phase
        if phase is None and not self.finished_phases():
            return ""  # a run of one phase
        return f" in {_phase_text(phase)}"

    def _keep_best(self) -> tuple[dict, keras.Model]:
        """Score the best checkpoint on validation and keep it; returns (metrics, model)."""
        kept = self.checkpoint()
        if not kept.exists():
            closed = list(self.finished_phases())
            if not closed:
                raise RuntimeError(f"No checkpoint of {self.name} to keep: did fit() run?")
            files.copy_atomically(self.checkpoint(closed[-1]), kept)
        best = keras.saving.load_model(kept)
        true = np.concatenate([labels.numpy() for _, labels in self.validation_data])
        with inference.retracing_expected():  # one predict function per model kept
            probabilities = best.predict(self.validation_data.map(lambda images, _: images),
                                         verbose=0)
        predicted = np.argmax(probabilities, axis=1)
        result = {"n_images": int(len(true)), "accuracy": metrics.accuracy(true, predicted),
                  "macro_f1": metrics.macro_f1(true, predicted)}
        self._keep(result)
        return result, best

    def _keep(self, result: dict) -> None:
        """Copy the run's results into place, then remove its work folder. A kill midway
        leaves the work folder whole, and running the notebook again (which trains no epoch
        then) finishes the copy; the earlier run's metrics go first and the new ones come
        last, so a half-copied run never counts as finished."""
        run, name = self.run, self.name
        run.validation_metrics(name).unlink(missing_ok=True)
        # An earlier run's phases, which this one may not have (not a glob: models/cnn_*
        # would also match the runs cnn_constant, cnn_schedule...).
        for phase in run.finished_phases(name):
            if phase not in self.finished_phases():
                run.model(name, phase).unlink(missing_ok=True)
        run.phases(name).unlink(missing_ok=True)
        for phase in self.finished_phases():
            files.copy_atomically(self.checkpoint(phase), run.model(name, phase))
        files.copy_atomically(self.checkpoint(), run.model(name))
        inference.write_sidecar(run.model(name), label=self.label, **self.image_settings)
        files.copy_atomically(self.history_csv, run.history(name))
        record = json.loads(self._record_path().read_text())
        files.write_json({**record, "fingerprints": self.fingerprints}, run.run_record(name))
        if self._phases_path().exists():
            files.copy_atomically(self._phases_path(), run.phases(name))
        files.write_json(result, run.validation_metrics(name))
        # Renamed first: a kill while deleting must not leave a half work folder to resume.
        leaving = self.work.with_name(f".{self.name}.finished")
        shutil.rmtree(leaving, ignore_errors=True)
        os.replace(self.work, leaving)
        shutil.rmtree(leaving)


def keep_best_run(run: RunFolder, candidates: list[str], name: str,
                  by: tuple[str, ...] = ("accuracy", "macro_f1")) -> str:
    """Keep the finished run among ``candidates`` (e.g. one per seed) with the best validation
    metrics ``by``, compared in order (the notebook's choice: accuracy, macro-F1 breaking
    ties) as run NAME: its model and sidecar, history, phases,
    record (with every candidate's validation metrics and the one kept) and validation
    metrics are copied into place, the metrics last, so a half-copied run never counts as
    finished. Returns the name of the run kept."""
    if not candidates:
        raise ValueError("keep_best_run needs at least one finished run")
    scores = {candidate: json.loads(run.validation_metrics(candidate).read_text())
              for candidate in candidates}
    best = max(candidates, key=lambda candidate: tuple(scores[candidate][metric]
                                                       for metric in by))
    run.validation_metrics(name).unlink(missing_ok=True)
    for source, destination in [(run.model(best), run.model(name)),
                                (inference.sidecar_path(run.model(best)),
                                 inference.sidecar_path(run.model(name))),
                                (run.history(best), run.history(name))]:
        files.copy_atomically(source, destination)
    run.phases(name).unlink(missing_ok=True)
    if run.phases(best).exists():
        files.copy_atomically(run.phases(best), run.phases(name))
    files.write_json({**run.read_run_record(best), "kept_from": best, "candidates": scores},
                     run.run_record(name))
    files.write_json(scores[best], run.validation_metrics(name))
    return best
