import gc
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import (
    callbacks,
    data,
    devices,
    files,
    fingerprints,
    inference,
    liveprogress,
    models,
    publish,
    runlock,
    training,
)
from helpers.labels import CLASS_NAMES
from helpers.runfolder import RunFolder
from helpers.tools import notebooks
from helpers.workfolder import WorkFolder
from tests.conftest import REPOSITORY

# Kills of the fault-injection test: about 10 s each on 2 cores.
KILLS = 2


@pytest.mark.parametrize("gpus, kind", [(0, "default"), (1, "default"), (2, "mirrored"),
                                        (8, "mirrored")])
def test_strategy_kind(gpus, kind):
    assert devices.choose_strategy_kind(gpus) == kind


@pytest.mark.parametrize("capabilities, cpu_bfloat16, requested, policy", [
    ([], False, "auto", "float32"),  # a CPU without bfloat16 units
    ([], True, "auto", "mixed_bfloat16"),  # AMX or AVX512-BF16
    ([], True, "float32", "float32"),  # forced
    ([(6, 0)], True, "auto", "float32"),  # P100: no tensor cores; the GPU decides, not the CPU
    ([(7, 5)], False, "auto", "mixed_float16"),  # T4, Colab's usual GPU
    ([(7, 0)], False, "auto", "mixed_float16"),  # V100
    ([(7, 5), (7, 5)], False, "auto", "mixed_float16"),  # two T4s: MirroredStrategy, float16
    ([(7, 5), (6, 0)], True, "auto", "float32"),  # a T4 beside a P100
    ([(8, 0), (6, 1)], False, "auto", "float32"),  # the slowest GPU decides
    ([(7, 5)], False, "mixed_bfloat16", "mixed_bfloat16"),
])
def test_precision_choice(capabilities, cpu_bfloat16, requested, policy):
    assert devices.choose_precision(capabilities, cpu_bfloat16, requested) == policy


def test_precision_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="PRECISION must be one of"):
        devices.choose_precision([], True, "bfloat16")


CPUINFO = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx2 {}\n\n"


def test_bfloat16_units_are_read_from_the_cpu_flags():
    assert devices.cpu_supports_bfloat16(CPUINFO.format("avx512f amx_bf16 amx_tile"))
    assert devices.cpu_supports_bfloat16(CPUINFO.format("avx512f avx512_bf16"))
    assert not devices.cpu_supports_bfloat16(CPUINFO.format("avx512f avx512_vnni"))
    assert not devices.cpu_supports_bfloat16("")  # no /proc/cpuinfo (macOS, Windows)


def test_the_cpu_threads_recorded_are_the_cores_where_the_variable_leaves_the_choice(
        monkeypatch):
    from helpers import cluster

    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "0")  # TensorFlow's "as many as the cores"
    assert devices.cpu_threads() == cluster.cores()
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert devices.cpu_threads() == 3


def test_this_cpu_machine_gets_the_default_strategy_and_its_precision():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    strategy = devices.select_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, tf.distribute.MirroredStrategy)
    expected = "mixed_bfloat16" if devices.cpu_supports_bfloat16() else "float32"
    try:
        assert devices.configure_precision() == expected
        assert keras.mixed_precision.global_policy().name == expected
        assert devices.configure_precision("float32") == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_schedule_warms_up_then_decays_to_zero():
    schedule = training.warmup_cosine(1e-3, steps_per_epoch=10, epochs=5)
    rates = [float(schedule(step)) for step in [0, 5, 10, 30, 50]]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("steps_per_epoch, epochs, warmup_epochs", [(10, 5, 1), (7, 3, 2),
                                                                    (4, 1, 0)])
def test_schedule_gives_keras_cosine_decay_rates_at_every_step(steps_per_epoch, epochs,
                                                               warmup_epochs):
    """The schedule traces without a conditional (helpers.schedules), with Keras's rates,
    in eager mode and in a graph, at every step and after the last."""
    schedule = training.warmup_cosine(2e-3, steps_per_epoch, epochs, warmup_epochs)
    keras_schedule = keras.optimizers.schedules.CosineDecay(**schedule.get_config())
    steps = np.arange(steps_per_epoch * epochs + 3)
    expected = [float(keras_schedule(step)) for step in steps]
    eager = [float(schedule(step)) for step in steps]
    assert eager == expected
    in_graph = tf.function(schedule.__call__)
    # Grappler may reorder the arithmetic: a few float32 roundings of the peak rate.
    np.testing.assert_allclose([float(in_graph(tf.constant(step))) for step in steps],
                               expected, rtol=1e-6, atol=2e-3 * 1e-6)
    graph = in_graph.get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert not {op.type for op in graph.get_operations()} & {"If", "StatelessIf"}


def _compiled_with(schedule) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.AdamW(schedule),
                  loss="sparse_categorical_crossentropy")
    return model


def test_a_model_compiled_with_the_schedule_loads_where_its_layers_do(tmp_path):
    """In a fresh process with the modules that load models (helpers.inference, and with it
    helpers.models), not helpers.training: the command lines' case."""
    model = _compiled_with(training.warmup_cosine(1e-3, 10, 3))
    model.save(tmp_path / "model.keras")
    load = ("import sys, keras; from helpers import inference; "
            "assert 'helpers.training' not in sys.modules; "
            "print(keras.saving.load_model(sys.argv[1]).optimizer.get_config())")
    loaded = subprocess.run([sys.executable, "-c", load, str(tmp_path / "model.keras")],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().splitlines()[-1] == str(model.optimizer.get_config())


def test_runs_trained_with_keras_cosine_decay_keep_their_recipe():
    """The same rates as before helpers.schedules: a finished run is not trained again."""
    schedule = training.warmup_cosine(1e-3, 10, 3)
    keras_schedule = keras.optimizers.schedules.CosineDecay(**schedule.get_config())
    fingerprint = fingerprints.recipe_fingerprint(_compiled_with(schedule))
    assert fingerprints.recipe_fingerprint(_compiled_with(keras_schedule)) == fingerprint
    other = keras.optimizers.schedules.CosineDecay(**{**schedule.get_config(),
                                                      "warmup_steps": 20})
    assert fingerprints.recipe_fingerprint(_compiled_with(other)) != fingerprint
    assert fingerprints.recipe_fingerprint(_compiled_with(1e-3)) != fingerprint


@pytest.fixture()
def run(synthetic_source, tmp_path) -> RunFolder:
    """A run folder with the synthetic dataset's split (notebook 1's output)."""
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path)]) == 0
    return RunFolder(tmp_path)


