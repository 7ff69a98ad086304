"""The evaluate and predict commands on synthetic folders with the download's quirks."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from helpers import evaluate, inference, metrics, pipeline, predict, scoring
from helpers.labels import CLASS_NAMES
from helpers.tools import evaluate as evaluate_command
from helpers.tools import notebooks


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory):
    """An untrained small CNN saved as a run would save it (16 px, central 80% crop)."""
    run_dir = tmp_path_factory.mktemp("run")
    model = notebooks.baseline_cnn(16, widths=(4, 8), augment=False, seed=0)
    (run_dir / "models").mkdir()
    path = run_dir / "models" / "cnn.keras"
    model.save(path)
    inference.write_sidecar(path, label="Baseline CNN", image_size=16,
                            resize_method="bilinear", crop_fraction=0.8)
    return path


@pytest.fixture()
def quirky_folder(synthetic_data):
    """The synthetic dataset plus a file in a folder that names no class."""
    root, planted = synthetic_data
    Image.new("RGB", (20, 20), "red").save(root / planted["unknown_folder"] / "stray.jpg")
    return root, planted


def test_evaluate_reports_quirks_and_scores_the_rest(saved_model, quirky_folder, tmp_path):
    root, planted = quirky_folder
    out = tmp_path / "metrics.json"
    assert evaluate.main([str(saved_model), str(root), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    # The audit's judgement of the folder, as the split makes it: the duplicate scored once,
    # both copies of the content filed under two classes left out.
    assert set(skipped) == {planted["not_image"], planted["corrupt"],
                            "unknown_folder/stray.jpg", planted["duplicate"],
                            planted["cross_class"], planted["cross_class_of"]}
    assert skipped[planted["not_image"]].startswith("not an image")
    assert skipped[planted["corrupt"]].startswith("corrupt image")
    assert "names no class" in skipped["unknown_folder/stray.jpg"]
    assert skipped[planted["duplicate"]] == f"duplicate of {planted['duplicate_of']}"
    assert skipped[planted["cross_class"]] == skipped[planted["cross_class_of"]] == (
        "same content under two classes: label unknown")
    # 12 per class, plus the duplicate, the cross-class copy, the grayscale and the RGBA
    # image, less the duplicate and both copies of the cross-class content.
    assert report["n_images"] == 12 * len(CLASS_NAMES) + 4 - 3
    assert ("1 duplicate(s) scored once, 2 file(s) of content under two classes left out"
            in evaluate_command.format_report(report))
    assert sum(row["support"] for row in report["per_class"].values()) == report["n_images"]
    assert np.sum(report["confusion_matrix"]) == report["n_images"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "accuracy_ci95",
                "macro_f1_ci95", "ece", "log_loss"):
        assert key in report
    assert report["accuracy_ci95"][0] <= report["accuracy"] <= report["accuracy_ci95"][1]


def test_evaluate_agrees_with_predict_on_the_same_files(saved_model, quirky_folder, tmp_path):
    root, _ = quirky_folder
    report = evaluate_command.evaluate_folder(saved_model, root, n_resamples=50)
    out = tmp_path / "predictions.csv"
    assert predict.main([str(saved_model), str(root), "--out", str(out)]) == 0
    predictions = pd.read_csv(out, keep_default_na=False)
    predictions["truth"] = predictions["path"].map(
        lambda path: path[len(str(root)) + 1:].split("/")[0])
    # predict classifies every image, the stray one in the unknown folder, the duplicate and
    # the cross-class copies too; evaluate scores the audit's choice of them.
    left_out = {str(root / item["path"]) for item in report["skipped"]}
    scored = predictions[(predictions["problem"] == "")
                         & predictions["truth"].isin(CLASS_NAMES)
                         & ~predictions["path"].isin(left_out)]
    truth = scored["truth"]
    assert len(scored) == report["n_images"]
    assert (scored["class_1"] == truth).mean() == pytest.approx(report["accuracy"])


def test_inference_prepares_images_as_training_did(saved_model, synthetic_source):
    root, _ = synthetic_source
    rows = pd.DataFrame({"path": ["basophil/basophil_0001.jpg", "lymphocyte/lymphocyte_gray.jpg",
                                  "monocyte/monocyte_rgba.png"],
                         "label": ["basophil", "lymphocyte", "monocyte"],
                         "sha256": ["a", "b", "c"], "split": "test"})
    training_images, _ = next(iter(pipeline.make_dataset(
        rows, root, "test", image_size=16, batch_size=8, cache=None, crop_fraction=0.8)))
    loaded = inference.load_model(saved_model)
    inference_images = next(iter(inference.image_dataset(
        [root / path for path in sorted(rows["path"])], loaded)))
    np.testing.assert_array_equal(training_images.numpy(), inference_images.numpy())
    assert inference_images.shape == (3, 16, 16, 3)
    # With the training pipeline's options: in order, and no autotuning without a GPU.
    options = inference.image_dataset([root / rows["path"][0]], loaded).options()
    assert options.deterministic is True and options.autotune.enabled is False


def test_predict_keeps_a_row_for_every_file(saved_model, synthetic_source, tmp_path):
    root, planted = synthetic_source
    inputs = [str(root / planted["grayscale"]), str(root / planted["rgba"]),
              str(root / planted["not_image"]), str(root / "platelet")]
    out = tmp_path / "predictions.csv"
    assert predict.main([str(saved_model), *inputs, "--out", str(out)]) == 0
    predictions = pd.read_csv(out).fillna({"problem": ""}).set_index("path")
    assert len(predictions) == 3 + 13  # 12 platelets and the truncated JPEG
    assert predictions.loc[str(root / planted["not_image"]), "problem"].startswith("not an")
    assert predictions.loc[str(root / planted["corrupt"]), "problem"].startswith("corrupt")
    for image in (planted["grayscale"], planted["rgba"]):
        row = predictions.loc[str(root / image)]
        assert row["class_1"] in CLASS_NAMES
        assert 1 >= row["probability_1"] >= row["probability_2"] >= row["probability_3"] >= 0


def test_predict_follows_linked_folders_and_reports_links_to_nothing(saved_model,
                                                                     synthetic_source, tmp_path):
    root, _ = synthetic_source
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "platelets").symlink_to(root / "platelet", target_is_directory=True)
    (inputs / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    out = tmp_path / "predictions.csv"
    assert predict.main([str(saved_model), str(inputs), str(inputs / "gone.jpg"),
                         "--out", str(out)]) == 0
    predictions = pd.read_csv(out).fillna({"problem": ""})
    assert len(predictions) == 13 + 2  # the linked folder's files, and the dangling link twice
    gone = predictions[predictions["path"].str.endswith("gone.jpg")]
    assert len(gone) == 2 and gone["problem"].str.contains("does not exist").all()


def test_tta_averages_the_eight_flips_and_rotations(saved_model, synthetic_source):
    root, _ = synthetic_source
    image = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    views = inference.dihedral_views(tf.constant(image))
    assert len(views) == 8 and np.array_equal(views[0], image)
    assert len({view.numpy().tobytes() for view in views}) == 8
    loaded = inference.load_model(saved_model)
    paths = [root / "eosinophil" / f"eosinophil_{n:04d}.jpg" for n in range(3)]
    batch = next(iter(inference.image_dataset(paths, loaded)))
    expected = np.mean([loaded.model.predict_on_batch(view)
                        for view in inference.dihedral_views(batch)], axis=0)
    np.testing.assert_allclose(inference.predict_probabilities(loaded, paths, tta=True),
                               expected, rtol=1e-5)


def test_evaluate_with_tta_reports_both(synthetic_source, tmp_path):
    # A model that sees where each pixel is, so its 8 views disagree.
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(0, 0.3))(flat)
    model_path = tmp_path / "oriented.keras"
    keras.Model(inputs, outputs).save(model_path)
    inference.write_sidecar(model_path, label="Oriented", image_size=16,
                            resize_method="bilinear", crop_fraction=1.0)
    root, _ = synthetic_source
    report = evaluate_command.evaluate_folder(model_path, root, tta=True, n_resamples=20)
    assert report["tta"]["n_images"] == report["n_images"]
    # The TTA figures come from the mean over the 8 views, not from the plain predictions.
    images, _, _ = scoring.labelled_images(root)
    loaded = inference.load_model(model_path)
    paths = list(images["path"])
    y_true = [loaded.class_names.index(label) for label in images["label"]]
    averaged = inference.predict_probabilities(loaded, paths, tta=True, progress=False)
    plain = inference.predict_probabilities(loaded, paths, progress=False)
    assert np.abs(averaged - plain).max() > 0.05
    assert report["tta"]["log_loss"] == pytest.approx(metrics.negative_log_likelihood(
        np.array(y_true), averaged), rel=1e-5)
    assert report["log_loss"] == pytest.approx(metrics.negative_log_likelihood(
        np.array(y_true), plain), rel=1e-5)


def test_error_cases_exit_non_zero_with_a_message(saved_model, synthetic_source, tmp_path,
                                                  capsys):
    root, planted = synthetic_source
    no_images = tmp_path / "no_images"
    (no_images / "basophil").mkdir(parents=True)
    (no_images / "basophil" / "notes.jpg").write_text("not an image")
    (no_images / "eosinophil").mkdir()
    not_a_model = tmp_path / "model.keras"
    not_a_model.write_text("hello")
    lonely = tmp_path / "lonely" / "cnn.keras"
    lonely.parent.mkdir()
    lonely.write_bytes(saved_model.read_bytes())
    cases = [
        ([str(saved_model), str(no_images)], "basophil/notes.jpg: not an image"),
        ([str(saved_model), str(tmp_path / "missing")], "not found"),
        ([str(tmp_path / "absent.keras"), str(root)], "Model file not found"),
        ([str(not_a_model), str(root)], "not a Keras model file"),
        ([str(lonely), str(root)], "cnn.json not found"),
    ]
    for arguments, message in cases:
        assert evaluate.main(arguments) == 1, arguments
        assert message in capsys.readouterr().err
    assert predict.main([str(saved_model), str(tmp_path / "nothing.jpg")]) == 1
    assert "No such file" in capsys.readouterr().err
    assert predict.main([str(saved_model), str(no_images)]) == 1  # nothing classifiable
    assert "no input could be classified" in capsys.readouterr().err


def test_outputs_never_replace_inputs_and_are_checked_before_any_work(saved_model,
                                                                     synthetic_source,
                                                                     tmp_path, capsys):
    root, planted = synthetic_source
    sidecar = inference.sidecar_path(saved_model)
    kept = {path: path.read_bytes() for path in (saved_model, sidecar)}
    image = root / planted["grayscale"]
    cases = [
        (evaluate.main, [str(saved_model), str(root), "--out", str(sidecar)], "inputs"),
        (evaluate.main, [str(saved_model), str(root), "--out", str(saved_model)], "inputs"),
        (evaluate.main, [str(saved_model), str(root), "--out", str(tmp_path)], "is a folder"),
        (predict.main, [str(saved_model), str(image), "--out", str(image)], "inputs"),
        (predict.main, [str(saved_model), str(image), "--out", str(tmp_path / "x.keras")],
         "would replace a model"),
    ]
    for command, arguments, message in cases:
        assert command(arguments) == 1, arguments
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (arguments, error)
    assert {path: path.read_bytes() for path in kept} == kept


@pytest.mark.parametrize("damage, message", [
    ("{not json", "not readable JSON"),
    ('{"label": "x"}', "class_names missing"),
    ('{"label": "x", "class_names": [], "image_size": 0, "resize_method": "bilinear", '
     '"crop_fraction": 1.0}', "image_size must be positive"),
])
def test_a_damaged_sidecar_is_a_clear_error(saved_model, synthetic_source, tmp_path, capsys,
                                            damage, message):
    root, _ = synthetic_source
    model = tmp_path / "cnn.keras"
    model.write_bytes(saved_model.read_bytes())
    inference.sidecar_path(model).write_text(damage)
    assert evaluate.main([str(model), str(root)]) == 1
    error = capsys.readouterr().err
    assert message in error and "cnn.json" in error


def test_the_predictions_frame_gives_each_images_top_probability_as_its_confidence():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    frame = scoring.predictions_frame(["x.jpg", "y.jpg"], ["b", "a"], probabilities,
                                      ("a", "b", "c"))
    assert frame["predicted"].tolist() == ["b", "a"]
    assert frame["confidence"].tolist() == [0.7, 0.6]
    assert frame["p_c"].tolist() == [0.2, 0.1]


def test_the_reports_intervals_are_those_of_the_predicted_classes():
    """Every prediction right: each resample's accuracy is 1, so its interval is too."""
    probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]] * 2)
    classes = ("a", "b", "c")
    frame = scoring.predictions_frame([f"{i}.jpg" for i in range(6)], ["b", "a", "c"] * 2,
                                      probabilities, classes)
    report = scoring.report_from_predictions(frame, classes, n_resamples=20)
    assert report["accuracy"] == 1.0 and report["accuracy_ci95"] == [1.0, 1.0]
