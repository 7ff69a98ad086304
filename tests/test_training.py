import hashlib
import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import data, training
from helpers.labels import CLASS_NAMES
from tests.conftest import REPOSITORY


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
    schedule = training.learning_rate("schedule", 1e-3, steps_per_epoch=10, epochs=5)
    rates = [float(schedule(step)) for step in [0, 5, 10, 30, 50]]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0, abs=1e-9)
    assert training.learning_rate("constant", 1e-3, 10, 5) == 1e-3
    with pytest.raises(ValueError, match="strategy"):
        training.learning_rate("cyclic", 1e-3, 10, 5)


def test_callbacks_cover_checkpoint_early_stopping_history_backup(tmp_path):
    kinds = {type(c).__name__ for c in training.make_callbacks(
        tmp_path, "cnn", lr_strategy="plateau", images_per_epoch=10, tensorboard=True)}
    assert {"ModelCheckpoint", "EarlyStopping", "ReduceLROnPlateau", "CSVLogger",
            "BackupAndRestore", "EpochTiming", "TensorBoard"} <= kinds
    kinds = {type(c).__name__ for c in training.make_callbacks(
        tmp_path, "cnn", lr_strategy="schedule", images_per_epoch=10)}
    assert "ReduceLROnPlateau" not in kinds and "TensorBoard" not in kinds


def test_history_has_timing_and_learning_rate_columns(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=training.make_callbacks(
        tmp_path, "tiny", lr_strategy="constant", images_per_epoch=32))
    history = pd.read_csv(tmp_path / "history" / "tiny.csv")
    assert len(history) == 2
    assert (history["epoch_seconds"] > 0).all() and (history["images_per_second"] > 0).all()
    assert history["learning_rate"].tolist() == pytest.approx([0.01, 0.01])
    assert (tmp_path / "models" / "tiny.keras").exists()
    assert training.best_logged(tmp_path / "history" / "tiny.csv") == history["val_loss"].min()


def _train(run_dir, *extra):
    command = [sys.executable, "-m", "helpers.train", "cnn", "--run-dir", str(run_dir),
               "--image-size", "16", "--batch-size", "8", "--epochs", "3", "--max-images", "48",
               "--deterministic", "--patience", "9", "--cache", "none", *extra]
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)


def test_a_killed_run_resumes_to_the_same_weights(synthetic_source, tmp_path):
    root, _ = synthetic_source
    runs = {name: tmp_path / name for name in ("straight", "resumed")}
    for run_dir in runs.values():
        assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                          "--run-dir", str(run_dir)]) == 0
    assert _train(runs["straight"]).returncode == 0
    stopped = _train(runs["resumed"], "--stop-after-epoch", "2")
    assert stopped.returncode == 3, stopped.stderr[-2000:]
    assert "resume" in stopped.stderr
    assert len(pd.read_csv(runs["resumed"] / "history" / "cnn.csv")) == 2
    finished = _train(runs["resumed"])
    assert finished.returncode == 0, finished.stderr[-2000:]

    histories = {name: pd.read_csv(run_dir / "history" / "cnn.csv")
                 for name, run_dir in runs.items()}
    assert histories["resumed"]["epoch"].tolist() == [0, 1, 2]
    for column in ["loss", "accuracy", "val_loss", "val_accuracy"]:
        np.testing.assert_allclose(histories["resumed"][column], histories["straight"][column],
                                   rtol=1e-6, err_msg=column)
    weights = {name: keras.saving.load_model(run_dir / "models" / "cnn.keras").get_weights()
               for name, run_dir in runs.items()}
    for straight, resumed in zip(weights["straight"], weights["resumed"], strict=True):
        np.testing.assert_allclose(straight, resumed, rtol=1e-6, atol=1e-7)


def test_run_folder_records_config_and_model_sidecar(synthetic_source, tmp_path):
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path)]) == 0
    result = _train(tmp_path, "--epochs", "1", "--xla")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((tmp_path / "models" / "cnn.json").read_text())
    assert info["class_names"] == list(CLASS_NAMES)
    assert (info["image_size"], info["resize_method"]) == (16, "bilinear")
    record = json.loads((tmp_path / "config" / "cnn.json").read_text())
    assert record["config"]["xla"] is True
    split_csv = tmp_path / "data" / "split.csv"
    assert record["split_sha256"] == hashlib.sha256(split_csv.read_bytes()).hexdigest()
    assert record["config"]["image_size"] == 16 and record["config"]["deterministic"]
    assert record["versions"]["tensorflow"] == tf.__version__
    assert record["devices"] and record["git_commit"]
    metrics = json.loads((tmp_path / "metrics" / "cnn_validation.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["n_images"] > 0
    # Run again once finished: a new run replaces it, nothing is appended to the old one.
    again = _train(tmp_path, "--epochs", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training it again from scratch" in again.stdout
    assert pd.read_csv(tmp_path / "history" / "cnn.csv")["epoch"].tolist() == [0]


def _train_resnet(run_dir, *extra):
    command = [sys.executable, "-m", "helpers.train", "resnet50", "--run-dir", str(run_dir),
               "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--max-images", "32",
               "--fine-tune-epochs", "1", "--fine-tune-blocks", "2", *extra]
    return subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)


def test_resnet50_trains_frozen_then_fine_tuned_and_labels_random_init(synthetic_source,
                                                                       tmp_path):
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path)]) == 0
    result = _train_resnet(tmp_path, "--weights", "none")
    assert result.returncode == 0, result.stderr[-2000:]
    history = pd.read_csv(tmp_path / "history" / "resnet50.csv")
    phases = json.loads((tmp_path / "history" / "resnet50_phases.json").read_text())
    assert phases["frozen_epochs"] == 2
    assert history["epoch"].tolist() == [0, 1, 2]  # phase 2 continues the epoch count
    assert history["learning_rate"].iloc[2] < history["learning_rate"].iloc[:2].max() / 10
    assert (tmp_path / "models" / "resnet50_frozen.keras").exists()
    info = json.loads((tmp_path / "models" / "resnet50.json").read_text())
    assert info["label"] == "ResNet50, random init"


def test_resnet50_without_imagenet_weights_stops_with_what_to_do(synthetic_source, tmp_path):
    root, _ = synthetic_source
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(tmp_path)]) == 0
    result = _train_resnet(tmp_path, "--weights", str(tmp_path / "missing.h5"))
    assert result.returncode == 1
    assert "weights file not found" in result.stderr
    assert not (tmp_path / "models" / "resnet50.keras").exists()


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
