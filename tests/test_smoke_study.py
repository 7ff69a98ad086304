"""The whole study run with the smoke profile: what its run folder must hold.

Trained results are checked with tolerances (they move with TensorFlow, Keras and NumPy
versions, and Colab runs other versions than CI); exact things (counts, labels, which
weights may change in which phase) exactly. nbval checks the notebooks' exact outputs.
"""

import hashlib
import json

import keras
import numpy as np
import pandas as pd
import pytest

from helpers import cluster, ensemble, fingerprints, images, inference, models
from helpers.labels import CLASS_NAMES
from helpers.runfolder import RunFolder
from helpers.tools import study
from tests import reads
from tests.conftest import TEST_IMAGES_READ

SMOKE = study.load_profile("smoke")


def test_every_model_is_labelled_and_scored_on_the_whole_validation_split(smoke_run):
    split_frame, _ = smoke_run.load_split()
    n_validation = int((split_frame["split"] == "validation").sum())
    for name, label in [("cnn", "Baseline CNN"), ("resnet50", "ResNet50, random init")]:
        # Random init never says ImageNet.
        assert inference.load_model(smoke_run.model(name)).label == label
        scores = json.loads(smoke_run.validation_metrics(name).read_text())
        assert scores["n_images"] == n_validation
        record = smoke_run.read_run_record(name)
        assert record["label"] == label and record["deterministic"] is True
        if name == "resnet50":
            assert record["seed"] == SMOKE["SEED"]
    # The CNN: one run per seed, the best on validation kept.
    record = smoke_run.read_run_record("cnn")
    seeds = [SMOKE["SEED"] + offset for offset in range(SMOKE["CNN_SEEDS"])]
    assert list(record["candidates"]) == [f"cnn_seed{seed}" for seed in seeds]
    assert record["kept_from"] == f"cnn_seed{record['seed']}"
    best = max(record["candidates"].values(), key=lambda scores: scores["accuracy"])
    assert record["candidates"][record["kept_from"]]["accuracy"] == best["accuracy"]


def test_cnn_learns_the_synthetic_cells_and_random_init_resnet_stays_near_chance(smoke_run):
    reports = {name: json.loads(smoke_run.test_metrics(name).read_text())
               for name in ("cnn", "resnet50")}
    split_frame, _ = smoke_run.load_split()
    n_test = int((split_frame["split"] == "test").sum())
    assert reports["cnn"]["n_images"] == reports["resnet50"]["n_images"] == n_test
    # Two epochs on 96 images: far above chance (1/8), far from perfect.
    assert reports["cnn"]["accuracy"] == pytest.approx(0.6, abs=0.25)
    assert reports["resnet50"]["accuracy"] == pytest.approx(1 / len(CLASS_NAMES), abs=0.15)
    for report in reports.values():
        low, high = report["accuracy_ci95"]
        assert low <= report["accuracy"] <= high
        assert report["calibration"]["temperature"] > 0
        assert "tta" in report  # the smoke profile asks for TTA
    table = pd.read_csv(smoke_run.comparison_table, index_col="model")
    assert list(table.index) == ["Baseline CNN", "ResNet50, random init"]
    assert table.loc["Baseline CNN", "test accuracy"] == pytest.approx(
        reports["cnn"]["accuracy"])


def test_each_strategy_and_the_batchnorm_demonstration_left_a_history(smoke_run):
    for strategy in SMOKE["CNN_LR_STRATEGIES"]:
        history = smoke_run.read_history(f"cnn_{strategy}")
        assert history["epoch"].tolist() == list(range(SMOKE["CNN_COMPARE_EPOCHS"]))
    demo = smoke_run.read_history("cnn_keras_defaults")
    assert len(demo) == SMOKE["CNN_DEMO_EPOCHS"]
    assert demo["val_accuracy_recomputed_bn"].between(0, 1).all()
    assert smoke_run.read_run_record("cnn_keras_defaults")["parameters"][
        "batchnorm_momentum"] == 0.99


def test_resnet50_history_spans_both_phases(smoke_run):
    boundary = smoke_run.phase_boundary("resnet50")
    history = smoke_run.read_history("resnet50")
    assert boundary == SMOKE["RESNET_FROZEN_EPOCHS"]
    assert history["epoch"].tolist() == list(
        range(SMOKE["RESNET_FROZEN_EPOCHS"] + SMOKE["RESNET_FINE_TUNE_EPOCHS"]))
    # Phase 2 runs at RESNET_FINE_TUNE_LEARNING_RATE, 20x below phase 1's.
    assert history["learning_rate"].iloc[boundary:].max() < (
        history["learning_rate"].iloc[:boundary].max() / 10)