def _tiny_model(epochs: int, steps_per_epoch: int) -> keras.Model:
    model = notebooks.baseline_cnn(16, widths=(4, 8), seed=7)
    model.compile(optimizer=keras.optimizers.AdamW(
                      training.warmup_cosine(2e-3, steps_per_epoch, epochs)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _train_tiny(run, name="tiny", epochs=3, phase=None, initial_epoch=0, parameters=None,
                **callback_options):
    """A small recipe as a notebook writes it, on the plumbing of TrainingRun."""
    training_run = training.TrainingRun(run, name, label="Tiny CNN", seed=7, deterministic=True,
                                        parameters=parameters or {"EPOCHS": epochs})
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = _tiny_model(epochs, training_run.steps_per_epoch)
    model.fit(train_data, validation_data=validation_data, epochs=epochs, verbose=0,
              initial_epoch=initial_epoch,
              callbacks=training_run.callbacks(phase, patience=9, initial_epoch=initial_epoch,
                                               precise_batchnorm_images=16, **callback_options))
    return training_run, model


def _copy_split(run, folder) -> RunFolder:
    other = RunFolder(folder)
    shutil.copytree(run.root / "data", other.root / "data")
    return other


def test_callbacks_need_the_data_and_cover_the_standard_set(run):
    training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=0)
    with pytest.raises(RuntimeError, match="datasets"):
        training_run.callbacks()
    training_run.datasets(image_size=16, batch_size=8)
    kinds = [type(callback).__name__ for callback in training_run.callbacks(
        probe_batchnorm_images=16, stop_after_epoch=2)]
    # BackupAndRestore after the checkpoint and the history: an epoch counts as done only
    # once both have it.
    assert kinds == ["ForgetRestoredEpoch", "BuildBeforeTracing", "NonFiniteLossGuard",
                     "EpochSeeds", "BestCheckpoint", "ResumableEarlyStopping", "EpochTiming",
                     "PreciseBatchNorm", "BatchNormStatisticsProbe", "CSVLogger",
                     "BackupAndRestore", "StopAfterEpoch"]


def test_a_phase_checkpoint_competes_with_its_own_epochs_only(tmp_path):
    """On resume the checkpoint's best comes from the history of this phase, its first epoch
    included; a new phase starts from nothing, so its own best is saved even when phase 1's
    was lower (else phase 1's model would pass for phase 2's). Precise BatchNorm gets at
    least one batch."""
    history_csv = tmp_path / "history.csv"
    pd.DataFrame({"epoch": range(5), "loss": 1.0,
                  "val_loss": [0.1, 0.2, 0.3, 0.5, 0.6]}).to_csv(history_csv, index=False)
    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4, 4, 3)), np.zeros(8))).batch(8)

    def built(initial_epoch: int, **options) -> dict:
        made = callbacks.standard_callbacks(
            checkpoint=tmp_path / "kept.keras", history_csv=history_csv,
            backup_dir=tmp_path / "backup", training_data=data, validation_data=data,
            global_batch_size=32, training_images=8, steps_per_epoch=1,
            epoch_counter=None, seed=0, diverged=lambda *details: RuntimeError(details),
            progress_name="tiny", progress_phase=None, initial_epoch=initial_epoch,
            precise_batchnorm_images=16, **options)
        return {type(callback).__name__: callback for callback in made}

    assert built(0)["BestCheckpoint"].best == 0.1
    assert built(2)["BestCheckpoint"].best == 0.3  # phase 2 resumed after its epochs 2-4
    assert built(5)["BestCheckpoint"].best == math.inf  # phase 2 starting after epoch 4
    assert built(0)["PreciseBatchNorm"].batches == 1  # 16 images, batches of 32
    # Selection saves only improving epochs; keep_best=False saves every epoch.
    assert built(0)["BestCheckpoint"].every_epoch is False
    assert built(0, keep_best=False)["BestCheckpoint"].every_epoch is True


def test_the_checkpoint_without_selection_saves_an_epoch_worse_than_the_best(tmp_path):
    saved = []

    class Recorder:
        def save(self, path):
            saved.append(path)
            Path(path).write_bytes(b"model")

    for every_epoch, saves in ((False, 1), (True, 2)):
        saved.clear()
        checkpoint = callbacks.BestCheckpoint(tmp_path / "kept.keras", None, every_epoch)
        checkpoint.set_model(Recorder())
        checkpoint.on_epoch_end(0, {"val_loss": 1.0})
        checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # worse: kept only without selection
        assert len(saved) == saves
    # A later epoch that only ties the best is not kept: the kept epoch is the first lowest
    # validation loss, the one the history's best epoch names (idxmin).
    saved.clear()
    checkpoint = callbacks.BestCheckpoint(tmp_path / "kept.keras", 1.0)
    checkpoint.set_model(Recorder())
    checkpoint.on_epoch_end(3, {"val_loss": 1.0})
    assert saved == []


def test_the_first_non_finite_epoch_is_found_in_either_loss(tmp_path):
    history_csv = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [0, 1, 2, 3], "loss": [1.0, 0.9, float("inf"), float("nan")],
                  "val_loss": [1.1, float("nan"), 0.8, 0.7]}).to_csv(history_csv, index=False)
    epoch, values = callbacks.first_non_finite(history_csv)
    assert epoch == 1 and values["loss"] == 0.9 and math.isnan(values["val_loss"])
    pd.DataFrame({"epoch": [0], "loss": [1.0], "val_loss": [1.1]}).to_csv(history_csv,
                                                                          index=False)
    assert callbacks.first_non_finite(history_csv) is None


def test_a_run_stopped_on_purpose_stops_after_its_one_based_epoch():
    stop = callbacks.StopAfterEpoch(2)
    stop.on_epoch_end(0)
    with pytest.raises(callbacks.TrainingStoppedError, match="after epoch 2"):
        stop.on_epoch_end(1)


def test_a_new_fit_forgets_the_epoch_an_earlier_fit_restored():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model._initial_epoch = 3  # as BackupAndRestore leaves it after a resumed phase 1
    forget = callbacks.ForgetRestoredEpoch()
    forget.set_model(model)
    forget.on_train_begin()
    assert model._initial_epoch is None


def test_images_per_second_times_the_training_pass_without_validation(monkeypatch):
    ticks = iter([100.0, 102.0, 110.0])  # the epoch begins, its validation begins, it ends
    monkeypatch.setattr(callbacks, "time", type("Clock", (), {
        "perf_counter": staticmethod(lambda: next(ticks))}))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    timing = callbacks.EpochTiming(images_per_epoch=100)
    timing.set_model(model)
    logs = {}
    timing.on_epoch_begin(0)
    timing.on_test_begin()
    timing.on_epoch_end(0, logs)
    assert logs["epoch_seconds"] == 10.0
    assert logs["images_per_second"] == 50.0  # 100 images in the 2 s before validation
    assert logs["learning_rate"] == pytest.approx(0.01)


def test_without_selection_the_last_epoch_is_the_model_and_nothing_stops_early(run):
    """The earlier study's way (keep_best=False): every epoch is trained and the last one's
    weights are the kept model, whatever validation said."""
    training_run, model = _train_tiny(run, name="last_epoch", epochs=3, keep_best=False)
    kinds = [type(callback).__name__ for callback in training_run.callbacks(keep_best=False)]
    assert "ResumableEarlyStopping" not in kinds and "BestCheckpoint" in kinds
    last = [weight.copy() for weight in model.get_weights()]
    training_run.finish()
    kept = keras.saving.load_model(run.model("last_epoch"), compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, last, strict=True))
    assert run.read_history("last_epoch")["epoch"].tolist() == [0, 1, 2]


# -- live progress, for the headless study's line --------------------------------------------

def test_live_progress_counts_epochs_as_fit_does_and_estimates_the_time_left(tmp_path):
    """Phase 2 of a run, or a run resumed: fit starts at epoch 7 of 9 (initial_epoch 6)."""
    now = [100.0]
    path = tmp_path / "progress.json"
    callback = callbacks.LiveProgress(path, "resnet50", "phase 2", steps_per_epoch=99,
                                     clock=lambda: now[0], wall_clock=lambda: 5000 + now[0])
    callback.set_params({"epochs": 9, "steps": 4, "verbose": 0})  # as fit sets them

    def read(*keys):
        progress = json.loads(path.read_text())
        return tuple(progress[key] for key in keys) if keys else progress

    writer = liveprogress.ProgressWriter(tmp_path / "other.json", clock=lambda: now[0])
    assert writer.write({"step": 1}) and not writer.write({"step": 2})  # a second apart at most
    assert writer.write({"step": 3}, force=True)
    assert json.loads(writer.path.read_text())["step"] == 3

    callback.on_train_begin()
    assert not path.exists()
    callback.on_epoch_begin(6)
    assert read() == {"run": "resnet50", "phase": "phase 2", "epoch": 7, "epochs": 9, "step": 0,
                      "steps": 4, "stage": "training", "completed": 6, "initial": 6,
                      "elapsed": 0.0, "eta": None, "updated": 5100.0}
    now[0] += 3.0
    callback.on_train_batch_end(0)  # the first step also builds the graph: no pace yet
    assert read("step", "elapsed", "eta", "updated") == (1, 3.0, None, 5103.0)
    now[0] += 0.5
    callback.on_train_batch_end(1)  # half a second after the last write: not written
    assert read("step") == (1,)
    now[0] += 0.5
    callback.on_train_batch_end(2)  # half a second a step: 1 step left, 2 epochs of 4 after
    assert read("step", "elapsed", "eta") == (3, 4.0, 0.5 + 2 * 4 * 0.5)
    now[0] += 1.0
    callback.on_train_batch_end(3)
    callback.on_test_begin()  # validation: written at once
    assert read("step", "stage") == (4, "validating")
    now[0] += 1.0
    callback.on_epoch_end(6)  # 6 s, validation included
    assert read("epoch", "completed", "step", "stage", "eta") == (7, 7, 4, "training", 12.0)
    callback.on_epoch_begin(7)
    assert read("epoch", "completed", "step", "eta") == (8, 7, 0, 12.0)
    now[0] += 2.0
    callback.on_epoch_end(7)  # 2 s: epochs after the first tell the time an epoch takes
    assert read("completed", "eta") == (8, 2.0)
    callback.on_train_end()  # early stopping, one epoch before the end
    assert read("epoch", "completed", "stage", "elapsed", "eta") == (8, 8, "ended", 8.0, 0.0)


