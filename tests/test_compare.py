"""The comparison of notebook 5: test-time evaluation, calibration fitted on validation,
learning dynamics and the comparison table."""

import json
import shutil
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sklearn_metrics

from helpers import compare, data, files, histories, inference, metrics, publish, scoring, verdict
from helpers.errors import DataError
from helpers.runfolder import RunFolder
from helpers.tools import notebooks


@pytest.fixture(scope="module")
def scored_run(synthetic_source, tmp_path_factory):
    """A run folder with the synthetic split, an untrained small CNN as ``cnn``, and its
    test report."""
    root, _ = synthetic_source
    run = RunFolder(tmp_path_factory.mktemp("run"))
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(run.root)]) == 0
    keras.utils.set_random_seed(0)
    run.model("cnn").parent.mkdir()
    notebooks.baseline_cnn(16, widths=(4, 8), augment=False, seed=0).save(run.model("cnn"))
    inference.write_sidecar(run.model("cnn"), label="Baseline CNN", image_size=16,
                            resize_method="bilinear", crop_fraction=1.0)
    loaded = inference.load_model(run.model("cnn"))
    report = compare.evaluate_on_test(run, "cnn", loaded, tta=True, n_resamples=50)
    return run, loaded, report


def test_test_report_scores_the_test_split_and_is_saved(scored_run):
    run, loaded, report = scored_run
    split_frame, data_root = run.load_split()
    assert report["n_images"] == int((split_frame["split"] == "test").sum())
    saved = json.loads(run.test_metrics("cnn").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved.keys() == report.keys()
    test = pd.read_csv(run.predictions("cnn", "test"))
    assert test["path"].tolist() == sorted(split_frame.loc[split_frame["split"] == "test",
                                                           "path"])
    assert report["label"] == "Baseline CNN"
    # Each row's true label is its image's, and the accuracy is the rows' own.
    labels = split_frame.set_index("path")["label"]
    assert test["label"].tolist() == labels[test["path"]].tolist()
    assert report["accuracy"] == pytest.approx((test["label"] == test["predicted"]).mean())
    # The TTA predictions are the 8 views' average, not the plain ones again.
    augmented = pd.read_csv(run.predictions("cnn", "test", tta=True))
    expected = inference.predict_probabilities(
        loaded, [str(data_root / path) for path in augmented["path"]], tta=True)
    np.testing.assert_allclose(scoring.probabilities_of(augmented, loaded.class_names),
                               expected, atol=1e-5)
    assert not np.allclose(expected, scoring.probabilities_of(test, loaded.class_names))
    assert report["tta"]["accuracy"] == pytest.approx(
        (augmented["label"] == augmented["predicted"]).mean())


def test_a_report_without_tta_sets_the_earlier_tta_predictions_aside(scored_run, tmp_path,
                                                                       capsys):
    run, loaded, _ = scored_run
    copy = RunFolder(tmp_path / "run")  # the fixture's folder stays as the others read it
    shutil.copytree(run.root, copy.root)
    earlier = copy.predictions("cnn", "test", tta=True).read_bytes()
    report = compare.evaluate_on_test(copy, "cnn", loaded, tta=False, n_resamples=50)
    assert "tta" not in report and not copy.predictions("cnn", "test", tta=True).exists()
    moved = list((copy.root / "superseded").rglob("cnn_test_tta.csv"))
    assert len(moved) == 1 and moved[0].read_bytes() == earlier  # set aside, not deleted
    assert moved[0].parent.name == "predictions"
    assert "Set aside (TTA is off in this run): cnn_test_tta.csv" in capsys.readouterr().out


def test_runs_no_longer_part_of_a_run_are_set_aside_whole_and_nothing_else(tmp_path):
    run = RunFolder(tmp_path / "run")
    for name in ("cnn_seed4", "cnn_seed42", "cnn_seed44"):
        for path in (run.model(name), run.model(name).with_suffix(".json"), run.history(name),
                     run.run_record(name), run.validation_metrics(name),
                     run.predictions(name, "test")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
    moved = run.set_aside_runs(["cnn_seed4", "cnn_missing"], "not a seed of this run")
    assert sorted(path.name for path in moved) == sorted([
        "cnn_seed4.keras", "cnn_seed4.json", "cnn_seed4.csv", "cnn_seed4.json",
        "cnn_seed4_validation.json", "cnn_seed4_test.csv"])
    assert run.history_names() == ["cnn_seed42", "cnn_seed44"]  # the prefix took no other
    assert all(path.read_text() == "cnn_seed4" for path in moved)
    assert run.set_aside_runs([], "nothing") == []


def test_temperature_is_fitted_on_validation_and_applied_to_test(scored_run):
    run, loaded, report = scored_run
    frames = {subset: pd.read_csv(run.predictions("cnn", subset))
              for subset in ("validation", "test")}
    y = {subset: scoring.true_indices(frame, loaded.class_names)
         for subset, frame in frames.items()}
    with pytest.raises(DataError, match="does not know: \\['alien'\\]"):
        scoring.true_indices(frames["test"].assign(label="alien"), loaded.class_names)
    probabilities = {subset: scoring.probabilities_of(frame, loaded.class_names)
                     for subset, frame in frames.items()}
    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(
        metrics.fit_temperature(y["validation"], probabilities["validation"]), rel=1e-4)
    assert calibration["temperature"] != pytest.approx(
        metrics.fit_temperature(y["test"], probabilities["test"]), rel=1e-2)
    scaled = metrics.apply_temperature(probabilities["test"], calibration["temperature"])
    assert calibration["nll_after"] == pytest.approx(
        metrics.negative_log_likelihood(y["test"], scaled))
    assert calibration["ece_before"] == pytest.approx(
        metrics.expected_calibration_error(y["test"], probabilities["test"]))
    assert report["validation_accuracy"] == pytest.approx(
        float((frames["validation"]["label"] == frames["validation"]["predicted"]).mean()))


HISTORY = pd.DataFrame({
    "epoch": [0, 1, 2, 3],
    "loss": [1.0, 0.6, 0.4, 0.3],
    "accuracy": [0.6, 0.8, 0.9, 0.97],
    "val_loss": [0.9, 0.5, 0.6, 0.7],
    "val_accuracy": [0.7, 0.96, 0.94, 0.93],
    "epoch_seconds": [60.0, 60.0, 60.0, 60.0],
    "images_per_second": [100.0, 200.0, 220.0, 210.0],
})


def test_learning_dynamics_from_a_history(tmp_path):
    dynamics = histories.learning_dynamics(HISTORY, threshold=0.95)
    assert dynamics == pytest.approx({
        "epochs": 4, "best_epoch": 2, "best_val_accuracy": 0.96,
        "overfitting_from": 3,  # validation loss rose while training loss fell
        "gap_at_best": 0.8 - 0.96, "epochs_to_threshold": 2, "minutes_to_threshold": 2.0})
    never = histories.learning_dynamics(HISTORY, threshold=0.99)
    assert never["epochs_to_threshold"] is None and never["minutes_to_threshold"] is None
    last_best = HISTORY.assign(val_loss=[0.9, 0.8, 0.7, 0.6])
    assert histories.learning_dynamics(last_best)["overfitting_from"] is None
    # The CPU study's CNN seed: +1.1% in its last epoch, at a rate near zero, is noise.
    noise = HISTORY.assign(val_loss=[0.9, 0.6, 0.0457, 0.0462])
    assert histories.learning_dynamics(noise)["overfitting_from"] is None
    assert histories.learning_dynamics(
        noise.assign(val_loss=[0.9, 0.6, 0.0457, 0.0470]))["overfitting_from"] == 4
    # Validation loss rose with training loss: instability, not overfitting.
    both_rose = HISTORY.assign(loss=[1.0, 0.6, 0.7, 0.8])
    assert histories.learning_dynamics(both_rose)["overfitting_from"] is None
    # A rise that fell back by the last epoch still counts: the highest point after the best.
    spike = HISTORY.assign(val_loss=[0.9, 0.5, 0.7, 0.505])
    assert histories.learning_dynamics(spike)["overfitting_from"] == 3
    # A history file without a row yet (killed before the first epoch ended) reads as none.
    empty = tmp_path / "history.csv"
    empty.write_text("")
    assert histories.read_history(empty) is None


def test_training_cost_and_comparison_table(scored_run, tmp_path):
    _, loaded, report = scored_run
    run = RunFolder(tmp_path)
    run.history("cnn").parent.mkdir()
    HISTORY.to_csv(run.history("cnn"), index=False)
    cost = compare.training_cost(run, "cnn", loaded.model)
    assert cost["training_minutes"] == 4.0 and cost["images_per_second"] == 205.0
    assert cost["parameters"] == loaded.model.count_params()
    table = compare.comparison_table({"Baseline CNN": report}, {"Baseline CNN": cost})
    row = table.loc["Baseline CNN"]
    assert row["test accuracy"] == report["accuracy"]
    low, high = report["accuracy_ci95"]
    assert row["accuracy 95% CI"] == f"{low:.4f}-{high:.4f}"
    assert row["validation - test"] == pytest.approx(report["validation_accuracy"]
                                                     - report["accuracy"])
    assert row["test accuracy with TTA"] == report["tta"]["accuracy"]
    assert row["training minutes"] == 4.0


def test_batchnorm_probe_table_counts_update_steps_and_the_share_absorbed():
    history = HISTORY.assign(val_accuracy_recomputed_bn=[0.8, 0.97, 0.95, 0.96])
    table = histories.batchnorm_probe_table(history, steps_per_epoch=100, momentum=0.99)
    assert table.index.tolist() == [1, 2, 3, 4]
    assert table["update steps"].tolist() == [100, 200, 300, 400]
    assert table["share absorbed"].iloc[0] == pytest.approx(1 - 0.99 ** 100)
    np.testing.assert_allclose(table["gap"], [0.1, 0.01, 0.01, 0.03], atol=1e-12)


def test_the_best_seed_on_validation_is_kept_and_the_spread_covers_every_seed(scored_run):
    run, loaded, report = scored_run
    # Three "seed runs": differently initialised untrained CNNs, each with the files a
    # finished TrainingRun leaves, and validation accuracies that make the second the best.
    names = ["cnn_seed1", "cnn_seed2", "cnn_seed3"]
    for seed, (name, accuracy) in enumerate(zip(names, [0.5, 0.7, 0.6], strict=True), start=1):
        keras.utils.set_random_seed(seed)
        notebooks.baseline_cnn(16, widths=(4, 8), augment=False, seed=seed).save(run.model(name))
        inference.write_sidecar(run.model(name), label="Baseline CNN", image_size=16,
                                resize_method="bilinear", crop_fraction=1.0)
        run.history(name).parent.mkdir(exist_ok=True)
        HISTORY.assign(epoch_seconds=60.0 * seed).to_csv(run.history(name), index=False)
        run.run_record(name).parent.mkdir(exist_ok=True)
        run.run_record(name).write_text(json.dumps({"name": name, "seed": seed,
                                                    "data": {"training_images": 66}}))
        run.validation_metrics(name).parent.mkdir(exist_ok=True)
        run.validation_metrics(name).write_text(json.dumps(
            {"n_images": 10, "accuracy": accuracy, "macro_f1": accuracy}))
    # Phases that tell the seeds apart: the kept run must carry the kept seed's.
    for name, boundary in (("cnn_seed1", 1), ("cnn_seed2", 2)):
        files.write_json({"first": boundary}, run.phases(name))
    kept_as = "cnn_kept"
    assert publish.keep_best_run(run, names, kept_as) == "cnn_seed2"
    assert run.finished_phases(kept_as) == {"first": 2}
    assert run.model(kept_as).read_bytes() == run.model("cnn_seed2").read_bytes()
    assert run.history(kept_as).read_text() == run.history("cnn_seed2").read_text()
    record = run.read_run_record(kept_as)
    assert record["kept_from"] == "cnn_seed2" and record["seed"] == 2
    assert json.loads(run.validation_metrics(kept_as).read_text())["accuracy"] == 0.7
    assert compare.seed_runs(run, kept_as) == names and compare.seed_runs(run, "cnn_seed1") == []
    # A later run replaced one seed, then stopped before keeping a model: no mixed spread.
    replaced = run.validation_metrics("cnn_seed3").read_text()
    run.validation_metrics("cnn_seed3").write_text(json.dumps(
        {"n_images": 10, "accuracy": 0.9, "macro_f1": 0.9}))
    with pytest.raises(DataError, match="cnn_seed3 is no longer the run cnn_kept was kept"):
        compare.seed_runs(run, kept_as)
    run.validation_metrics("cnn_seed3").write_text(replaced)

    spread = compare.seed_spread(run, names)
    assert spread.index.tolist() == names and spread["seed"].tolist() == [1, 2, 3]
    assert spread["training minutes"].tolist() == pytest.approx([4.0, 8.0, 12.0])
    for name in names:  # each seed's model scored on the test split
        test = pd.read_csv(run.predictions(name, "test"))
        assert spread.loc[name, "test accuracy"] == pytest.approx(
            (test["label"] == test["predicted"]).mean())
        assert spread.loc[name, "test macro-F1"] == pytest.approx(
            sklearn_metrics.f1_score(test["label"], test["predicted"], average="macro",
                                     labels=sorted(set(test["label"])), zero_division=0))
    costs = {"Baseline CNN": {"training_minutes": 1.0, "images_per_second": 1.0,
                              "parameters": 1}}
    table = compare.comparison_table({"Baseline CNN": report}, costs, {"Baseline CNN": spread})
    row = table.loc["Baseline CNN"]
    assert row["seeds"] == 3
    mean, sd = spread["test accuracy"].mean(), spread["test accuracy"].std(ddof=1)
    assert row["test accuracy over seeds (mean ± sd)"] == f"{mean:.4f} ± {sd:.4f}"

    # The kept model's budget counts every seed trained and their minutes; a seed alone, one.
    kept_budget = compare.training_budget(run, kept_as, inference.load_model(run.model(kept_as)))
    assert kept_budget["seeds trained"] == 3 and kept_budget["training images"] == 66
    assert kept_budget["minutes (kept run)"] == pytest.approx(8.0)
    assert kept_budget["minutes (final runs, all seeds)"] == pytest.approx(24.0)
    alone = compare.training_budget(run, "cnn_seed1", inference.load_model(run.model("cnn_seed1")))
    assert alone["seeds trained"] == 1 and alone["minutes (final runs, all seeds)"] == 4.0

    # Each seed against another model, on the same test images in the same order.
    test = pd.read_csv(run.predictions("cnn", "test"))
    y_true = scoring.true_indices(test, loaded.class_names)
    other = scoring.probabilities_of(test, loaded.class_names).argmax(axis=1)
    differences = compare.seed_differences(run, names, y_true, other, loaded.class_names)
    for name in names:
        assert differences.loc[name, "accuracy difference"] == pytest.approx(
            spread.loc[name, "test accuracy"] - metrics.accuracy(y_true, other))
    shuffled = np.roll(y_true, 1)
    assert shuffled.tolist() != y_true.tolist()
    with pytest.raises(DataError, match="not of the same images, in the same order"):
        compare.seed_differences(run, names, shuffled, other, loaded.class_names)


def test_confused_pairs_count_both_directions_and_rank_by_all_models():
    classes = ("a", "b", "c")
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    one = np.array([1, 1, 0, 0, 1, 2, 2, 2])  # a as b twice, b as a once
    other = np.array([0, 0, 0, 1, 1, 1, 0, 2])  # c as b, c as a
    table = compare.confused_pairs(y_true, {"One": one, "Other": other}, classes, top=5)
    assert table.index.tolist() == ["a / b", "a / c", "b / c"]
    assert table["all models"].tolist() == [3, 1, 1]
    assert table.loc["a / b", "One"] == "3 (a as b: 2, b as a: 1)"
    assert table.loc["a / b", "Other"] == "0 (a as b: 0, b as a: 0)"
    assert table.loc["b / c", "Other"] == "1 (b as c: 0, c as b: 1)"
    assert len(compare.confused_pairs(y_true, {"One": one}, classes, top=1)) == 1
    assert compare.confused_pairs(y_true, {"Perfect": y_true}, classes).empty


def two_phase_run(tmp_path) -> RunFolder:
    """A run folder with a two-phase history (frozen: epochs 1-3, fine-tuned: 4-6)."""
    run = RunFolder(tmp_path)
    run.history("net").parent.mkdir(parents=True)
    pd.DataFrame({
        "epoch": range(6), "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        "val_accuracy": [0.55, 0.70, 0.65, 0.80, 0.90, 0.92],
        "loss": [1.5, 1.2, 1.0, 0.8, 0.5, 0.3], "val_loss": [1.4, 1.0, 1.1, 0.9, 0.6, 0.7],
        "epoch_seconds": [60.0] * 6}).to_csv(run.history("net"), index=False)
    files.write_json({"frozen": 3}, run.phases("net"))
    files.write_json({"label": "Net"}, run.run_record("net"))
    return run


def test_each_phase_is_read_from_its_own_epochs(tmp_path):
    run = two_phase_run(tmp_path)
    dynamics = compare.phase_dynamics(run, "net", threshold=0.9)
    assert dynamics.index.tolist() == ["Net: phase 1 (frozen base)", "Net: phase 2 (base unfrozen)"]
    # Epoch numbers of the whole run: phase 2 kept epoch 5 (lowest validation loss 0.6).
    assert dynamics["best_epoch"].tolist() == [2, 5]
    assert dynamics["epochs"].tolist() == [3, 3]
    assert dynamics.loc["Net: phase 2 (base unfrozen)", "epochs_to_threshold"] == 5
    # Its minutes too are of the whole run: 3 epochs of phase 1 and 2 of phase 2, a minute each.
    assert dynamics.loc["Net: phase 2 (base unfrozen)", "minutes_to_threshold"] == (
        pytest.approx(5.0))
    assert dynamics.loc["Net: phase 1 (frozen base)", "overfitting_from"] == 3
    # The kept checkpoints, not the highest validation accuracies (0.70 and 0.92).
    assert compare.kept_checkpoints_by_phase(run, "net") == {
        "phase 1 (frozen base)": 0.70, "phase 2 (base unfrozen)": 0.90}
    one = compare.phase_dynamics(run, "net", row_name="Other")
    assert len(one) == 2 and one.index[0].startswith("Other: ")
    # A one-phase run that went on from another's epoch count keeps fit's numbering.
    later = pd.read_csv(run.history("net")).iloc[3:]
    later.to_csv(run.history("later"), index=False)
    files.write_json({"label": "Later"}, run.run_record("later"))
    row = compare.phase_dynamics(run, "later").loc["Later"]
    assert row["best_epoch"] == 5 and row["overfitting_from"] == 6
    assert pd.isna(row["epochs_to_threshold"])  # never reached 0.95: stays empty


def test_dynamics_tables_of_any_runs_concatenate_with_one_type_per_column(tmp_path):
    """Notebook 5 concatenates the tables of every run: a one-phase run that never reached the
    threshold (empty columns) with a two-phase run that did. Each column keeps its nullable
    type, with no pandas warning (pandas 2.1-2.3 warn on all-empty object columns)."""
    run = two_phase_run(tmp_path)
    never = pd.read_csv(run.history("net")).assign(val_accuracy=0.5, val_loss=[0.9, 0.8, 0.7,
                                                                              0.6, 0.5, 0.4])
    never.to_csv(run.history("never"), index=False)
    files.write_json({"label": "Never"}, run.run_record("never"))
    single = compare.phase_dynamics(run, "never", threshold=0.9)
    assert single.isna().loc["Never", ["overfitting_from", "epochs_to_threshold",
                                       "minutes_to_threshold"]].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = pd.concat([single, compare.phase_dynamics(run, "net", threshold=0.9),
                           histories.dynamics_table({"alone": HISTORY})])
        text = compare.dynamics_text(table)
    assert table.dtypes.astype(str).to_dict() == histories.DYNAMICS_DTYPES
    assert table["epochs_to_threshold"].tolist()[:3] == [pd.NA, pd.NA, 5]
    # Empty cells print as "-", numbers as before: the Never row has 3 empty cells.
    never_line = next(line for line in text.splitlines() if line.startswith("Never"))
    assert never_line.split()[1:] == ["6", "6", "0.500", "-", "0.450", "-", "-"]
    assert "<NA>" not in text and "None" not in text
    with pytest.raises(ValueError, match="but the dynamics table has"):
        histories.dynamics_frame({"run": {**histories.learning_dynamics(HISTORY), "new": 1}})
    missing = histories.learning_dynamics(HISTORY)
    del missing["gap_at_best"]
    with pytest.raises(ValueError, match="but the dynamics table has"):
        histories.dynamics_frame({"run": missing})  # else an empty cell, unseen


DIFFERENCE = {"n_images": 100,
              "accuracy": {"a": 0.95, "b": 0.90, "difference": 0.05, "ci95": [0.02, 0.08]},
              "macro_f1": {"a": 0.94, "b": 0.88, "difference": 0.06, "ci95": [0.03, 0.09]}}
MCNEMAR = {"a_only_correct": 7, "b_only_correct": 2, "p_value": 0.01}
BUDGETS = pd.DataFrame({"CNN": {"initial weights": "random", "input (pixels)": "64x64",
                                 "crop fraction": "0.7", "converged": "yes"},
                        "ResNet50, random init": {"initial weights": "random",
                                                  "input (pixels)": "64x64",
                                                  "crop fraction": "1", "converged": "yes"}})
# The same terms for both models, both converged: a verdict may name a winner.
EQUAL_BUDGETS = BUDGETS.assign(CNN=BUDGETS["ResNet50, random init"])
# A test report and a training cost with every field comparison_table reads.
TABLE_REPORT = {"accuracy": 0.9, "accuracy_ci95": [0.8, 0.95], "macro_f1": 0.9,
                "macro_f1_ci95": [0.8, 0.95], "balanced_accuracy": 0.9,
                "roc_auc_macro_ovr": 0.99, "validation_accuracy": 0.9,
                "calibration": {"ece_before": 0.1, "ece_after": 0.05}}
TABLE_COST = {"training_minutes": 1.0, "images_per_second": 10.0, "parameters": 10}
PAIR = pd.DataFrame({"all models": [4]}, index=pd.Index(["ig / neutrophil"], name="pair"))
NONE = PAIR.iloc[:0]
PAIRS = {"CNN": PAIR, "ResNet50, random init": NONE}


def _sentences(text: str) -> tuple[str, str]:
    """The conclusion's first sentence (what was compared) and the one with the verdict."""
    first = text.split(". ")[0]
    verdict_sentence = next(sentence for sentence in text.split("\n\n")[1].split(". ")
                   if sentence.startswith("So "))
    return first, verdict_sentence


def test_the_conclusion_follows_the_numbers():
    labels = ("CNN", "ResNet50, random init")
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, BUDGETS)
    first, verdict_sentence = _sentences(text)
    assert first.startswith("Compared: CNN (weights: random, input 64x64 px, ? epochs, 1 seed, "
                            "converged) and ResNet50, random init (weights: random")
    assert "cannot say what ImageNet weights give" in text.split("\n\n")[0]
    # Weights from a file are named by the file, ImageNet's as ImageNet.
    from_file = BUDGETS.copy()
    from_file.loc["initial weights"] = ["random", "file resnet50.weights.h5"]
    first, _ = _sentences(verdict.conclusion(DIFFERENCE, ("CNN", "ResNet50, weights from "
                                                          "resnet50.weights.h5"), MCNEMAR, {},
                                             from_file.set_axis(
                                                 ["CNN", "ResNet50, weights from "
                                                  "resnet50.weights.h5"], axis=1)))
    assert "(weights: file resnet50.weights.h5, input 64x64 px" in first
    # Unequal terms (the crop): said in the verdict's own sentence, and no bare winner.
    assert ("**CNN scored higher than ResNet50, random init as the two were trained here"
            in verdict_sentence)
    assert "unequal terms (crop)" in verdict_sentence and "more accurate" not in text
    assert "+0.0500" in text and "+0.0200 to +0.0800" in text and "p = 0.01" in text
    assert "ig / neutrophil" in text
    assert "crop fraction: 0.7 for CNN; 1 for ResNet50, random init" in text
    assert "input (pixels):" not in text  # equal for both: not a difference
    assert "borderline" not in text
    # Equal terms, both converged: the plain verdict_sentence, with its scope.
    equal = EQUAL_BUDGETS
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, equal)
    assert "**CNN is more accurate than ResNet50, random init** on images like these" in text
    assert "equal terms" not in text and "had not converged" not in text
    # One model not converged: said in the verdict, and first, with the rule.
    unconverged = equal.copy()
    unconverged.loc["converged", "ResNet50, random init"] = (
        "no: validation accuracy rose +0.024 in its last 2 epochs")
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, unconverged, gain=0.0025)
    first, verdict_sentence = _sentences(text)
    assert "**not converged** (validation accuracy rose +0.024 in its last 2 epochs)" in first
    assert "less than 0.0025 above the best before them" in text.split("\n\n")[0]
    assert "ResNet50, random init had not converged by the rule above**" in verdict_sentence
    assert "unequal terms" not in verdict_sentence
    unsure = {**DIFFERENCE, "accuracy": {**DIFFERENCE["accuracy"], "ci95": [-0.01, 0.08]}}
    text = verdict.conclusion(unsure, labels, {**MCNEMAR, "p_value": 0.3}, PAIRS, BUDGETS)
    assert "do not separate CNN from ResNet50, random init as the two were trained" in text
    assert "more accurate" not in text and "scored higher" not in text
    # Macro-F1's interval excludes zero where accuracy's does not: said.
    assert "Macro-F1, which weighs every class alike, separates" in text
    # The interval and McNemar disagree: borderline, never a bold winner.
    text = verdict.conclusion(unsure, ("CNN", "Other"), MCNEMAR, {},
                              BUDGETS.set_axis(["CNN", "Other"], axis=1),
                              flagged_temperatures=("Other",))
    assert "**the difference is borderline as the two were trained here" in text
    assert "more accurate" not in text
    assert "transfer" not in text and "confuses" not in text
    assert "temperature fitted for Other sits at the bound" in text
    text = verdict.conclusion(DIFFERENCE, labels, {**MCNEMAR, "p_value": 0.2}, PAIRS, equal)
    assert "**the difference is borderline**" in text and "is not below 0.05" in text
    worse = {**DIFFERENCE, "accuracy": {**DIFFERENCE["accuracy"], "difference": -0.05,
                                        "ci95": [-0.08, -0.01]}}
    seeds = pd.DataFrame({"accuracy difference": [-0.02, -0.04, -0.03]})
    text = verdict.conclusion(worse, labels, MCNEMAR, PAIRS, equal, seeds)
    assert "**ResNet50, random init is more accurate than CNN**" in text
    assert "3 seeds" in text and "-0.0300 ± 0.0100" in text