def _weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    return {variable.path: variable.numpy() for variable in model.weights}


def test_fine_tuning_changed_only_the_top_blocks_convolutions(smoke_run):
    """Phase 2 must unfreeze the top blocks (their kernels move) and nothing else: lower
    blocks keep phase 1's weights and every BatchNorm statistic stays ImageNet's."""
    frozen = _weights_by_path(keras.saving.load_model(smoke_run.model("resnet50", "frozen")))
    tuned = _weights_by_path(keras.saving.load_model(smoke_run.model("resnet50")))
    assert frozen.keys() == tuned.keys()
    top = tuple(f"{block}_" for block in models.RESNET50_BLOCKS[-3:])  # the default 3 blocks
    changed = {path for path in frozen if not np.array_equal(frozen[path], tuned[path])}
    base = {path for path in frozen if path.startswith("conv")}  # the base's layers
    top_convolutions = {path for path in base if path.startswith(top) and "_conv/" in path}
    assert top_convolutions and top_convolutions <= changed, "the top blocks were not tuned"
    batchnorm = {path for path in base if "_bn/" in path}  # statistics, scale and offset
    assert batchnorm and not batchnorm & changed, "BatchNorm changed in phase 2"
    lower = base - {path for path in base if path.startswith(top)}
    assert lower and not lower & changed, "blocks below the top ones changed"


@pytest.mark.parametrize("phase", ["frozen", None], ids=["phase-1", "final"])
def test_saved_resnet50_applies_preprocess_input_between_its_input_and_the_base(smoke_run,
                                                                               phase):
    model = inference.load_model(smoke_run.model("resnet50")).model if phase is None else (
        keras.saving.load_model(smoke_run.model("resnet50", phase)))
    size = model.input_shape[1]
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    base = model.get_layer("resnet50")
    features = base(keras.applications.resnet50.preprocess_input(images.copy()),
                    training=False)
    expected = model.get_layer("probabilities")(model.get_layer("pool")(features))
    np.testing.assert_allclose(model(images, training=False), expected, rtol=1e-4, atol=1e-6)


MISTAKE_RUNS = ("earlier_training", "no_preprocessing", "double_scaling", "batchnorm_training",
                "learning_rate", "frozen_small_input", "no_preprocessing+batchnorm_training",
                "batchnorm_training+learning_rate", "all")