def test_live_progress_that_cannot_be_written_warns_once_and_training_goes_on(
        tmp_path, monkeypatch):
    monkeypatch.setattr(liveprogress, "_warned", False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    callback = callbacks.LiveProgress(a_file / "progress.json", "tiny")  # under a file
    callback.set_params({"epochs": 2, "steps": 3})
    with pytest.warns(RuntimeWarning, match="Could not write the training progress") as said:
        callback.on_train_begin()
        for epoch in range(2):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch)
        callback.on_train_end()
    assert len([warning for warning in said if warning.category is RuntimeWarning]) == 1


def test_a_training_run_writes_live_progress_only_for_the_study(run, tmp_path, monkeypatch):
    monkeypatch.delenv(liveprogress.PROGRESS_VARIABLE, raising=False)
    training_run = training.TrainingRun(run, "unset", label="Tiny", seed=0)
    training_run.datasets(image_size=16, batch_size=8)
    assert "LiveProgress" not in [type(callback).__name__
                                  for callback in training_run.callbacks()]
    del training_run
    path = tmp_path / "progress" / "progress.json"
    monkeypatch.setenv(liveprogress.PROGRESS_VARIABLE, str(path))
    written = []
    write = liveprogress.ProgressWriter.write

    def recorded(writer, progress, force=False):
        if write(writer, progress, force):
            written.append(progress)

    monkeypatch.setattr(liveprogress.ProgressWriter, "write", recorded)
    # A phase that continues the count (as ResNet50's second does): epoch 2 of 2.
    training_run, _ = _train_tiny(run, epochs=2, phase="first", initial_epoch=1)
    steps = training_run.steps_per_epoch
    fields = ("run", "phase", "epoch", "epochs", "step", "steps", "stage", "completed",
              "initial", "eta")
    assert [tuple(progress[key] for key in fields) for progress in (written[0], written[-1])
            ] == [("tiny", "first", 2, 2, 0, steps, "training", 1, 1, None),
                  ("tiny", "first", 2, 2, steps, steps, "ended", 2, 1, 0.0)]
    assert "validating" in [progress["stage"] for progress in written]
    assert written[-1]["elapsed"] > 0 and json.loads(path.read_text())["stage"] == "ended"
    # The last phase, unnamed, after it: its number.
    training_run.end_phase("first")
    callbacks = training_run.callbacks(initial_epoch=2)
    kinds = [type(callback).__name__ for callback in callbacks]
    assert kinds.index("LiveProgress") == kinds.index("CSVLogger") - 1  # the backup stays last
    assert callbacks[kinds.index("LiveProgress")].phase == "phase 2"


def _assert_same_run(run, other, name="tiny"):
    for column in ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]:
        np.testing.assert_allclose(run.read_history(name)[column],
                                   other.read_history(name)[column], rtol=1e-6, err_msg=column)
    weights = [keras.saving.load_model(folder.model(name)).get_weights() for folder in (run, other)]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_killed_run_resumes_to_the_same_result(run, tmp_path_factory):
    straight = _copy_split(run, tmp_path_factory.mktemp("straight"))
    _train_tiny(straight)[0].finish()
    with pytest.raises(callbacks.TrainingStoppedError):
        _train_tiny(run, stop_after_epoch=2)
    assert not run.validation_metrics("tiny").exists() and not run.model("tiny").exists()
    training_run, _ = _train_tiny(run)  # the same recipe again: resumes at epoch 3
    training_run.finish()
    assert run.read_history("tiny")["epoch"].tolist() == [0, 1, 2]
    _assert_same_run(run, straight)
    assert not run.work("tiny").exists()  # backups go once the run is kept


def test_a_kill_between_the_history_row_and_the_backup_redoes_that_epoch(run,
                                                                        tmp_path_factory):
    straight = _copy_split(run, tmp_path_factory.mktemp("straight"))
    _train_tiny(straight)[0].finish()
    with pytest.raises(callbacks.TrainingStoppedError):
        training_run, _ = _train_tiny(run, stop_after_epoch=2)
    # As if killed after epoch 3's row was written but before its backup.
    history = pd.read_csv(run.work("tiny") / "history.csv")
    history = pd.concat([history, history.tail(1).assign(epoch=2, val_loss=0.0)])
    history.to_csv(run.work("tiny") / "history.csv", index=False)
    _train_tiny(run)[0].finish()
    _assert_same_run(run, straight)


@pytest.mark.parametrize("damaged", ["latest", "both"])
def test_a_damaged_backup_falls_back_or_starts_the_phase_again(run, tmp_path_factory, capsys,
                                                               damaged):
    straight = _copy_split(run, tmp_path_factory.mktemp("straight"))
    _train_tiny(straight)[0].finish()
    with pytest.raises(callbacks.TrainingStoppedError):
        _train_tiny(run, stop_after_epoch=2)
    backup = run.work("tiny") / "backup"
    assert (backup / "latest.weights.h5.bkp").exists()  # the previous backup, kept
    for path in backup.glob("latest.weights.h5*"):  # as if killed while writing
        if damaged == "both" or path.suffix == ".h5":
            path.write_bytes(path.read_bytes()[:100])
    _train_tiny(run)[0].finish()
    said = capsys.readouterr().out
    if damaged == "latest":
        assert "resuming from the one before it" in said
    else:
        assert "starts again from its first epoch" in said
    _assert_same_run(run, straight)


def test_a_backup_whose_metadata_a_kill_cut_short_falls_back_to_the_one_before(tmp_path,
                                                                               capsys):
    """Keras writes training_metadata.json in place: readable weights beside a cut metadata
    file are a damaged backup too."""
    work = WorkFolder(RunFolder(tmp_path / "run"), "tiny")
    backup = work.backup_dir(None)
    backup.mkdir(parents=True)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        with h5py.File(backup / name, "w") as weights:
            weights["epoch"] = 2 if name.endswith(".h5") else 1
    (backup / "training_metadata.json").write_text('{"epoch": ')  # cut mid-write
    files.write_json({"epoch": 1, "batch": -1}, backup / "training_metadata.json.bkp")
    work.check_backup(None)
    assert "resuming from the one before it" in capsys.readouterr().out
    assert files.read_json(backup / "training_metadata.json") == {"epoch": 1, "batch": -1}
    with h5py.File(backup / "latest.weights.h5", "r") as weights:
        assert weights["epoch"][()] == 1


def test_discarding_a_phase_keeps_the_history_of_every_phase_before_it(tmp_path):
    work = WorkFolder(RunFolder(tmp_path / "run"), "tiny")
    work.path.mkdir(parents=True)
    pd.DataFrame({"epoch": range(7), "loss": 1.0, "val_loss": 1.0}).to_csv(work.history_csv,
                                                                          index=False)
    files.write_json({"a": 2, "b": 4, "c": 6}, work.phases)
    work.discard_phase("c")  # phases a (epochs 0-1) and b (epochs 2-3) stay
    assert pd.read_csv(work.history_csv)["epoch"].tolist() == [0, 1, 2, 3]
    assert work.finished_phases() == {"a": 2, "b": 4}


def test_a_run_that_trained_nothing_is_not_set_aside_but_removed(run, capsys):
    """E.g. its model could not be built: nothing to resume, nothing to keep aside."""
    first = training.TrainingRun(run, "tiny", label="Tiny", seed=0)
    first.datasets(image_size=16, batch_size=8)  # its record written, no epoch trained
    del first
    training.TrainingRun(run, "tiny", label="Tiny", seed=1)
    assert "set aside" not in capsys.readouterr().out
    assert sorted(path.name for path in run.work("tiny").parent.iterdir()) == []