def test_the_conclusion_says_what_macro_f1_seeds_confusions_and_minutes_add():
    labels = ("CNN", "ResNet50, random init")
    f1_unsure = {**DIFFERENCE, "macro_f1": {**DIFFERENCE["macro_f1"], "ci95": [-0.01, 0.09]}}
    text = verdict.conclusion(f1_unsure, labels, MCNEMAR, PAIRS, EQUAL_BUDGETS)
    assert ("Macro-F1, which weighs every class alike, does not separate the models where "
            "accuracy does: the difference lies in the large classes.") in text
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, EQUAL_BUDGETS)
    assert "Macro-F1, which weighs" not in text  # both intervals exclude zero
    # A macro-F1 interval below zero separates the models as one above zero does.
    f1_lower = {"accuracy": {**DIFFERENCE["accuracy"], "ci95": [-0.01, 0.08]},
                "macro_f1": {**DIFFERENCE["macro_f1"], "difference": -0.05,
                             "ci95": [-0.09, -0.01]}}
    text = verdict.conclusion({**DIFFERENCE, **f1_lower}, labels, {**MCNEMAR, "p_value": 0.3},
                              PAIRS, EQUAL_BUDGETS)
    assert "Macro-F1, which weighs every class alike, separates the models where" in text
    # Both intervals exclude zero, in opposite directions: the conclusion says so.
    opposite = {"accuracy": DIFFERENCE["accuracy"],
                "macro_f1": {**DIFFERENCE["macro_f1"], "difference": -0.05,
                             "ci95": [-0.09, -0.01]}}
    assert DIFFERENCE["accuracy"]["ci95"][0] > 0
    text = verdict.conclusion({**DIFFERENCE, **opposite}, labels, MCNEMAR, PAIRS,
                              EQUAL_BUDGETS)
    assert (f"Macro-F1, which weighs every class alike, points the other way: {labels[1]} "
            "scores higher on it") in text
    two_seeds = pd.DataFrame({"accuracy difference": [0.04, 0.06]})
    assert "CNN was trained with 2 seeds" in verdict.conclusion(
        DIFFERENCE, labels, MCNEMAR, PAIRS, EQUAL_BUDGETS, two_seeds)
    assert "trained with" not in verdict.conclusion(
        DIFFERENCE, labels, MCNEMAR, PAIRS, EQUAL_BUDGETS, two_seeds.iloc[:1])
    pairs = {"CNN": pd.DataFrame({"all models": [4, 1]}, index=pd.Index(
        ["ig / neutrophil", "basophil / monocyte"], name="pair")), "ResNet50, random init": NONE}
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, pairs, EQUAL_BUDGETS)
    assert ("CNN most between ig / neutrophil (4 test images); ResNet50, random init makes no "
            "error") in text
    minutes = BUDGETS.copy()  # the crop differs; so do the minutes, listed with it
    minutes.loc[compare.ALL_MINUTES] = ["12.0", "30.5"]
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, minutes)
    assert (f"- {compare.ALL_MINUTES}: 12.0 for CNN; 30.5 for ResNet50, random init"
            in text)
    minutes.loc[compare.ALL_MINUTES] = ["12.0", "12.0"]
    assert compare.ALL_MINUTES not in verdict.conclusion(
        DIFFERENCE, labels, MCNEMAR, PAIRS, minutes)
    # On equal terms, other minutes alone are no caveat: the plain verdict, no "What differed".
    equal_minutes = EQUAL_BUDGETS.copy()
    equal_minutes.loc[compare.ALL_MINUTES] = ["12.0", "30.5"]
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, equal_minutes)
    assert "**CNN is more accurate than" in text and "What differed" not in text