def test_the_mistakes_are_trained_the_earlier_studys_way_each_beside_its_reference(smoke_run):
    assert SMOKE["RESNET_MISTAKES"] == ["every"]
    smoke = {**study.load_profile("colab"), **SMOKE}  # the notebooks' defaults, overridden
    start = "resnet50_mistake_earlier_training"
    for mistake in MISTAKE_RUNS:  # every one, Adam at a constant rate, the last epoch kept
        name = f"resnet50_mistake_{mistake}"
        parameters = smoke_run.read_run_record(name)["parameters"]
        assert parameters["optimizer"] == "Adam, constant rate"
        assert parameters["keep_best"] is False
        history = smoke_run.read_history(name)
        boundary = smoke_run.phase_boundary(name)
        for phase in (history.iloc[:boundary], history.iloc[boundary:]) if boundary else (
                history,):
            assert phase["learning_rate"].nunique() == 1, f"{name}: the rate changed"
    # The reference trains a phase 1 of its own; the variants with the recipe's input go on
    # from it, at its epoch count (its data order), differing in their mistake alone.
    boundary = smoke_run.phase_boundary(start)
    assert boundary == SMOKE["RESNET_FROZEN_EPOCHS"]
    for mistake in ("batchnorm_training", "learning_rate", "batchnorm_training+learning_rate"):
        name = f"resnet50_mistake_{mistake}"
        assert smoke_run.read_run_record(name)["parameters"]["start_sha256"] == hashlib.sha256(
            smoke_run.model(start, "frozen").read_bytes()).hexdigest()
        assert smoke_run.phase_boundary(name) is None
        history = smoke_run.read_history(name)
        assert history["epoch"].iloc[0] == boundary
        assert len(history) == SMOKE["RESNET_MISTAKES_EPOCHS"]
    reference_rate = smoke_run.read_history(start)["learning_rate"].iloc[boundary]
    assert reference_rate == pytest.approx(smoke["RESNET_FINE_TUNE_LEARNING_RATE"], rel=1e-3)
    high_rate = smoke_run.read_history("resnet50_mistake_learning_rate")["learning_rate"]
    assert high_rate.iloc[0] == pytest.approx(smoke["RESNET_MISTAKES_LEARNING_RATE"], rel=1e-3)

    def layers_of(mistake: str) -> list[str]:
        model = inference.load_model(smoke_run.model(f"resnet50_mistake_{mistake}")).model
        return [layer.name for layer in model.layers]
    assert "rescale" not in layers_of("earlier_training")
    scaled_twice = layers_of("double_scaling")
    assert scaled_twice.index("rescale") < scaled_twice.index("resnet_preprocess")
    # The linear probe: one phase, the base never trained, at its own input size.
    probe = inference.load_model(smoke_run.model("resnet50_mistake_frozen_small_input"))
    assert probe.image_size == SMOKE["RESNET_MISTAKES_IMAGE_SIZE"]
    assert smoke_run.phase_boundary("resnet50_mistake_frozen_small_input") is None
    assert len(smoke_run.read_history("resnet50_mistake_frozen_small_input")) == (
        SMOKE["RESNET_FROZEN_EPOCHS"] + SMOKE["RESNET_MISTAKES_EPOCHS"])
    assert not probe.model.get_layer("resnet50").trainable_weights
    # all: no preprocess_input (0-1 RGB into the base), a phase 1 of its own, and BatchNorm
    # moving in phase 2.
    frozen = keras.saving.load_model(smoke_run.model("resnet50_mistake_all", "frozen"))
    tuned = inference.load_model(smoke_run.model("resnet50_mistake_all")).model
    names = [layer.name for layer in tuned.layers]
    assert "rescale" in names and "resnet_preprocess" not in names
    assert smoke_run.phase_boundary("resnet50_mistake_all") == SMOKE["RESNET_FROZEN_EPOCHS"]
    before, after = _weights_by_path(frozen), _weights_by_path(tuned)
    top = tuple(f"{block}_" for block in models.RESNET50_BLOCKS[-3:])
    moved = {path for path in before if path.startswith(top) and "_bn/moving_mean" in path
             and not np.array_equal(before[path], after[path])}
    assert moved, "BatchNorm statistics did not move in the all-mistakes run"
    assert inference.load_model(smoke_run.model("resnet50_mistake_all")).label == (
        "ResNet50, random init, mistake: all")


def test_the_comparison_ends_with_a_conclusion_from_the_run(smoke_run):
    text = smoke_run.conclusion.read_text()
    report = json.loads(smoke_run.test_metrics("cnn").read_text())
    assert "Baseline CNN" in text and "ResNet50, random init" in text
    assert f"accuracy {report['accuracy']:.4f}" in text
    assert "not transfer learning" in text


def test_the_cnn_seeds_are_saved_as_one_model_that_averages_their_probabilities(smoke_run):
    record = smoke_run.read_run_record("cnn")
    seeds = list(record["candidates"])
    ensemble_model = inference.load_model(smoke_run.model("cnn_ensemble"))
    assert ensemble_model.label == f"Baseline CNN, ensemble of {len(seeds)} seeds"
    kept = inference.load_model(smoke_run.model("cnn"))
    assert ((ensemble_model.image_size, ensemble_model.resize_method,
             ensemble_model.crop_fraction) == (kept.image_size, kept.resize_method,
                                               kept.crop_fraction))
    images = smoke_run.load_split()[0].sort_values("path")["path"].head(24)
    paths = [smoke_run.synthetic_data / path for path in images]
    members = [inference.predict_probabilities(inference.load_model(smoke_run.model(seed)),
                                               paths) for seed in seeds]
    np.testing.assert_allclose(inference.predict_probabilities(ensemble_model, paths),
                               np.mean(members, axis=0), atol=1e-5)
    assert ensemble.members(smoke_run, "cnn_ensemble") == seeds
    # Notebook 5 scored it on the same test images as the others.
    test = pd.read_csv(smoke_run.predictions("cnn_ensemble", "test"))
    assert test["path"].tolist() == pd.read_csv(smoke_run.predictions("cnn", "test"))[
        "path"].tolist()
    assert json.loads(smoke_run.test_metrics("cnn_ensemble").read_text())["label"] == (
        ensemble_model.label)


