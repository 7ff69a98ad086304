"""The paths of GPU users, simulated on the CPU: several replicas (MirroredStrategy over
logical CPU devices, tests/scripts/simulated_gpus.py) and float16 with its loss scale. Each
check runs in a fresh process, since TensorFlow splits the CPU only before it initialises it.
"""

import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import (
    data,
    models,  # noqa: F401  registers the project's layers for load_model
)
from tests.conftest import REPOSITORY

SCRIPTS = REPOSITORY / "tests" / "scripts"


def _json_line(arguments: list[str]) -> dict:
    finished = subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                              timeout=600, cwd=REPOSITORY)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def test_a_float16_step_that_overflowed_on_one_replica_is_skipped():
    """Keras alone applies it (NaN weights, the loss scale unchanged): helpers.keras_fixes."""
    result = _json_line([str(SCRIPTS / "loss_scale_replicas.py")])
    assert result["replicas"] == 2
    assert result["weights_finite"]
    assert result["loss_scale"] == result["initial_loss_scale"] / 2


@pytest.fixture(scope="module")
def replica_runs(synthetic_source, tmp_path_factory) -> tuple[dict, object]:
    from helpers.runfolder import RunFolder

    folder = tmp_path_factory.mktemp("replicas")
    assert data.main(["prepare", "--source", "local", "--data-dir", str(synthetic_source[0]),
                      "--run-dir", str(folder)]) == 0
    return _json_line([str(SCRIPTS / "replicas_training.py"), str(folder)]), RunFolder(folder)


@pytest.mark.parametrize("name", ["two_float32", "two_float16"])
def test_two_replicas_learn_as_one_device_does(replica_runs, name):
    results, _ = replica_runs
    one, two = results["one_device"], results[name]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["policy"] == ("mixed_float16" if name == "two_float16" else "float32")
    # The per-replica batch (8) times the replicas: the global batch of the one-device run.
    assert two["global_batch_size"] == 16 == one["global_batch_size"]
    assert two["steps_per_epoch"] == math.ceil(two["training_images"] / 16)
    for column in ("loss", "val_loss", "val_accuracy_recomputed_bn"):
        assert np.isfinite(two["history"][column]).all(), column
    assert two["weights_finite"]
    losses = two["history"]["loss"]
    assert losses[-1] < 0.8 * losses[0]  # it learns
    assert losses[-1] == pytest.approx(one["history"]["loss"][-1], rel=0.15)  # as one device


def test_under_the_strategy_the_notebooks_model_is_the_kept_one(replica_runs):
    """Precise BatchNorm ran before each validation, the probe after it; finish(model) put
    the kept weights into the model, which evaluates to the reported validation accuracy."""
    results, _ = replica_runs
    for name, result in results.items():
        assert 0 <= min(result["history"]["val_accuracy_recomputed_bn"]) <= 1, name
        assert result["evaluated_accuracy"] == pytest.approx(result["validation"]["accuracy"]), \
            name


def test_a_float16_run_stopped_and_resumed_on_two_replicas_ends_as_one_never_stopped(
        replica_runs):
    results, run = replica_runs
    straight, resumed = results["two_float16"], results["two_float16_resumed"]
    assert straight["loss_scale"] != 2.0 ** 15  # it grew: part of what a resume restores
    assert resumed["loss_scale"] == straight["loss_scale"]
    assert resumed["history"]["loss"] == pytest.approx(straight["history"]["loss"], rel=1e-6)
    weights = [keras.saving.load_model(run.model(name), compile=False).get_weights()
               for name in ("two_float16", "two_float16_resumed")]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