@pytest.mark.parametrize("row, values, said", [
    ("epochs (frozen + unfrozen where two)", ["15", "1 + 3"], "epochs"),
    ("training images", ["10,160", "5,000"], "training images"),
    ("seeds trained", ["3", "1"], "seeds"),
    ("initial weights", ["ImageNet", "random"], "weights"),
    ("input (pixels)", ["64x64", "224x224"], "input size"),
])
def test_models_trained_on_other_terms_get_no_bare_winner(row, values, said):
    labels = ("CNN", "ResNet50, random init")
    equal = EQUAL_BUDGETS
    same = equal.copy()
    same.loc[row] = [values[0], values[0]]
    assert "**CNN is more accurate than" in verdict.conclusion(
        DIFFERENCE, labels, MCNEMAR, PAIRS, same)
    unequal = equal.copy()
    unequal.loc[row] = values
    text = verdict.conclusion(DIFFERENCE, labels, MCNEMAR, PAIRS, unequal)
    assert f"unequal terms ({said})" in text and "more accurate" not in text
    assert verdict.caveats(unequal)["CNN"] == [f"unequal terms ({said})"]


def test_an_interval_touching_zero_or_a_p_of_exactly_0_05_is_no_clear_verdict():
    labels = ("CNN", "ResNet50, random init")
    equal = EQUAL_BUDGETS
    touching = {**DIFFERENCE, "accuracy": {**DIFFERENCE["accuracy"], "ci95": [0.0, 0.08]}}
    text = verdict.conclusion(touching, labels, MCNEMAR, PAIRS, equal)
    assert "**the difference is borderline**: the interval includes zero" in text
    text = verdict.conclusion(DIFFERENCE, labels, {**MCNEMAR, "p_value": 0.05}, PAIRS, equal)
    assert "**the difference is borderline**" in text and "is not below 0.05" in text
    # Touching zero from below is no clear verdict either, whichever model scored higher.
    below = {**DIFFERENCE, "accuracy": {**DIFFERENCE["accuracy"], "difference": -0.04,
                                        "ci95": [-0.08, 0.0]}}
    text = verdict.conclusion(below, labels, MCNEMAR, PAIRS, equal)
    assert "**the difference is borderline**: the interval includes zero" in text
    assert "more accurate" not in text


