"""``TrainingRun``: the facade notebooks 3 and 4 call to make a training run reproducible,
resumable and recorded in its run folder; the recipe itself stays in the notebooks.

See docs/training.md and docs/layout.md for the modules behind it.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import warnings
import weakref
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import (
    callbacks,
    devices,
    files,
    inference,
    keras_fixes,
    metrics,
    pipeline,
    publish,
    runfolder,
    runlock,
    schedules,
)
from helpers.callbacks import EPOCH_RANDOMNESS, TrainingDivergedError

# The names marked F401 are what notebooks 3 and 4 call through this module.
from helpers.cluster import TrainingTaskError, train_each  # noqa: F401
from helpers.ensemble import load_members as load_ensemble_members  # noqa: F401
from helpers.ensemble import save as save_ensemble  # noqa: F401
from helpers.ensemble import set_aside as set_aside_ensemble  # noqa: F401
from helpers.files import file_sha256  # noqa: F401
from helpers.fingerprints import earlier_fingerprint, git_commit, recipe_fingerprint
from helpers.histories import batchnorm_probe_table, dynamics_table  # noqa: F401
from helpers.mistakes import mistakes_table, mistakes_text, near_the_reference  # noqa: F401
from helpers.publish import keep_best_run  # noqa: F401
from helpers.runfolder import RunFolder
from helpers.workfolder import LAST_PHASE, WorkFolder

keras_fixes.apply()  # float16 on several GPUs trains with NaN weights without it

# Every run compiles a model of its own, so TensorFlow's retracing warning says nothing here
# and would land in the report.
tf.get_logger().addFilter(inference.DropRetracingWarning())

# The pipeline shuffles; fit's default shuffle=True does nothing for a tf.data.Dataset.
# Silenced rather than passing shuffle=False to every fit, which would read as "not shuffled".
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed", category=UserWarning)
# Loading a phase's best model skips the optimizer's state, which the next compile replaces.
warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer",
                        category=UserWarning)


def _phase_text(phase: str | None) -> str:
    return f"phase {phase!r}" if phase else "the last phase"


def warmup_cosine(peak_rate: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: int = 1, warmup_from: float = 0.1,
                  ) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from ``warmup_from * peak_rate`` to ``peak_rate`` over ``warmup_epochs``,
    then cosine decay to zero at ``epochs``: the schedule both models train with."""
    warmup_steps = warmup_epochs * steps_per_epoch
    return schedules.WarmupCosineDecay(
        initial_learning_rate=peak_rate * warmup_from, warmup_target=peak_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(1, epochs * steps_per_epoch - warmup_steps))



def _diverged_message(name: str, root: Path, epoch: int, batch: int | None, values: dict,
                      in_phase: str, precision: str, aside: Path) -> str:
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
    shown = ", ".join(f"{key} = {value}" for key, value in values.items())
    causes = "a learning rate too high for this model (lower it)"
    if precision == "mixed_float16":
        causes += ("; float16's range (PRECISION = \"float32\" rules it out; float16 "
                   "overflows above 65504)")
    return (f"Run {name!r} diverged at {where}{in_phase}: {shown}. Nothing of it is kept; "
            f"results that finished before stay in {root}. Likely causes: {causes}. Its "
            f"history is in {aside}.")


def _environment() -> dict:
    """What ran a run, for its record: versions, platform, devices, the code's commit."""
    return {"versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "numpy": np.__version__},
            "platform": platform.platform(), "devices": devices.device_names(),
            "cpu_threads": devices.cpu_threads(),
            "git_commit": git_commit()}


def _validation_scores(model: keras.Model, validation_data: tf.data.Dataset) -> dict:
    """Accuracy and macro-F1 of ``model`` on the (unshuffled) validation data."""
    true = np.concatenate([labels.numpy() for _, labels in validation_data])
    with inference.retracing_expected():  # one predict function per model kept
        probabilities = model.predict(validation_data.map(lambda images, _: images), verbose=0)
    predicted = np.argmax(probabilities, axis=1)
    return {"n_images": int(len(true)), "accuracy": metrics.accuracy(true, predicted),
            "macro_f1": metrics.macro_f1(true, predicted)}


def _release_locks(run: RunFolder, name: str) -> None:
    runlock.release(run.training_lock(name))
    runlock.release(run.root)


def _normalized(data: dict) -> dict:
    """``data`` as JSON would give it back (tuples as lists...), for comparing records."""
    return json.loads(json.dumps(data))


