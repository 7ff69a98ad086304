import filecmp
import hashlib
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import data, inference, models, training
from helpers.errors import DataError
from helpers.labels import CLASS_NAMES
from helpers.runfolder import RunFolder


@pytest.mark.parametrize("gpus, tpu, kind", [
    (0, False, "default"), (1, False, "default"), (2, False, "mirrored"), (8, False, "mirrored"),
    (0, True, "tpu"),
])
def test_strategy_kind(gpus, tpu, kind):
    assert training.choose_strategy_kind(gpus, tpu) == kind


@pytest.mark.parametrize("kind, capabilities, policy", [
    ("default", [], "float32"),  # CPU
    ("default", [(6, 0)], "float32"),  # P100: no tensor cores
    ("default", [(7, 5)], "mixed_float16"),  # T4, Colab's usual GPU
    ("mirrored", [(8, 0), (6, 1)], "float32"),  # the slowest GPU decides
    ("tpu", [], "mixed_bfloat16"),
])
def test_precision_choice(kind, capabilities, policy):
    assert training.choose_precision(kind, capabilities) == policy


def test_this_cpu_machine_gets_the_default_strategy_and_float32():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    strategy = training.select_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, tf.distribute.MirroredStrategy)
    try:
        assert training.configure_precision(strategy) == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_schedule_warms_up_then_decays_to_zero():
    schedule = training.warmup_cosine(1e-3, steps_per_epoch=10, epochs=5)
    rates = [float(schedule(step)) for step in [0, 5, 10, 30, 50]]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0, abs=1e-9)


@pytest.fixture()
def run(synthetic_source, tmp_path) -> RunFolder:
    """A run folder with the synthetic dataset's split (notebook 1's output)."""
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path)]) == 0
    return RunFolder(tmp_path)


