"""The ensemble's bookkeeping (helpers.ensemble); the ensemble of the smoke study's seeds, its
predictions and its staleness check are in test_smoke_study.py."""

import json

import pytest

from helpers import ensemble, inference
from helpers.runfolder import RunFolder


def _sidecar(run: RunFolder, name: str, image_size: int = 64) -> None:
    run.model(name).parent.mkdir(parents=True, exist_ok=True)
    run.model(name).write_bytes(b"a model")  # the sidecar records the model file's sha256
    inference.write_sidecar(run.model(name), label="Baseline CNN", image_size=image_size,
                            resize_method="bilinear", crop_fraction=0.7)


def test_members_must_prepare_their_images_alike(tmp_path):
    run = RunFolder(tmp_path)
    _sidecar(run, "cnn_seed42")
    _sidecar(run, "cnn_seed43")
    assert ensemble.member_settings(run, ["cnn_seed42", "cnn_seed43"]) == {
        "image_size": 64, "resize_method": "bilinear", "crop_fraction": 0.7}
    _sidecar(run, "cnn_seed44", image_size=96)
    with pytest.raises(ValueError, match="differently"):
        ensemble.member_settings(run, ["cnn_seed42", "cnn_seed44"])


def test_an_ensemble_needs_two_members(tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        ensemble.load_members(RunFolder(tmp_path), ["cnn_seed42"])


def test_setting_an_ensemble_aside_moves_every_file_of_it_and_nothing_else(tmp_path):
    run = RunFolder(tmp_path)
    _sidecar(run, "cnn_ensemble")
    _sidecar(run, "cnn")
    written = [run.model("cnn_ensemble"), run.run_record("cnn_ensemble"),
               run.validation_metrics("cnn_ensemble"), run.test_metrics("cnn_ensemble"),
               run.predictions("cnn_ensemble", "validation"),
               run.predictions("cnn_ensemble", "test", tta=True)]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({}))
    written.append(inference.sidecar_path(run.model("cnn_ensemble")))
    assert ensemble.set_aside(run, "cnn_ensemble") is True
    assert not any(path.exists() for path in written)
    (moved_to,) = (run.root / "superseded").iterdir()
    assert all((moved_to / path.relative_to(run.root)).exists() for path in written)
    assert inference.sidecar_path(run.model("cnn")).exists()
    assert ensemble.set_aside(run, "cnn_ensemble") is False


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_notebook_3s_ensemble_averages_its_members_in_float32_under_any_precision(policy):
    import keras
    import numpy as np

    from helpers.tools import notebooks

    keras.mixed_precision.set_global_policy(policy)  # conftest restores float32
    members = [notebooks.baseline_cnn(16, widths=(4, 8), seed=seed) for seed in (1, 2)]
    for member, name in zip(members, ("cnn_seed1", "cnn_seed2"), strict=True):
        member.name = name
    build = notebooks.definitions("03_train_cnn", ("build_ensemble",), CNN_IMAGE_SIZE=16)
    model = build["build_ensemble"](members)
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    outputs = model(images, training=False)
    assert outputs.dtype == "float32"
    expected = np.mean([np.asarray(member(images, training=False), dtype="float32")
                        for member in members], axis=0)
    np.testing.assert_allclose(np.asarray(outputs), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(outputs).sum(axis=1), 1, atol=1e-2)