class TrainingRun:
    """One training run named NAME: trains in its work folder and ``finish`` publishes it, so
    finished results are replaced only by a finished new run. See docs/guarantees.md and
    docs/training.md.
    """

    def __init__(self, run: RunFolder, name: str, *, label: str, seed: int,
                 deterministic: bool = False, precision: str = "auto",
                 parameters: dict | None = None):
        self.run, self.name, self.label, self.seed = run, name, label, seed
        self.deterministic = deterministic
        self.parameters = _normalized(parameters or {})
        self.work = WorkFolder(run, name)
        self.split_frame, self.data_root = run.load_split()  # no split: refused, no lock taken
        self.split_sha256 = files.file_sha256(run.split_csv)
        # Held until ``finish``, or until the run is dropped (a failed run replaced in a kernel):
        # the run folder's (or, on a cluster's worker, the sending notebook's, see
        # helpers.cluster), then this run's own, so two processes never train one run.
        runlock.acquire(run.root, f"training {name}")
        try:
            runlock.acquire(run.training_lock(name), f"training {name}")
        except BaseException:
            runlock.release(run.root)
            raise
        self._release_lock = weakref.finalize(self, _release_locks, run, name)
        runfolder.mark(run.root)
        try:
            self._start(precision)
        except BaseException:
            self._release_lock()
            raise

    def _start(self, precision: str) -> None:
        run, name, work = self.run, self.name, self.work
        self._kept = False  # the whole run finished before with the same recipe
        self._kept_phases: list[str] = []  # phases kept from the finished run, in order
        self._training = False  # a phase of this run trains, so every later one does
        self.fingerprints: dict[str, str] = {}  # each phase's recipe, at its compile
        if work.exists() and not work.trained_anything():
            shutil.rmtree(work.path)  # e.g. the model could not be built: nothing to resume
        if work.exists():
            why = work.resume_problem(self.split_sha256, self.seed, self.deterministic,
                                      self.parameters)
            if why:
                work.set_aside(why)
        elif run.validation_metrics(name).exists():
            publish.say_finished_before(run, name)
        devices.set_seed(self.seed, self.deterministic)
        self.strategy = devices.select_strategy()
        self.precision = devices.configure_precision(precision)
        recorded = (work.read_record() or {}).get("precision") if work.exists() else None
        if recorded is not None and recorded != self.precision:
            work.set_aside(f"precision {recorded}, where this machine and PRECISION give "
                           f"{self.precision} (PRECISION = \"{recorded}\" resumes it)")
        # EpochSeeds sets it to the epoch, so a resumed epoch shuffles as an uninterrupted one.
        self.epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.image_settings: dict | None = None

    @property
    def history_csv(self) -> Path:
        return self.work.history_csv

    def checkpoint(self, phase: str | None = None) -> Path:
        """The best model so far of phase ``phase`` (of a kept run: the published one)."""
        if self._kept or phase in self._kept_phases:
            return self.run.model(self.name, phase)
        return self.work.checkpoint(phase)

    def datasets(self, *, image_size: int, batch_size: int, crop_fraction: float = 1.0,
                 resize_method: str = "bilinear", max_images: int = 0,
                 cache: str | None = "memory") -> tuple[tf.data.Dataset, tf.data.Dataset]:
        """The (training, validation) datasets; ``batch_size`` is per replica. Writes the record."""
        frame = pipeline.sample_training(self.split_frame, max_images, self.seed)
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
        recorded = self.work.read_record()
        if recorded is not None:
            if recorded["data"] == _normalized(self.data_settings):
                return
            self.work.set_aside(f"other data settings ({recorded['data']})")
        files.write_json({
            "name": self.name, "label": self.label, "seed": self.seed,
            "deterministic": self.deterministic, "parameters": self.parameters,
            "data": self.data_settings,
            "split_csv": self.run.split_csv.relative_to(self.run.root).as_posix(),
            "split_sha256": self.split_sha256,
            **_environment(), "replicas": self.strategy.num_replicas_in_sync,
            "global_batch_size": self.global_batch_size, "precision": self.precision,
        }, self.work.record)

    def callbacks(self, phase: str | None = None, *, initial_epoch: int = 0, patience: int = 6,
                  precise_batchnorm_images: int = 1024, probe_batchnorm_images: int = 0,
                  stop_after_epoch: int = 0, keep_best: bool = True,
                  ) -> list[keras.callbacks.Callback]:
        """``callbacks.standard_callbacks`` for ``fit`` of phase ``phase``; a damaged backup is
        repaired first, and history rows the backup does not hold are dropped."""
        if self.image_settings is None:
            raise RuntimeError("Call datasets() before callbacks(): they need the data.")
        self.work.path.mkdir(parents=True, exist_ok=True)
        self.work.check_backup(phase)
        self.work.drop_unbacked_history(phase, initial_epoch)
        self._current_phase = phase
        earlier = list(self.work.finished_phases())
        return callbacks.standard_callbacks(
            checkpoint=self.checkpoint(phase), history_csv=self.history_csv,
            backup_dir=self.work.backup_dir(phase), training_data=self.training_data,
            validation_data=self.validation_data, global_batch_size=self.global_batch_size,
            training_images=self.training_images, steps_per_epoch=self.steps_per_epoch,
            epoch_counter=self.epoch_counter, seed=self.seed, diverged=self._diverged,
            progress_name=self.name,
            progress_phase=phase or (f"phase {len(earlier) + 1}" if earlier else None),
            initial_epoch=initial_epoch, patience=patience,
            precise_batchnorm_images=precise_batchnorm_images,
            probe_batchnorm_images=probe_batchnorm_images,
            stop_after_epoch=stop_after_epoch, keep_best=keep_best)

    def needs_training(self, model: keras.Model, phase: str | None = None, *,
                       later_parameters: tuple[str, ...] = ()) -> bool:
        """Whether phase ``phase`` (None: the last or only one) has to run ``fit``; call it
        after the phase's ``compile``.

        False when this phase and every earlier one finished before with the same recipe
        (``fingerprints.recipe_fingerprint``); a changed recipe retrains it and every later one.
        """
        key, work = phase or LAST_PHASE, self.work
        unknown = set(later_parameters) - set(self.parameters)
        if unknown:
            raise ValueError(f"later_parameters names no parameter of the run: {sorted(unknown)}")
        parameters = {name: value for name, value in self.parameters.items()
                      if name not in later_parameters}
        settings = (parameters, self.seed, self.deterministic, self.data_settings,
                    self.split_sha256, EPOCH_RANDOMNESS)
        fingerprint = recipe_fingerprint(model, *settings)
        # What a run recorded before 2026-12 for this recipe counts as the same.
        same_recipe = {fingerprint, earlier_fingerprint(model, *settings)}
        self.fingerprints[key] = fingerprint
        if not self._training and work.exists() and work.trained_anything():
            recorded = work.fingerprints().get(key)
            if recorded is not None and recorded not in same_recipe:
                print(f"{self.name}: the recipe of {_phase_text(phase)} changed since it "
                      "started: it trains again from its start.")
                work.discard_phase(phase)
            elif recorded is not None and phase is not None and phase in work.finished_phases():
                return False  # finished in the work folder; a later phase resumes
        elif not self._training and publish.finished_fingerprints(
                self.run, self.name).get(key) in same_recipe and (
                phase is None or phase in self.run.finished_phases(self.name)):
            if phase is not None:
                self._kept_phases.append(phase)
                return False
            self._kept = True
            shutil.rmtree(work.path, ignore_errors=True)  # holds only the new record
            print(f"{self.name}: the same recipe finished before in {self.run.root}: "
                  "kept as it is (nothing to train).")
            return False
        elif not self._training and self._kept_phases:
            work.start_from_finished(self._kept_phases, self.fingerprints)
            self._kept_phases = []
        self._training = True
        files.write_json({**work.fingerprints(), key: fingerprint}, work.fingerprints_file)
        return True

    def end_phase(self, phase: str) -> int:
        """Record that phase ``phase`` finished; returns the epochs done so far.

        Raises RuntimeError when the phase kept no checkpoint.
        """
        if not self.checkpoint(phase).exists():
            raise RuntimeError(f"Phase {phase!r} of {self.name} kept no model: it trained no "
                               "epoch (check its number of epochs).")
        return self.work.end_phase(phase)

    def phase_boundary(self, phase: str) -> int:
        """The epoch count at the end of finished phase ``phase`` (where the next begins)."""
        if self._kept or phase in self._kept_phases:
            return self.run.finished_phases(self.name)[phase]
        return self.work.finished_phases()[phase]

    def finish(self, model: keras.Model | None = None) -> dict:
        """Publish the run's best model and validation metrics, which it returns; ``model``
        then holds the kept weights. TrainingDivergedError when a logged loss is not finite."""
        if self._kept:
            result, kept_model = json.loads(
                self.run.validation_metrics(self.name).read_text()), None
        else:
            # A run that went on after a non-finite loss (trained without ``callbacks``).
            bad = callbacks.first_non_finite(self.history_csv)
            if bad is not None:
                raise self._diverged(bad[0], None, bad[1])
            result, kept_model = self._keep_best()
        if model is not None:
            if kept_model is None:
                kept_model = keras.saving.load_model(self.run.model(self.name), compile=False)
            model.set_weights(kept_model.get_weights())
        self._release_lock()
        return result

    def _diverged(self, epoch: int, batch: int | None, values: dict) -> TrainingDivergedError:
        """The error for a diverged run; its work folder is moved aside for a fresh rerun."""
        in_phase = self._phase_in_progress()  # read before the work folder moves
        aside = self.work.move_diverged()
        self._release_lock()
        return TrainingDivergedError(_diverged_message(
            self.name, self.run.root, epoch, batch, values, in_phase, self.precision, aside))

    def _phase_in_progress(self) -> str:
        if not hasattr(self, "_current_phase"):
            return ""
        phase = self._current_phase
        if phase is None and not self.work.finished_phases():
            return ""  # a run of one phase
        return f" in {_phase_text(phase)}"

    def _keep_best(self) -> tuple[dict, keras.Model]:
        """Score the best checkpoint on validation and publish it; returns (metrics, model)."""
        kept = self.checkpoint()
        if not kept.exists():
            closed = list(self.work.finished_phases())
            if not closed:
                raise RuntimeError(f"No checkpoint of {self.name} to keep: did fit() run?")
            files.copy_atomically(self.checkpoint(closed[-1]), kept)
        best = keras.saving.load_model(kept)
        result = _validation_scores(best, self.validation_data)
        publish.publish_work(self.work, result, self.label, self.image_settings,
                             self.fingerprints)
        return result, best