def _train_tiny(run, name="tiny", epochs=3, phase=None, initial_epoch=0, **callback_options):
    """A small recipe as a notebook writes it, on the plumbing of TrainingRun."""
    training_run = training.TrainingRun(run, name, label="Tiny CNN", seed=7, deterministic=True,
                                        parameters={"EPOCHS": epochs})
    train_data, validation_data = training_run.datasets(image_size=16, batch_size=8,
                                                        max_images=48, cache=None)
    model = models.build_cnn(16, filters=(4, 8), seed=7)
    model.compile(optimizer=keras.optimizers.AdamW(
                      training.warmup_cosine(2e-3, training_run.steps_per_epoch, epochs)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_data, validation_data=validation_data, epochs=epochs, verbose=0,
              initial_epoch=initial_epoch,
              callbacks=training_run.callbacks(phase, patience=9, initial_epoch=initial_epoch,
                                               precise_batchnorm_images=16, **callback_options))
    return training_run, model


def test_callbacks_need_the_data_and_cover_the_standard_set(run):
    training_run = training.TrainingRun(run, "tiny", label="Tiny", seed=0)
    with pytest.raises(RuntimeError, match="datasets"):
        training_run.callbacks()
    training_run.datasets(image_size=16, batch_size=8)
    kinds = [type(callback).__name__ for callback in training_run.callbacks(
        probe_batchnorm_images=16, stop_after_epoch=2)]
    assert kinds == ["BackupAndRestore", "EpochSeeds", "ModelCheckpoint", "EarlyStopping",
                     "EpochTiming", "PreciseBatchNorm", "BatchNormStatisticsProbe",
                     "CSVLogger", "StopAfterEpoch"]


def test_a_killed_run_resumes_to_the_same_weights(run, tmp_path_factory):
    straight = RunFolder(tmp_path_factory.mktemp("straight"))
    shutil.copytree(run.root / "data", straight.root / "data")
    _, model = _train_tiny(straight)
    expected = model.get_weights()
    with pytest.raises(training.TrainingStoppedError):
        _train_tiny(run, stop_after_epoch=2)
    assert len(run.read_history("tiny")) == 2
    assert not run.validation_metrics("tiny").exists()
    _train_tiny(run)  # the same recipe again: resumes at epoch 3

    histories = {"straight": straight.read_history("tiny"), "resumed": run.read_history("tiny")}
    assert histories["resumed"]["epoch"].tolist() == [0, 1, 2]
    for column in ["loss", "accuracy", "val_loss", "val_accuracy"]:
        np.testing.assert_allclose(histories["resumed"][column], histories["straight"][column],
                                   rtol=1e-6, err_msg=column)
    resumed = keras.saving.load_model(run.model("tiny")).get_weights()
    best_straight = keras.saving.load_model(straight.model("tiny")).get_weights()
    for straight_weights, resumed_weights in zip(best_straight, resumed, strict=True):
        np.testing.assert_allclose(straight_weights, resumed_weights, rtol=1e-6, atol=1e-7)
    assert len(expected) == len(resumed)


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
    assert record["devices"] and record["git_commit"] and record["precision"] == "float32"
    assert json.loads(run.validation_metrics("tiny").read_text()) == result
    assert 0 <= result["accuracy"] <= 1 and result["n_images"] > 0


def test_a_finished_run_trained_again_starts_afresh(run, capsys):
    _train_tiny(run, epochs=2)[0].finish()
    _train_tiny(run, epochs=1)
    assert "training it again from scratch" in capsys.readouterr().out
    assert run.read_history("tiny")["epoch"].tolist() == [0]


def test_history_has_timing_learning_rate_and_the_batchnorm_probe(run):
    _train_tiny(run, epochs=2, probe_batchnorm_images=16)
    history = run.read_history("tiny")
    assert len(history) == 2
    assert (history["epoch_seconds"] > 0).all() and (history["images_per_second"] > 0).all()
    assert history["learning_rate"].iloc[1] < history["learning_rate"].iloc[0]
    assert history["val_accuracy_recomputed_bn"].between(0, 1).all()
    assert run.model("tiny").exists()


def test_the_batchnorm_probe_leaves_training_unchanged(run, tmp_path_factory):
    other = RunFolder(tmp_path_factory.mktemp("probed"))
    shutil.copytree(run.root / "data", other.root / "data")
    _, plain = _train_tiny(run, epochs=2)
    _, probed = _train_tiny(other, epochs=2, probe_batchnorm_images=16)
    for a, b in zip(plain.weights, probed.weights, strict=True):  # moving statistics included
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_a_run_resumes_only_on_the_split_it_started_with(run, synthetic_source):
    with pytest.raises(training.TrainingStoppedError):
        _train_tiny(run, stop_after_epoch=1)
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root), "--run-dir",
                      str(run.root), "--seed", "3", "--force"]) == 0
    with pytest.raises(DataError, match="started on another split"):
        training.TrainingRun(run, "tiny", label="Tiny CNN", seed=7)


def test_phases_keep_their_own_best_and_a_skipped_last_phase_keeps_the_first(run):
    training_run, _ = _train_tiny(run, epochs=2, phase="first")
    assert training_run.end_phase("first") == 2
    assert run.phase_boundary("tiny") == 2 and training_run.phase_finished("first")
    assert run.model("tiny", "first").exists() and not run.model("tiny").exists()
    training_run.finish()  # no epoch in the last phase: phase 1's best is the model kept
    assert filecmp.cmp(run.model("tiny", "first"), run.model("tiny"), shallow=False)
    assert run.finished_phases("tiny") == {"first": 2}


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

    training.recalibrate_batchnorm(model, dataset, batches=3)

    dense_out = model.get_layer("dense")(x).numpy()
    batch_means = dense_out.reshape(3, 8, 4).mean(axis=1)
    batch_variances = dense_out.reshape(3, 8, 4).var(axis=1)
    np.testing.assert_allclose(learned.moving_mean.numpy(), batch_means.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(learned.moving_variance.numpy(), batch_variances.mean(axis=0),
                               rtol=1e-3)
    np.testing.assert_array_equal(model.get_layer("dense").kernel.numpy(), kernel_before)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), frozen_before)
    assert learned.momentum == 0.99  # restored
    assert training.batchnorm_layers(model) == [learned]