def test_an_unfinished_run_resumes_only_under_its_own_split_seed_and_parameters(tmp_path):
    work = WorkFolder(RunFolder(tmp_path / "run"), "tiny")
    assert work.resume_problem("split", 7, True, {"EPOCHS": 3}) is None  # no record yet
    work.path.mkdir(parents=True)
    files.write_json({"split_sha256": "split", "seed": 7, "deterministic": True,
                      "parameters": {"EPOCHS": 3, "LEARNING_RATE": 0.1}}, work.record)
    same = {"EPOCHS": 3, "LEARNING_RATE": 0.1}
    assert work.resume_problem("split", 7, True, same) is None
    assert "another split" in work.resume_problem("other", 7, True, same)
    assert work.resume_problem("split", 8, True, same).startswith("seed 7")
    assert work.resume_problem("split", 7, False, same).startswith("seed 7")
    assert (work.resume_problem("split", 7, True, {**same, "EPOCHS": 5})
            == "other parameters (EPOCHS)")


def test_a_fit_that_stopped_early_leaves_a_backup_of_every_epoch_done(tmp_path):
    """Early stopping ends fit before its last epoch: the backup says all epochs are done,
    so a kill before finish() does not train the epochs early stopping skipped."""
    backup = callbacks.BackupAndRestore(tmp_path / "backup")
    backup.metadata_path.parent.mkdir()
    files.write_json({"epoch": 3, "batch": -1}, backup.metadata_path)  # stopped after epoch 3
    backup.set_params({"epochs": 20})
    backup.on_train_end()
    assert files.read_json(backup.metadata_path) == {"epoch": 20, "batch": -1}


def test_a_kill_after_fit_before_finish_trains_no_epoch_again(run):
    training_run, _ = _train_tiny(run, epochs=2)  # fit ended; finish() never ran
    assert not run.validation_metrics("tiny").exists()
    training_run, model = _train_tiny(run, epochs=2)
    assert len(pd.read_csv(training_run.history_csv)) == 2  # no epoch trained twice
    training_run.finish()
    assert run.read_history("tiny")["epoch"].tolist() == [0, 1]


def test_an_unfinished_run_resumes_only_in_its_own_precision(run, capsys):
    _train_tiny(run, epochs=1)  # killed before finish
    recorded = WorkFolder(run, "tiny").read_record()["precision"]
    other = "mixed_bfloat16" if recorded == "float32" else "float32"
    settings = {"label": "Tiny", "seed": 7, "deterministic": True, "parameters": {"EPOCHS": 1}}
    resumed = training.TrainingRun(run, "tiny", precision=recorded, **settings)
    assert resumed.work.trained_anything() and "set aside" not in capsys.readouterr().out
    del resumed
    training.TrainingRun(run, "tiny", precision=other, **settings)
    assert f"started with precision {recorded}" in capsys.readouterr().out


def test_a_run_resumed_with_other_data_settings_starts_afresh(run, capsys):
    _train_tiny(run, epochs=1)  # killed before finish, at 16 px
    resumed = training.TrainingRun(run, "tiny", label="Tiny", seed=7, deterministic=True,
                                   parameters={"EPOCHS": 1})
    resumed.datasets(image_size=24, batch_size=8, max_images=48, cache=None)
    assert "started with other data settings" in capsys.readouterr().out
    assert resumed.work.read_record()["data"]["image_size"] == 24
    assert not resumed.work.trained_anything()


def test_a_run_whose_own_lock_is_held_elsewhere_leaves_the_run_folder_unlocked(run):
    lock = runlock.lock_path(run.training_lock("tiny"))
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                "purpose": "training tiny", "started": "", "token": "theirs"}))
    with pytest.raises(runlock.RunFolderBusyError, match="training tiny"):
        training.TrainingRun(run, "tiny", label="Tiny", seed=0)
    assert not runlock.lock_path(run.root).exists()


def test_finish_gives_the_locks_back_while_the_notebook_still_holds_the_run(run):
    training_run, _ = _train_tiny(run, epochs=1)
    training_run.finish()
    assert not runlock.lock_path(run.training_lock("tiny")).exists()
    assert not runlock.lock_path(run.root).exists()


def test_the_steps_of_an_epoch_count_its_last_smaller_batch(run):
    training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=0)
    train_data, _ = training_run.datasets(image_size=16, batch_size=5, max_images=48, cache=None)
    assert training_run.training_images % 5  # a last batch of fewer images
    assert training_run.steps_per_epoch == sum(1 for _ in train_data)


def test_later_parameters_must_be_parameters_of_the_run(run):
    training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=0,
                                        parameters={"PHASE_2_RATE": 1e-4})
    training_run.datasets(image_size=16, batch_size=8, max_images=48, cache=None)
    with pytest.raises(ValueError, match=r"no parameter of the run: \['PHASE_2_RAT'\]"):
        training_run.needs_training(_tiny_model(1, training_run.steps_per_epoch), "first",
                                    later_parameters=("PHASE_2_RAT",))


def test_each_epochs_random_layers_are_seeded_from_the_seed_and_the_epoch():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.RandomFlip(seed=1),
                              keras.layers.Dropout(0.5, seed=2)])
    states = [variable for variable in model.non_trainable_variables
              if variable.path.endswith("seed_generator_state")]
    assert len(states) == 2

    counter = tf.Variable(0, dtype=tf.int64)  # the pipeline's pass number: the epoch's

    def states_at(seed: int, epoch: int) -> list[list[int]]:
        seeds = callbacks.EpochSeeds(counter=counter, seed=seed)
        seeds.set_model(model)
        seeds.on_epoch_begin(epoch)
        return [keras.ops.convert_to_numpy(state).tolist() for state in states]

    # A function of (seed, epoch) alone, so a resumed run draws what it would have drawn.
    assert states_at(42, 3) == states_at(42, 3)
    keys = {state[0] for seed in (42, 43) for epoch in (0, 1, 2)
            for state in states_at(seed, epoch)}
    assert len(keys) == 12  # every layer, epoch and seed a key of its own
    # Within 31 bits for any seed, as runs were first trained (Keras 3.3 kept uint32 states).
    assert all(0 <= key < 2**31 for key in keys | {s[0] for s in states_at(2**31 - 1, 9)})
    assert all(state[1] == 0 for state in states_at(42, 5))
    assert int(counter.numpy()) == 5


def test_two_epochs_of_augmentation_draw_independent_values():
    """Keras's generator counts one step per draw: were epoch e seeded [seed, e], epoch 1
    would replay epoch 0's draws shifted by one batch. No draw of one epoch may equal any
    draw of another."""
    noise = models.RandomPixelNoise(3.0, seed=7)
    model = keras.Sequential([keras.Input((4, 4, 3)), noise])
    seeds = callbacks.EpochSeeds(counter=None, seed=42)
    seeds.set_model(model)
    images = np.full((2, 4, 4, 3), 128.0, dtype="float32")
    draws = {}
    for epoch in (0, 1):
        seeds.on_epoch_begin(epoch)
        draws[epoch] = [np.asarray(noise(images, training=True)) for _ in range(5)]
    first, second = draws[0], draws[1]
    assert not any(np.array_equal(a, b) for a in first for b in second)
    assert not any(np.array_equal(first[i], first[j])  # and none repeats within an epoch
                   for i in range(5) for j in range(i + 1, 5))
    seeds.on_epoch_begin(1)  # the same epoch again (a resume): the same draws
    assert np.array_equal(np.asarray(noise(images, training=True)), second[0])


def test_early_stopping_counts_the_epochs_before_a_resume(tmp_path):
    history_csv = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [0, 1, 2, 3], "val_loss": [0.9, 0.5, 0.6, 0.7]}).to_csv(
        history_csv, index=False)

    def resumed(from_epoch: int) -> callbacks.ResumableEarlyStopping:
        """The callback as fit starts it: on a model that is not stopping, then at begin."""
        stopping = callbacks.ResumableEarlyStopping(history_csv, from_epoch, patience=3)
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.stop_training = False
        stopping.set_model(model)
        stopping.on_train_begin()
        return stopping

    stopping = resumed(from_epoch=0)
    assert (stopping.best, stopping.wait) == (0.5, 2)
    stopping.on_epoch_end(4, {"val_loss": 0.55})  # the first epoch after the resume
    # Patience ran out: 3 epochs without gain since 0.5.
    assert stopping.model.stop_training and stopping.best == 0.5
    phase_two = resumed(from_epoch=3)
    assert (phase_two.best, phase_two.wait) == (0.7, 0)
    phase_two.on_epoch_end(4, {"val_loss": 0.8})
    assert (phase_two.best, phase_two.wait, phase_two.model.stop_training) == (0.7, 1, False)


