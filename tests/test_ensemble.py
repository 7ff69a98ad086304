"""The ensemble's bookkeeping (helpers.ensemble): its members, keep-or-rebuild and staleness
checks on files written here; the smoke study's real ensemble is in test_smoke_study.py."""

import json

import pytest

from helpers import ensemble, inference
from helpers.errors import DataError
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


# The keep-or-rebuild decision and the staleness check, on a tiny model and files written here
# (the smoke study checks them on a real ensemble, but slowly).

SETTINGS = {"image_size": 64, "resize_method": "bilinear", "crop_fraction": 0.7}
LABEL = "Baseline CNN, ensemble of 2 seeds"
MEMBERS = ["cnn_seed42", "cnn_seed43"]


def _tiny_model(units: int = 2):
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)], name="ensemble")


def _finished_ensemble(run: RunFolder, model) -> dict:
    """The files of the ensemble ``cnn_ensemble`` of MEMBERS as ``ensemble.save`` leaves them,
    written here without scoring; returns its recorded validation metrics."""
    from helpers import files, fingerprints

    for seed in MEMBERS:
        _sidecar(run, seed)
    _sidecar(run, "cnn_ensemble")
    inference.write_sidecar(run.model("cnn_ensemble"), label=LABEL, **SETTINGS)
    files.write_json({"name": "cnn_ensemble", "label": LABEL,
                      "members": ensemble.member_fingerprints(run, MEMBERS),
                      "configuration_sha256": fingerprints.recipe_fingerprint(model),
                      "inference_cost": "2 models per image",
                      "model_sha256": files.file_sha256(run.model("cnn_ensemble"))},
                     run.run_record("cnn_ensemble"))
    run.predictions("cnn_ensemble", "validation").parent.mkdir(parents=True, exist_ok=True)
    run.predictions("cnn_ensemble", "validation").write_text("path,label\n")
    result = {"n_images": 10, "accuracy": 0.9, "macro_f1": 0.8, "members": MEMBERS}
    files.write_json(result, run.validation_metrics("cnn_ensemble"))
    return result


def _save_or_rebuilt(run: RunFolder, model, monkeypatch, label: str = LABEL) -> dict | str:
    """What ``ensemble.save`` returns, "rebuilt" where it would build the ensemble again."""
    monkeypatch.setattr(ensemble.publish, "publish", lambda *arguments: "rebuilt")
    return ensemble.save(run, "cnn_ensemble", MEMBERS, model, label)


def test_the_same_ensemble_finished_before_is_kept_without_scoring(tmp_path, monkeypatch):
    run, model = RunFolder(tmp_path), _tiny_model()
    finished = _finished_ensemble(run, model)
    assert _save_or_rebuilt(run, model, monkeypatch) == finished
    assert ensemble.members(run, "cnn_ensemble") == MEMBERS


@pytest.mark.parametrize("change", ["member trained again", "model file replaced", "label",
                                    "sidecar's label", "image settings", "architecture",
                                    "predictions missing", "metrics missing", "record damaged"])
def test_an_ensemble_is_built_again_when_anything_it_was_built_from_changed(
        tmp_path, monkeypatch, change):
    run, model = RunFolder(tmp_path), _tiny_model()
    _finished_ensemble(run, model)
    label = LABEL
    if change == "member trained again":
        run.model("cnn_seed43").write_bytes(b"another model")
    elif change == "model file replaced":
        run.model("cnn_ensemble").write_bytes(b"another ensemble")
        inference.write_sidecar(run.model("cnn_ensemble"), label=LABEL, **SETTINGS)
    elif change == "label":
        label = "Baseline CNN, ensemble"
    elif change == "sidecar's label":
        inference.write_sidecar(run.model("cnn_ensemble"), label="Baseline CNN", **SETTINGS)
    elif change == "image settings":
        inference.write_sidecar(run.model("cnn_ensemble"), label=LABEL,
                                **{**SETTINGS, "crop_fraction": 1.0})
    elif change == "architecture":
        model = _tiny_model(units=3)
    elif change == "predictions missing":
        run.predictions("cnn_ensemble", "validation").unlink()
    elif change == "metrics missing":
        run.validation_metrics("cnn_ensemble").unlink()
    else:
        run.run_record("cnn_ensemble").write_text("{not json")
    assert _save_or_rebuilt(run, model, monkeypatch, label) == "rebuilt"


@pytest.mark.parametrize("change, refusal", [
    ("member trained again", "cnn_seed43 .trained again"),
    ("member gone", "cnn_seed43 .trained again"),
    ("model file replaced", "not the ensemble notebook 03 saved"),
    ("metrics missing", "No finished ensemble"),
])
def test_an_ensemble_whose_members_or_file_changed_is_refused_by_its_readers(
        tmp_path, change, refusal):
    run = RunFolder(tmp_path)
    _finished_ensemble(run, _tiny_model())
    if change == "member trained again":
        run.model("cnn_seed43").write_bytes(b"another model")
    elif change == "member gone":
        run.model("cnn_seed43").unlink()
    elif change == "model file replaced":
        run.model("cnn_ensemble").write_bytes(b"another ensemble")
    else:
        run.validation_metrics("cnn_ensemble").unlink()
    with pytest.raises(DataError, match=refusal):
        ensemble.members(run, "cnn_ensemble")