def test_caveats_mark_the_rows_of_the_comparison_table():
    unequal = BUDGETS.copy()
    unequal.loc["converged", "CNN"] = "no: 1 epoch, too few to tell"
    limits = verdict.caveats(unequal)
    assert limits == {"CNN": ["not converged", "unequal terms (crop)"],
                      "ResNet50, random init": ["random init: not transfer learning",
                                                "unequal terms (crop)"]}
    equal = EQUAL_BUDGETS
    assert verdict.caveats(equal)["CNN"] == []
    report, cost = TABLE_REPORT, TABLE_COST
    table = compare.comparison_table({"CNN": report, "ResNet50, random init": report},
                                     {"CNN": cost, "ResNet50, random init": cost},
                                     limits=verdict.caveats(equal))
    assert table.columns[0] == "caveats"
    assert table["caveats"].tolist() == ["none", "random init: not transfer learning"]


def test_the_seed_count_reads_back_from_the_csv_as_whole_numbers_for_every_model(tmp_path):
    # The HTML report reads comparison.csv: a count beside an empty cell came back as 3.0000.
    report, cost = TABLE_REPORT, TABLE_COST
    spread = pd.DataFrame({"test accuracy": [0.9, 0.91, 0.92],
                           "test macro-F1": [0.9, 0.9, 0.9], "training minutes": [1, 2, 3]})
    table = compare.comparison_table({"CNN": report, "ResNet": report},
                                     {"CNN": cost, "ResNet": cost}, {"CNN": spread})
    table.to_csv(tmp_path / "comparison.csv")
    read_back = pd.read_csv(tmp_path / "comparison.csv", index_col="model")
    assert read_back["seeds"].tolist() == [3, 1]
    assert pd.api.types.is_integer_dtype(read_back["seeds"])