def test_finish_records_the_run_the_sidecar_and_validation_metrics(run):
    training_run, _ = _train_tiny(run, epochs=1)
    result = training_run.finish()
    info = json.loads(inference.sidecar_path(run.model("tiny")).read_text())
    assert info["label"] == "Tiny CNN" and info["class_names"] == list(CLASS_NAMES)
    assert (info["image_size"], info["resize_method"], info["crop_fraction"]) == (
        16, "bilinear", 1.0)
    record = run.read_run_record("tiny")
    assert record["split_sha256"] == hashlib.sha256(run.split_csv.read_bytes()).hexdigest()
    assert record["parameters"] == {"EPOCHS": 1} and record["deterministic"]
    assert record["data"]["training_images"] == 48 and record["data"]["image_size"] == 16
    assert record["versions"]["tensorflow"] == tf.__version__
    assert record["devices"] and record["git_commit"]
    # What configure_precision chose for this machine (bfloat16 where the CPU has AMX).
    assert record["precision"] == training_run.precision == (
        "mixed_bfloat16" if devices.cpu_supports_bfloat16() else "float32")
    assert json.loads(run.validation_metrics("tiny").read_text()) == result
    assert 0 <= result["accuracy"] <= 1 and result["n_images"] > 0


def test_finished_results_stay_until_a_new_run_of_the_same_name_finishes(run, capsys):
    _train_tiny(run, epochs=2)[0].finish()
    _train_tiny(run, name="tiny_other", epochs=1)[0].finish()  # a run whose name extends it
    kept = {path: path.read_bytes() for path in [
        run.model("tiny"), run.history("tiny"), run.validation_metrics("tiny"),
        run.run_record("tiny")]}
    with pytest.raises(callbacks.TrainingStoppedError):  # a new run, killed midway
        _train_tiny(run, epochs=3, stop_after_epoch=1)
    assert "stay in place until the new run finishes" in capsys.readouterr().out
    assert all(path.read_bytes() == content for path, content in kept.items())
    _train_tiny(run, epochs=3)[0].finish()  # resumed to the end: now it replaces the old one
    assert run.read_history("tiny")["epoch"].tolist() == [0, 1, 2]
    assert run.model("tiny_other").exists() and run.validation_metrics("tiny_other").exists()


def test_history_has_timing_learning_rate_and_the_batchnorm_probe(run):
    _train_tiny(run, epochs=2, probe_batchnorm_images=16)[0].finish()
    history = run.read_history("tiny")
    assert len(history) == 2
    assert (history["epoch_seconds"] > 0).all() and (history["images_per_second"] > 0).all()
    assert history["learning_rate"].iloc[1] < history["learning_rate"].iloc[0]
    assert history["val_accuracy_recomputed_bn"].between(0, 1).all()


def test_a_fit_traces_its_training_step_once(run):
    """Keras traces it twice when the metrics' or the optimizer's variables are created in
    the first trace (BuildBeforeTracing)."""
    training_run = training.TrainingRun(run, "tiny", label="Tiny CNN", seed=7)
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=16, cache=None)
    model = _tiny_model(2, training_run.steps_per_epoch)
    traces, train_step = [], model.train_step
    model.train_step = lambda batch: traces.append(batch) or train_step(batch)
    model.fit(train_data, validation_data=validation_data, epochs=2, verbose=0,
              callbacks=training_run.callbacks(precise_batchnorm_images=8))
    assert len(traces) == 1


def test_the_batchnorm_probe_leaves_training_unchanged(run, tmp_path_factory):
    other = _copy_split(run, tmp_path_factory.mktemp("probed"))
    _, plain = _train_tiny(run, epochs=2)
    _, probed = _train_tiny(other, epochs=2, probe_batchnorm_images=16)
    for a, b in zip(plain.weights, probed.weights, strict=True):  # moving statistics included
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_a_run_resumes_only_on_the_split_it_started_with(run, synthetic_source, capsys):
    with pytest.raises(callbacks.TrainingStoppedError):
        _train_tiny(run, stop_after_epoch=1)
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root), "--run-dir",
                      str(run.root), "--seed", "3", "--force"]) == 0
    record = json.loads((run.work("tiny") / "record.json").read_text())
    training.TrainingRun(run, "tiny", label="Tiny CNN", seed=7, deterministic=True)
    assert "started with another split" in capsys.readouterr().out
    [aside] = (run.root / "work").glob("tiny.set-aside-*")
    assert json.loads((aside / "record.json").read_text()) == record  # set aside, whole
    assert not run.work("tiny").exists()
    # Back with the new split's hash: now the seed differs, and it is set aside again.
    shutil.move(aside, run.work("tiny"))
    (run.work("tiny") / "record.json").write_text(json.dumps(
        {**record, "split_sha256": hashlib.sha256(run.split_csv.read_bytes()).hexdigest()}))
    training.TrainingRun(run, "tiny", label="Tiny CNN", seed=8, deterministic=True)
    assert "started with seed 7" in capsys.readouterr().out
    # Set aside once more (named by the second it happened in: the first name, or the next).
    [again] = (run.root / "work").glob("tiny.set-aside-*")
    assert json.loads((again / "record.json").read_text())["seed"] == 7
    _train_tiny(run, epochs=1)[0].finish()


def test_a_second_phase_after_a_resumed_first_starts_at_its_own_epoch(run):
    """Keras keeps the epoch BackupAndRestore restored in phase 1 for the next fit."""
    training_run = training.TrainingRun(run, "two", label="Two phases", seed=7,
                                        deterministic=True)
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = _tiny_model(3, training_run.steps_per_epoch)
    with pytest.raises(callbacks.TrainingStoppedError):
        model.fit(train_data, validation_data=validation_data, epochs=3, verbose=0,
                  callbacks=training_run.callbacks("first", stop_after_epoch=1))
    model.fit(train_data, validation_data=validation_data, epochs=3, verbose=0,
              callbacks=training_run.callbacks("first"))  # resumed at epoch 2
    assert training_run.end_phase("first") == 3
    model.fit(train_data, validation_data=validation_data, initial_epoch=3, epochs=4,
              verbose=0, callbacks=training_run.callbacks(initial_epoch=3))
    training_run.finish()
    assert run.read_history("two")["epoch"].tolist() == [0, 1, 2, 3]
    assert run.phase_boundary("two") == 3


def test_phases_keep_their_own_best_and_a_skipped_last_phase_keeps_the_first(run):
    training_run, _ = _train_tiny(run, epochs=2, phase="first")
    assert training_run.end_phase("first") == 2
    assert training_run.phase_boundary("first") == 2
    assert "first" in training_run.work.finished_phases()
    phase_model = training_run.checkpoint("first").read_bytes()
    training_run.finish()  # no epoch in the last phase: phase 1's best is the model kept
    assert run.model("tiny", "first").read_bytes() == phase_model
    assert run.model("tiny").read_bytes() == phase_model
    assert run.finished_phases("tiny") == {"first": 2} and run.phase_boundary("tiny") == 2


def test_a_skipped_last_phase_keeps_the_model_of_the_phase_just_before_it(run):
    training_run, model = _train_tiny(run, epochs=1, phase="first")
    training_run.end_phase("first")
    model.fit(training_run.training_data, validation_data=training_run.validation_data,
              initial_epoch=1, epochs=2, verbose=0,
              callbacks=training_run.callbacks("second", initial_epoch=1, patience=9,
                                               precise_batchnorm_images=16))
    training_run.end_phase("second")
    phase_model = training_run.checkpoint("second").read_bytes()
    training_run.finish()  # no epoch in the last phase
    assert run.model("tiny").read_bytes() == phase_model