def test_the_ensemble_is_scored_from_the_command_line_like_any_model(smoke_run, tmp_path):
    from helpers import evaluate

    out = tmp_path / "ensemble.json"
    assert evaluate.main([str(smoke_run.model("cnn_ensemble")), str(smoke_run.synthetic_data),
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["label"].startswith("Baseline CNN, ensemble of") and 0 <= report[
        "accuracy"] <= 1


def test_an_ensemble_whose_seed_was_trained_again_is_refused(smoke_run, tmp_path):
    import shutil

    from helpers.errors import DataError
    from helpers.runfolder import RunFolder

    copy = RunFolder(tmp_path / "run")
    for part in ("models", "config", "metrics"):
        shutil.copytree(smoke_run.root / part, copy.root / part)
    assert ensemble.members(copy, "cnn_ensemble")
    seeds = list(copy.read_run_record("cnn")["candidates"])
    shutil.copyfile(copy.model(seeds[0]), copy.model(seeds[1]))  # as if trained again
    with pytest.raises(DataError, match=f"{seeds[1]}.*notebook 03"):
        ensemble.members(copy, "cnn_ensemble")
    copy.validation_metrics("cnn_ensemble").unlink()  # a save that did not finish
    with pytest.raises(DataError, match="No finished ensemble"):
        ensemble.members(copy, "cnn_ensemble")


def test_a_finished_ensemble_is_kept_and_any_change_saves_it_again(smoke_run, tmp_path):
    import shutil

    from helpers.errors import DataError
    from helpers.runfolder import RunFolder
    from helpers.tools import notebooks

    copy = RunFolder(tmp_path / "run")
    for part in ("models", "config", "metrics", "predictions", "data"):
        shutil.copytree(smoke_run.root / part, copy.root / part)
    seeds = ensemble.members(copy, "cnn_ensemble")
    label = inference.load_model(copy.model("cnn_ensemble")).label
    image_size = inference.load_model(copy.model(seeds[0])).image_size
    build = notebooks.definitions("03_train_cnn", ("build_ensemble",),
                                  CNN_IMAGE_SIZE=image_size)["build_ensemble"]
    state = {"label": label, "build": build}

    def scores_again() -> bool:
        """Notebook 3's ensemble cell; whether it saved and scored the ensemble again (its
        validation metrics are written last, atomically: a new file)."""
        metrics = copy.validation_metrics("cnn_ensemble")
        before = (metrics.stat().st_ino, metrics.stat().st_mtime_ns)
        ensemble.save(copy, "cnn_ensemble", seeds,
                      state["build"](ensemble.load_members(copy, seeds)), state["label"])
        return (metrics.stat().st_ino, metrics.stat().st_mtime_ns) != before

    def retrain_a_member() -> None:
        """The same recipe and seed trained again: other weights, the same configuration."""
        fingerprint = fingerprints.recipe_fingerprint(build(ensemble.load_members(copy, seeds)))
        loaded = inference.load_model(copy.model(seeds[1]))
        member = loaded.model
        member.set_weights([weight + 0.01 for weight in member.get_weights()])
        member.save(copy.model(seeds[1]))
        # As a finished run writes it: the sidecar after the model (it records its sha256).
        inference.write_sidecar(copy.model(seeds[1]), label=loaded.label,
                                image_size=loaded.image_size,
                                resize_method=loaded.resize_method,
                                crop_fraction=loaded.crop_fraction)
        assert fingerprints.recipe_fingerprint(
            build(ensemble.load_members(copy, seeds))) == fingerprint

    def members_resize_otherwise() -> None:
        """Every member's sidecar names another resize (the model files unchanged): the
        ensemble's input must follow them."""
        for seed in seeds:
            loaded = inference.load_model(copy.model(seed))
            other = next(method for method in images.RESIZE_METHODS
                         if method != loaded.resize_method)
            inference.write_sidecar(copy.model(seed), label=loaded.label,
                                    image_size=loaded.image_size, resize_method=other,
                                    crop_fraction=loaded.crop_fraction)

    def as_an_earlier_version_recorded_it() -> None:
        record = json.loads(copy.run_record("cnn_ensemble").read_text())
        del record["configuration_sha256"], record["model_sha256"]
        copy.run_record("cnn_ensemble").write_text(json.dumps(record))

    # Notebook 3 run again with every seed kept: its ensemble is the one in the folder.
    model_file = copy.model("cnn_ensemble").stat().st_mtime_ns
    assert not scores_again()
    assert copy.model("cnn_ensemble").stat().st_mtime_ns == model_file

    changes = {
        "label": lambda: state.update(label=label + ", relabelled"),
        "member trained again": retrain_a_member,
        "members' image settings": members_resize_otherwise,
        "recipe": lambda: state.update(build=lambda members: keras.Model(
            members[0].inputs, members[0].outputs, name="cnn_ensemble")),
        "record of an earlier version": as_an_earlier_version_recorded_it,
        "validation predictions": copy.predictions("cnn_ensemble", "validation").unlink,
        "its own file": lambda: copy.model("cnn_ensemble").write_bytes(b"damaged"),
    }
    for change, make in changes.items():
        make()
        assert scores_again(), f"a changed {change} kept the ensemble saved before"
        if change == "record of an earlier version":  # its record is complete again
            assert not scores_again(), f"saved again with nothing changed after: {change}"
    assert not scores_again()
    assert inference.load_model(copy.model("cnn_ensemble")).label == state["label"]
    assert ensemble.members(copy, "cnn_ensemble") == seeds

    # Notebook 5 refuses a model file that is not the one saved.
    shutil.copyfile(copy.model(seeds[0]), copy.model("cnn_ensemble"))
    with pytest.raises(DataError, match="not the ensemble notebook 03 saved"):
        ensemble.members(copy, "cnn_ensemble")


def test_the_comparison_checks_every_model_at_the_source_and_at_half_resolution(smoke_run):
    table = pd.read_csv(smoke_run.resolution_table)
    labels = {inference.load_model(smoke_run.model(name)).label
              for name in ("cnn", "resnet50", "cnn_ensemble")}
    assert set(table["model"]) == labels
    n_test = int((smoke_run.load_split()[0]["split"] == "test").sum())
    assert (table["images"] == "all images").all() and (table["n_images"] == n_test).all()
    for column in ("accuracy_original", "accuracy_half", "agreement"):
        assert table[column].between(0, 1).all()
    width = lambda size: int(size.split("x")[0])  # noqa: E731
    assert all(width(half) == width(original) // 2
               for original, half in zip(table["original"], table["half"], strict=True))


def test_the_resolution_command_reports_the_images_not_trained_on(smoke_run, tmp_path):
    from helpers import resolution

    out = tmp_path / "resolution.json"
    assert resolution.main([str(smoke_run.model("cnn")), str(smoke_run.synthetic_data),
                            "--run", str(smoke_run.root), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    split_frame = smoke_run.load_split()[0]
    assert [row["images"] for row in rows] == ["all images", "not trained on"]
    # The folder judged as the split judged it: exactly the split's images are scored (a
    # duplicate once, content under two classes not at all), less the training split's.
    assert rows[0]["n_images"] == len(split_frame)
    trained = int((split_frame["split"] == "train").sum())
    assert rows[1]["n_images"] == rows[0]["n_images"] - trained > 0
    assert rows[0]["changed"] == round((1 - rows[0]["agreement"]) * rows[0]["n_images"])


def test_notebooks_2_to_4_never_read_a_test_image(request, smoke_run):
    """The test split is first touched in notebook 5: between notebook 1's split and
    notebook 5's first cell no test image was opened (tests/conftest.py watches nbval's run
    of the study)."""
    state = request.config.stash.get(TEST_IMAGES_READ, None)
    if state is None:
        pytest.skip("watched only around nbval's run of the five notebooks in this session")
    if "unknown" in state:
        pytest.skip(state["unknown"])
    assert len(state["stamped"]) == len(smoke_run.load_split()[0].query("split == 'test'"))
    assert [path.name for path in state["read"]] == []


def test_a_read_is_seen_and_a_file_left_alone_is_not(tmp_path):
    read, unread = tmp_path / "read.jpg", tmp_path / "unread.jpg"
    read.write_bytes(b"cell"), unread.write_bytes(b"cell")
    if not reads.reads_are_recorded(read):
        pytest.skip("this filesystem does not record reads (noatime)")
    stamped = reads.stamp([read, unread])
    read.read_bytes()
    unread.stat()  # looking at a file is not reading it
    assert reads.read_since(stamped) == [read]


def test_the_run_folders_records_name_it_by_relative_paths_only(smoke_run):
    """A moved run folder keeps working: no record names the folder's own place, except the
    data root that split.json and audit.json keep beside its relative form."""
    root = str(smoke_run.root.resolve())
    checked = 0
    for part in ("data", "config", "metrics", "models", "history", "predictions"):
        for path in sorted((smoke_run.root / part).rglob("*")):
            if path.suffix not in (".json", ".csv"):
                continue
            text = path.read_text(encoding="utf-8")
            loaded = json.loads(text) if path.suffix == ".json" else None
            if isinstance(loaded, dict):
                text = json.dumps({key: value for key, value in loaded.items()
                                   if key != "data_root"})
            assert root not in text, path
            checked += 1
    assert checked > 20


def test_on_a_local_cluster_the_study_trains_the_same_runs(smoke_run, tmp_path):
    """Notebooks 3 and 4 with CLUSTER = "local:2" (their runs trained at once on two worker
    processes) end with the runs, recipes and labels of the sequential study nbval ran. Each
    worker has 1 CPU thread where the kernel had every core, so the figures differ by
    rounding (tests/test_cluster.py compares equal threads exactly): within a tolerance.
    To keep CI short, a part of the smoke study: the strategy the sequential study kept and no
    demonstration, then the 2 seeds at once; three of the nine mistakes, the first alone, then
    one that starts from its phase 1 and one with a phase 1 of its own, at once."""
    pytest.importorskip("distributed")
    clustered = RunFolder(tmp_path / "run")
    kept = smoke_run.read_run_record("cnn")["parameters"]["lr_strategy"]
    mistakes = ("earlier_training", "learning_rate", "no_preprocessing")
    executed = study.run_study({**SMOKE, "CLUSTER": "local:2", "CNN_LR_STRATEGIES": [kept],
                                "CNN_BATCHNORM_DEMO": False,
                                "RESNET_MISTAKES": list(mistakes[1:])}, str(clustered.root),
                               notebooks=("01_data", "03_train_cnn", "04_train_resnet50"),
                               log=lambda message: None)
    assert executed == ["01_data", "03_train_cnn", "04_train_resnet50"]
    assert clustered.split_csv.read_bytes() == smoke_run.split_csv.read_bytes()

    def trained_here(name: str) -> bool:  # a run, or a model file, of a run trained here
        run = name.partition(".")[0].removesuffix("_frozen")
        if run == "cnn_keras_defaults" or (run.startswith("cnn_") and run.removeprefix(
                "cnn_") in SMOKE["CNN_LR_STRATEGIES"] and run != f"cnn_{kept}"):
            return False
        return run.removeprefix("resnet50_mistake_") in mistakes or not run.startswith(
            "resnet50_mistake_")

    names = [name for name in smoke_run.history_names() if trained_here(name)]
    assert SMOKE["CNN_SEEDS"] == 2 and clustered.history_names() == names == [
        "cnn", f"cnn_{kept}", "cnn_seed42", "cnn_seed43", "resnet50",
        *(f"resnet50_mistake_{mistake}" for mistake in sorted(mistakes))]
    assert ({path.name for path in (clustered.root / "models").iterdir()}
            == {path.name for path in (smoke_run.root / "models").iterdir()
                if trained_here(path.name)})
    threads = set()
    for name in names:
        mine, theirs = clustered.read_run_record(name), smoke_run.read_run_record(name)
        for key in ("label", "seed", "data", "split_sha256", "precision"):
            assert mine[key] == theirs[key], (name, key)
        # A mistake that starts from another run's phase 1 records that model's sha256, whose
        # weights differ by rounding; every other part of the recipe is the same.
        start = {key: mine["parameters"].pop(key, None) for key in ("start_sha256",)}
        theirs["parameters"].pop("start_sha256", None)
        assert mine["parameters"] == theirs["parameters"], name
        if start["start_sha256"] is None:
            assert mine["fingerprints"] == theirs["fingerprints"], name
        threads.add(mine["cpu_threads"])
        history, sequential = clustered.read_history(name), smoke_run.read_history(name)
        assert history["epoch"].tolist() == sequential["epoch"].tolist(), name
        # 2 epochs on 96 images amplify rounding: measured within 6% of the sequential loss.
        np.testing.assert_allclose(history["loss"], sequential["loss"], rtol=0.15,
                                   err_msg=name)
    # Trained on the workers (the kernel's ResNet50 recipe aside), not in the kernel.
    assert threads == {max(1, cluster.cores() // 2), cluster.cores()}