def test_convergence_is_judged_by_the_last_epochs_gain_in_validation_accuracy():
    def history(accuracies):
        return pd.DataFrame({"val_accuracy": accuracies})
    # The README's ResNet50: still rising.
    assert compare.convergence(history([0.753, 0.888, 0.912])) == (
        "no: validation accuracy rose +0.159 in its last 2 epochs")
    # A noisy last epoch does not hide the rise the epoch before it made.
    assert compare.convergence(history([0.80, 0.85, 0.93, 0.92])).startswith("no: ")
    # Settled: the last two epochs add less than the gain (0.005) to the best before.
    assert compare.convergence(history([0.95, 0.985, 0.988, 0.989, 0.988])) == "yes"
    assert compare.convergence(history([0.95, 0.985, 0.988, 0.989, 0.988]),
                               gain=0.0005).startswith("no: ")
    assert compare.convergence(history([0.95, 0.985, 0.97, 0.96])) == "yes"  # past its best
    # Too short to tell, whatever the figures: never called converged.
    assert compare.convergence(history([0.6, 0.5])) == "no: 2 epochs, too few to tell"
    assert compare.convergence(history([0.7])) == "no: 1 epoch, too few to tell"
    assert compare.convergence(history([0.5, 0.6, 0.6]), window=1) == "yes"
    # A rise of exactly the gain is not "less than" it (values exact in binary).
    assert compare.convergence(history([0.25, 0.25, 0.5, 0.5]), gain=0.25).startswith("no: ")