def test_a_run_that_diverges_in_its_last_phase_names_that_phase(run):
    training_run, model = _train_tiny(run, epochs=1, phase="first")
    training_run.end_phase("first")
    model.compile(optimizer=keras.optimizers.AdamW(1e9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    with pytest.raises(training.TrainingDivergedError, match="in the last phase: "):
        model.fit(training_run.training_data, validation_data=training_run.validation_data,
                  initial_epoch=1, epochs=2, verbose=0,
                  callbacks=training_run.callbacks(initial_epoch=1, precise_batchnorm_images=16))
        training_run.finish()


def test_recalibration_sets_exact_batch_statistics_and_leaves_weights_alone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    hidden = keras.layers.BatchNormalization(name="learned")(hidden)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    model = keras.Model(inputs, frozen(hidden))
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(24, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(24))).batch(8)
    learned = model.get_layer("learned")
    learned.moving_mean.assign(np.full(4, 50.0, "float32"))  # stale statistics
    kernel_before = model.get_layer("dense").kernel.numpy()
    frozen_before = frozen.moving_mean.numpy()

    callbacks.recalibrate_batchnorm(model, dataset, batches=3)

    dense_out = model.get_layer("dense")(x).numpy()
    batch_means = dense_out.reshape(3, 8, 4).mean(axis=1)
    batch_variances = dense_out.reshape(3, 8, 4).var(axis=1)
    np.testing.assert_allclose(learned.moving_mean.numpy(), batch_means.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(learned.moving_variance.numpy(), batch_variances.mean(axis=0),
                               rtol=1e-3)
    np.testing.assert_array_equal(model.get_layer("dense").kernel.numpy(), kernel_before)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), frozen_before)
    assert learned.momentum == 0.99  # restored
    assert callbacks.batchnorm_layers(model) == [learned]


def test_killed_at_random_moments_a_run_ends_as_one_never_killed(run, tmp_path_factory):
    """SIGKILL at random moments (inside epochs, checkpoint, history and backup writes, the
    move into place), then run again until it finishes: same history, same models. On one
    device in mixed_float16, as on Colab's GPU, with a loss scale that moves
    (tiny_training.py), so the loss scale is part of what a resume restores; several replicas
    resume from a stop in tests/test_replicas.py, and the CPU's kills at chosen moments are
    below. (CI time: one setting, where both the CPU's and two replicas' took 4 minutes.)"""
    options, kills = ["--precision", "mixed_float16"], KILLS
    script = [sys.executable, str(REPOSITORY / "tests" / "scripts" / "tiny_training.py")]
    straight = _copy_split(run, tmp_path_factory.mktemp("straight"))
    started = time.monotonic()
    subprocess.run([*script, str(straight.root), *options], check=True, capture_output=True,
                   timeout=300)
    duration = time.monotonic() - started
    generator = np.random.default_rng(len(options))
    for _ in range(kills):
        process = subprocess.Popen([*script, str(run.root), *options],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=generator.uniform(0.3, 1.0) * duration)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    for _ in range(2):  # a kill inside finish() can leave one more step to do
        finished = subprocess.run([*script, str(run.root), *options], capture_output=True,
                                  text=True, timeout=300)
        if finished.returncode == 0 and run.validation_metrics("tiny").exists():
            break
    assert finished.returncode == 0, finished.stderr[-3000:]
    _assert_same_run(run, straight)
    assert run.phase_boundary("tiny") == straight.phase_boundary("tiny") == 3
    for phase in (None, "first"):
        assert keras.saving.load_model(run.model("tiny", phase)).count_params() > 0


def _run_once(run, learning_rate=2e-3, while_open=None):
    """The recipe with the needs_training() check, as notebook 3 writes it; returns (kept,
    metrics). ``while_open`` is called once the run is created."""
    training_run = training.TrainingRun(run, "tiny", label="Tiny CNN", seed=7, deterministic=True)
    if while_open is not None:
        while_open()
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = notebooks.baseline_cnn(16, widths=(4, 8), seed=7)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kept = not training_run.needs_training(model)
    if not kept:
        model.fit(train_data, validation_data=validation_data, epochs=2, verbose=0,
                  callbacks=training_run.callbacks(precise_batchnorm_images=16))
    return kept, training_run.finish()


def test_a_finished_run_of_the_same_recipe_is_kept_and_another_recipe_trains(run):
    assert _run_once(run)[0] is False
    model_bytes = run.model("tiny").read_bytes()
    # As an earlier version recorded it: one fingerprint, which a one-phase run still keeps.
    record = run.read_run_record("tiny")
    record["fingerprint"] = record.pop("fingerprints")["last"]
    run.run_record("tiny").write_text(json.dumps(record))
    kept, metrics = _run_once(run)  # "Run all" again: nothing to train
    assert kept is True and metrics == json.loads(run.validation_metrics("tiny").read_text())
    assert run.model("tiny").read_bytes() == model_bytes and not run.work("tiny").exists()
    assert _run_once(run, learning_rate=1e-3)[0] is False  # an edited recipe trains again
    assert run.model("tiny").read_bytes() != model_bytes


def test_a_finished_run_trains_again_on_a_new_split(run):
    # Its model may have trained on images the new split puts in validation or test.
    assert _run_once(run)[0] is False
    assert _run_once(run)[0] is True
    rows = pd.read_csv(run.split_csv, dtype=str, keep_default_na=False)
    label = rows["label"].iloc[0]
    train = rows.index[(rows["label"] == label) & (rows["split"] == "train")][0]
    validation = rows.index[(rows["label"] == label) & (rows["split"] == "validation")][0]
    rows.loc[[train, validation], "split"] = ["validation", "train"]  # same counts
    rows.to_csv(run.split_csv, index=False, lineterminator="\n")
    assert _run_once(run)[0] is False


def test_a_changed_loss_is_another_recipe():
    model = _compiled_with(1e-3)
    fingerprint = fingerprints.recipe_fingerprint(model)
    model.compile(optimizer=model.optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=1))
    assert fingerprints.recipe_fingerprint(model) != fingerprint


def test_a_run_of_other_epoch_randomness_is_trained_again(run, monkeypatch):
    """Runs trained before EpochSeeds' keys changed drew other augmentation: not the same
    recipe, so not kept as one."""
    assert _run_once(run)[0] is False
    assert _run_once(run)[0] is True  # the same recipe: kept
    monkeypatch.setattr(training, "EPOCH_RANDOMNESS", "generator key [seed, epoch]")
    assert _run_once(run)[0] is False


def test_a_non_finite_batch_loss_stops_training_at_that_batch():
    guard = callbacks.NonFiniteLossGuard(lambda epoch, batch, values: RuntimeError(
        epoch, batch, values))
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 1.5})
    for loss in (float("inf"), float("nan")):
        with pytest.raises(RuntimeError) as raised:
            guard.on_train_batch_end(3, {"loss": loss})
        assert raised.value.args[:2] == (2, 3)


def test_a_non_finite_validation_loss_stops_training_at_that_epoch():
    guard = callbacks.NonFiniteLossGuard(lambda epoch, batch, values: RuntimeError(epoch))
    guard.on_epoch_end(0, {"loss": 1.0, "val_loss": 2.0})
    for values in ({"loss": 1.0, "val_loss": float("nan")}, {"loss": float("inf")}):
        with pytest.raises(RuntimeError, match="^1$"):
            guard.on_epoch_end(1, values)


def test_a_diverged_run_fails_keeps_nothing_and_blocks_nothing(run):
    """A loss that goes non-finite stops the run with a message that says so; the run that
    finished before stays in place, and another recipe then trains without a manual step."""
    assert _run_once(run)[0] is False
    model_bytes = run.model("tiny").read_bytes()
    metrics = run.validation_metrics("tiny").read_text()
    with pytest.raises(training.TrainingDivergedError) as error:
        _run_once(run, learning_rate=1e9)
    message = str(error.value)
    assert "'tiny' diverged at epoch" in message and "learning rate" in message
    assert "nan" in message.lower() or "inf" in message.lower()
    assert run.model("tiny").read_bytes() == model_bytes
    assert run.validation_metrics("tiny").read_text() == metrics
    assert not run.work("tiny").exists() and run.work("tiny.diverged").is_dir()
    assert _run_once(run, learning_rate=1e-3)[0] is False  # trains, not refused
    assert run.model("tiny").read_bytes() != model_bytes