def test_initial_weights_are_read_from_the_run_record():
    assert compare.initial_weights({"parameters": {"CNN_EPOCHS": 3}}) == "random"
    assert compare.initial_weights({"parameters": {"RESNET_WEIGHTS": "none"}}) == "random"
    assert compare.initial_weights({"parameters": {"RESNET_WEIGHTS": "imagenet"}}) == "ImageNet"
    assert compare.initial_weights(
        {"parameters": {"RESNET_WEIGHTS": "/w/resnet.weights.h5"}}) == "file resnet.weights.h5"


def test_the_budget_table_puts_one_and_two_phase_epochs_in_one_row():
    common = {"input (pixels)": "64x64", "crop fraction": 0.7, "training images": 100,
              "seeds trained": 1, "minutes (kept run)": 1.25,
              "minutes (final runs, all seeds)": 2.5, "number format": "float32",
              "parameters": 1234567}
    table = compare.budget_table({"CNN": {**common, "epochs": "2"},
                                  "ResNet": {**common, "epochs (frozen + unfrozen)": "1 + 1"}})
    epochs = [row for row in table.index if row.startswith("epochs")]
    assert epochs == ["epochs (frozen + unfrozen where two)"]
    assert table.loc[epochs[0]].tolist() == ["2", "1 + 1"]
    assert table.loc["minutes (kept run)", "CNN"] == "1.2"  # formatted for reading
    assert table.loc["parameters", "ResNet"] == "1,234,567"
    assert table.loc["training images", "CNN"] == "100"
    assert list(table.columns) == ["CNN", "ResNet"]