def test_a_failed_run_with_other_parameters_never_blocks_the_one_that_finished(run, capsys):
    """A run stopped with an unusual recipe is set aside when the recipe that finished
    before runs again: that one is kept as it is, nothing is deleted by hand."""
    assert _run_once(run)[0] is False
    model_bytes = run.model("tiny").read_bytes()
    with pytest.raises(callbacks.TrainingStoppedError):  # another recipe, stopped midway
        _train_tiny(run, epochs=5, stop_after_epoch=1)
    kept, _ = _run_once(run)  # the original recipe again
    assert kept and "set aside" in capsys.readouterr().out
    assert run.model("tiny").read_bytes() == model_bytes
    assert [path.name for path in (run.root / "work").glob("tiny.set-aside-*/record.json")]
    assert not run.work("tiny").exists()
    gc.collect()  # the stopped run, dropped: its hold on the lock goes with it
    assert not runlock.lock_path(run.root).exists()


def test_a_finished_run_with_a_missing_file_trains_again_under_the_run_folders_lock(run,
                                                                                    capsys):
    assert _run_once(run)[0] is False
    missing = inference.sidecar_path(run.model("tiny"))  # any of its files: the model too
    missing.unlink()
    kept, result = _run_once(run)  # the same recipe: kept only if all its files are there
    assert not kept and "models/tiny.json is missing: it trains again" in capsys.readouterr().out
    assert missing.is_file() and result == json.loads(run.validation_metrics("tiny").read_text())
    # A training run holds the run folder's lock, naming itself, until finish; meanwhile
    # another process is refused, naming this one.
    def check_lock():
        holder = json.loads(runlock.lock_path(run.root).read_text())
        assert holder["pid"] == os.getpid() and holder["purpose"] == "training tiny"
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from helpers import runlock, errors\n"
             "try:\n    runlock.acquire(sys.argv[1], 'another study')\n"
             "except errors.DataError as error:\n    print(error)\n    sys.exit(3)",
             str(run.root)], capture_output=True, text=True, cwd=REPOSITORY)
        assert other.returncode == 3 and f"process {os.getpid()}" in other.stdout

    assert _run_once(run, while_open=check_lock)[0] is True  # kept: all its files are back
    assert not runlock.lock_path(run.root).exists()


def test_a_publish_killed_midway_leaves_a_run_that_counts_as_unfinished(tmp_path):
    run = RunFolder(tmp_path / "run")
    for path in (run.model("tiny"), inference.sidecar_path(run.model("tiny")),
                 run.history("tiny"), run.run_record("tiny"), run.validation_metrics("tiny")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert publish.missing_files(run, "tiny") == []
    files.write_json({"first": 2}, run.phases("tiny"))  # a two-phase run needs its phase model
    assert publish.missing_files(run, "tiny") == ["models/tiny_first.keras"]
    run.model("tiny", "first").write_text("{}")

    def killed() -> dict:
        raise KeyboardInterrupt  # as a kill in the middle of copying the new run's files

    with pytest.raises(KeyboardInterrupt):
        publish.publish(run, "tiny", killed)
    assert publish.missing_files(run, "tiny") == ["metrics/tiny_validation.json"]


def test_a_one_phase_run_published_over_a_two_phase_one_leaves_none_of_its_phases(tmp_path):
    run = RunFolder(tmp_path / "run")
    for path in (run.model("tiny"), run.model("tiny", "first"), run.history("tiny"),
                 run.run_record("tiny"), run.validation_metrics("tiny")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    files.write_json({"first": 2}, run.phases("tiny"))  # the two-phase run before
    work = WorkFolder(run, "tiny")
    work.path.mkdir(parents=True)
    work.checkpoint(None).write_text("model")
    work.history_csv.write_text("epoch\n0\n")
    files.write_json({"seed": 7}, work.record)
    publish.publish_work(work, {"accuracy": 0.9}, "Tiny", {
        "image_size": 16, "resize_method": "bilinear", "crop_fraction": 1.0}, {"last": "abc"})
    assert run.finished_phases("tiny") == {} and not run.model("tiny", "first").exists()
    assert publish.missing_files(run, "tiny") == [] and not work.exists()


def test_a_record_with_one_fingerprint_keeps_only_a_one_phase_run(tmp_path):
    """Records before per-phase fingerprints: one fingerprint is a one-phase run's; a
    two-phase run so recorded cannot tell its phases apart and trains again."""
    run = RunFolder(tmp_path / "run")
    for path in (run.model("tiny"), inference.sidecar_path(run.model("tiny")),
                 run.history("tiny"), run.validation_metrics("tiny")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    files.write_json({"fingerprint": "abc"}, run.run_record("tiny"))
    assert publish.finished_fingerprints(run, "tiny") == {"last": "abc"}
    files.write_json({"first": 2}, run.phases("tiny"))
    run.model("tiny", "first").write_text("{}")
    assert publish.finished_fingerprints(run, "tiny") == {}


def test_finish_refuses_a_history_with_a_non_finite_loss(run):
    """A run trained without the standard callbacks (so without the guard) is checked too."""
    training_run, _ = _train_tiny(run, epochs=1)
    history = pd.read_csv(training_run.history_csv)
    history.loc[0, "val_loss"] = float("nan")
    history.to_csv(training_run.history_csv, index=False)
    with pytest.raises(training.TrainingDivergedError, match="val_loss = nan"):
        training_run.finish()
    assert not run.model("tiny").exists() and not run.validation_metrics("tiny").exists()


def test_after_finish_the_notebooks_model_is_the_kept_one(run):
    """fit leaves the last epoch's weights; finish(model) puts the best epoch's in."""
    for _ in range(2):  # trained, then kept as it is
        training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=7,
                                            deterministic=True)
        train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                            max_images=48, cache=None)
        model = _tiny_model(4, training_run.steps_per_epoch)
        if training_run.needs_training(model):
            model.fit(train_data, validation_data=validation_data, epochs=4, verbose=0,
                      callbacks=training_run.callbacks(precise_batchnorm_images=16))
        before = model.get_weights()
        validation = training_run.finish(model)
        history = run.read_history("tiny")
        if history["val_loss"].idxmin() != len(history) - 1:  # the best epoch is not the last
            assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(),
                                                                 strict=True))
        evaluated = model.evaluate(validation_data, verbose=0, return_dict=True)
        assert evaluated["accuracy"] == pytest.approx(validation["accuracy"])
        kept = keras.saving.load_model(run.model("tiny"))
        for a, b in zip(model.get_weights(), kept.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def _two_phases(run, *, freeze_in_phase_2=(), phase_1_rate=2e-3, phase_2_rate=5e-4,
                stop_phase_1_after=0, stop_phase_2_after=0):
    """A two-phase recipe as notebook 4 writes it: phase 2 unfreezes the layers but those
    named in ``freeze_in_phase_2``, at a rate that is a parameter of phase 2 alone. Returns
    which phases trained."""
    training_run = training.TrainingRun(run, "two", label="Two phases", seed=7,
                                        deterministic=True,
                                        parameters={"PHASE_2_RATE": phase_2_rate})
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = notebooks.baseline_cnn(16, widths=(4, 8), seed=7)
    model.compile(optimizer=keras.optimizers.AdamW(phase_1_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    trained = []
    if training_run.needs_training(model, "first", later_parameters=("PHASE_2_RATE",)):
        trained.append("first")
        model.fit(train_data, validation_data=validation_data, epochs=2, verbose=0,
                  callbacks=training_run.callbacks("first", precise_batchnorm_images=16,
                                                   stop_after_epoch=stop_phase_1_after))
        training_run.end_phase("first")
    model.load_weights(training_run.checkpoint("first"))
    for layer in model.layers:
        layer.trainable = layer.name not in freeze_in_phase_2
    model.compile(optimizer=keras.optimizers.AdamW(phase_2_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    boundary = training_run.phase_boundary("first")
    if training_run.needs_training(model):
        trained.append("last")
        model.fit(train_data, validation_data=validation_data, initial_epoch=boundary,
                  epochs=boundary + 2, verbose=0,
                  callbacks=training_run.callbacks(initial_epoch=boundary,
                                                   precise_batchnorm_images=16,
                                                   stop_after_epoch=stop_phase_2_after))
    training_run.finish(model)
    return trained


def test_an_edited_phase_retrains_from_that_phase_and_no_earlier(run):
    assert _two_phases(run) == ["first", "last"]
    first_model = run.model("two", "first").read_bytes()
    last_model = run.model("two").read_bytes()
    assert _two_phases(run) == []  # "Run all" again: both phases kept
    assert run.model("two").read_bytes() == last_model
    # The unfreezing edited: phase 2 trains again from phase 1's kept model.
    assert _two_phases(run, freeze_in_phase_2=("block1_conv1",)) == ["last"]
    assert run.model("two", "first").read_bytes() == first_model
    assert run.model("two").read_bytes() != last_model
    assert run.read_history("two")["epoch"].tolist() == [0, 1, 2, 3]
    assert run.finished_phases("two") == {"first": 2}
    frozen = keras.saving.load_model(run.model("two")).get_layer("block1_conv1")
    first = keras.saving.load_model(run.model("two", "first")).get_layer("block1_conv1")
    np.testing.assert_array_equal(frozen.kernel.numpy(), first.kernel.numpy())
    # A parameter of phase 2 alone edited: phase 2 again, phase 1 kept.
    assert _two_phases(run, freeze_in_phase_2=("block1_conv1",), phase_2_rate=1e-3) == ["last"]
    assert run.model("two", "first").read_bytes() == first_model
    # Phase 1 edited: both train again.
    assert _two_phases(run, freeze_in_phase_2=("block1_conv1",), phase_1_rate=1e-3,
                       phase_2_rate=1e-3) == ["first", "last"]
    assert run.model("two", "first").read_bytes() != first_model


def test_a_two_phase_run_recorded_with_one_fingerprint_trains_again(run):
    # Records from before per-phase fingerprints hold one, which cannot say phase 1's recipe.
    assert _two_phases(run) == ["first", "last"]
    record = run.read_run_record("two")
    record["fingerprint"] = record.pop("fingerprints")["last"]
    run.run_record("two").write_text(json.dumps(record))
    assert publish.finished_fingerprints(run, "two") == {}
    assert _two_phases(run) == ["first", "last"]
    assert _two_phases(run) == []  # recorded per phase now: kept


def test_a_one_phase_run_replacing_a_two_phase_one_leaves_no_phase_model(run):
    _two_phases(run)
    assert run.model("two", "first").exists()
    training_run, _ = _train_tiny(run, name="two", epochs=2)
    training_run.finish()
    assert not run.model("two", "first").exists() and run.finished_phases("two") == {}
    assert publish.missing_files(run, "two") == []


def test_an_unfinished_phase_whose_recipe_changed_starts_again(run, capsys):
    with pytest.raises(callbacks.TrainingStoppedError):
        _two_phases(run, stop_phase_2_after=3)  # phase 2 stopped after its first epoch
    assert _two_phases(run, freeze_in_phase_2=("block1_conv1",)) == ["last"]
    assert "changed since it started" in capsys.readouterr().out
    history = run.read_history("two")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert run.finished_phases("two") == {"first": 2}


def test_a_phase_killed_before_its_end_resumes_rather_than_counting_as_finished(run):
    with pytest.raises(callbacks.TrainingStoppedError):
        _two_phases(run, stop_phase_1_after=1)  # killed after phase 1's first epoch
    # Same recipe, so the fingerprint matches; the phase never ended, so it must train on.
    assert _two_phases(run) == ["first", "last"]
    assert run.read_history("two")["epoch"].tolist() == [0, 1, 2, 3]
    assert run.finished_phases("two") == {"first": 2}


def test_a_finished_phase_whose_recipe_changed_trains_again_though_a_later_one_was_killed(
        run):
    with pytest.raises(callbacks.TrainingStoppedError):
        _two_phases(run, stop_phase_2_after=3)  # phase 1 finished, phase 2 killed
    assert not run.model("two", "first").exists()  # nothing published yet
    assert _two_phases(run, phase_1_rate=1e-3) == ["first", "last"]
    assert run.read_history("two")["epoch"].tolist() == [0, 1, 2, 3]
    assert run.finished_phases("two") == {"first": 2}
    fresh = _copy_split(run, run.root.parent / "fresh")
    _two_phases(fresh, phase_1_rate=1e-3)  # the edited recipe, never interrupted
    for kept, never_killed in zip(keras.saving.load_model(run.model("two", "first")).weights,
                                  keras.saving.load_model(fresh.model("two", "first")).weights,
                                  strict=True):
        np.testing.assert_allclose(kept.numpy(), never_killed.numpy(), rtol=1e-5, atol=1e-6)


def test_a_run_of_edited_code_is_not_recorded_as_the_commit(tmp_path):
    def git(*arguments):
        subprocess.run(["git", *arguments], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    commit = fingerprints.git_commit(tmp_path)
    assert len(commit) == 40 and " " not in commit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert fingerprints.git_commit(tmp_path) == f"{commit} with uncommitted changes"
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "new_module.py").write_text("")  # a new file is a change too
    assert fingerprints.git_commit(tmp_path) == f"{commit} with uncommitted changes"
    assert fingerprints.git_commit(tmp_path.parent / "not-a-checkout-here") == "unknown"


def test_the_kept_run_is_chosen_by_the_metrics_the_notebook_names(tmp_path):
    """keep_best_run compares the metrics ``by`` names, in order: the first decides, the
    next breaks its ties."""
    run = RunFolder(tmp_path / "run")
    scores = {"a": {"accuracy": 0.9, "macro_f1": 0.80}, "b": {"accuracy": 0.9, "macro_f1": 0.85},
              "c": {"accuracy": 0.8, "macro_f1": 0.95}}
    for name, score in scores.items():
        run.validation_metrics(name).parent.mkdir(parents=True, exist_ok=True)
        run.validation_metrics(name).write_text(json.dumps({"n_images": 10, **score}))
        for path in (run.model(name), inference.sidecar_path(run.model(name)),
                     run.history(name), run.run_record(name)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": name}) if path.suffix == ".json" else name)
    assert publish.keep_best_run(run, list(scores), "kept", by=("accuracy", "macro_f1")) == "b"
    assert publish.keep_best_run(run, list(scores), "kept", by=("macro_f1",)) == "c"


def test_another_threads_draws_leave_the_initial_weights_alone():
    """Keras seeds each unseeded initializer from Python's ``random``, which other threads
    (a Dask worker's event loop) draw from too: ``keras_fixes.own_default_seeds``."""
    def initial_weights(draw_between: bool) -> list:
        devices.set_seed(7)
        if draw_between:
            random.random()  # as another thread may, at any moment
        return notebooks.baseline_cnn(16, widths=(4, 8), seed=7).get_weights()

    for plain, drawn in zip(initial_weights(False), initial_weights(True), strict=True):
        np.testing.assert_array_equal(plain, drawn)


def test_a_recipe_has_one_fingerprint_whatever_the_process_built_before():
    """Keras numbers the names it gives in a process (input_layer_1...), references included
    (notebook 4's ResNet50 has an unnamed input): a run trained on a cluster's worker matches
    the kernel's (helpers/cluster.py)."""
    def compiled() -> keras.Model:
        inputs = keras.Input((8,))  # named by Keras, as keras.applications' inputs are
        model = keras.Model(inputs, keras.layers.Dense(2, name="probabilities")(inputs))
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss="sparse_categorical_crossentropy")
        return model

    keras.backend.clear_session()
    first, second = compiled(), compiled()
    assert '"input_layer_1"' in json.dumps(second.get_config())  # numbered by Keras
    assert fingerprints.recipe_fingerprint(first) == fingerprints.recipe_fingerprint(second)
    assert fingerprints.earlier_fingerprint(first) != fingerprints.earlier_fingerprint(second)


def test_runs_recorded_with_the_earlier_fingerprint_are_still_kept(run, monkeypatch):
    with monkeypatch.context() as earlier_code:
        earlier_code.setattr(training, "recipe_fingerprint", lambda *_: "as recorded before")
        assert _run_once(run)[0] is False  # trained, its fingerprint recorded the earlier way
    monkeypatch.setattr(training, "earlier_fingerprint", lambda *_: "as recorded before")
    assert _run_once(run)[0] is True