def test_the_ensemble_table_puts_the_kept_seed_the_ensemble_and_the_seeds_side_by_side():
    def report(accuracy, macro_f1):
        return {"accuracy": accuracy, "accuracy_ci95": (accuracy - 0.01, accuracy + 0.01),
                "macro_f1": macro_f1, "macro_f1_ci95": (macro_f1 - 0.02, macro_f1 + 0.02)}

    spread = pd.DataFrame({"test accuracy": [0.97, 0.98, 0.99],
                           "test macro-F1": [0.96, 0.97, 0.98]},
                          index=["cnn_seed42", "cnn_seed43", "cnn_seed44"])
    table = compare.ensemble_table(("kept", report(0.98, 0.97)),
                                   ("ensemble", report(0.99, 0.985)), spread, 1000)
    assert table.index.tolist() == ["kept", "ensemble", "3 seeds one by one, mean ± sd"]
    assert table.loc["ensemble", "test accuracy"] == "0.9900"
    assert table.loc["ensemble", "accuracy 95% CI"] == "0.9800-1.0000"
    assert table.loc["ensemble", "models run per image"] == "3"
    assert table.loc["ensemble", "parameters"] == "3,000"
    assert table.loc["kept", "parameters"] == "1,000"
    assert table.iloc[2]["test accuracy"] == "0.9800 ± 0.0100"
    assert table.iloc[2]["macro-F1"] == "0.9700 ± 0.0100"


def test_the_difference_table_reads_a_paired_difference():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    better, worse = y.copy(), y.copy()
    worse[:2] = 2
    difference = metrics.paired_bootstrap_difference(y, better, worse, n_classes=3,
                                                     n_resamples=200)
    table = compare.difference_table(difference, "A model", "B model")
    assert table.loc["A model", "accuracy"] == 1.0 and table.loc["B model", "accuracy"] == 0.75
    assert table.loc["difference (A - B)", "accuracy"] == 0.25
    low, high = difference["accuracy"]["ci95"]
    assert table.loc["95% paired interval", "accuracy"] == f"{low:+.4f} to {high:+.4f}"
    assert list(table.columns) == ["accuracy", "macro-F1"]
