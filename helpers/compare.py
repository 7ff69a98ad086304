"""The comparison of trained models on the test split: metrics with intervals, calibration,
training cost and how each model learned; read from and written to the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from helpers import files, inference, metrics, models, scoring
from helpers.errors import DataError
from helpers.histories import (
    CONVERGENCE_ACCURACY,
    EPOCH_NUMBERS,
    dynamics_frame,
    learning_dynamics,
)
from helpers.runfolder import RunFolder


def dynamics_text(table: pd.DataFrame) -> str:
    """A table of ``dynamics_frame`` as text: 3 decimals, empty cells as "-".

    Masked, because pandas prints <NA> whatever ``na_rep`` says and ``fillna`` warns in 2.2."""
    return table.astype(object).mask(table.isna(), "-").to_string(
        float_format=lambda value: f"{value:.3f}")


def training_cost(run: RunFolder, name: str, model: keras.Model) -> dict:
    """Minutes of training, median training images/s and parameter counts of run NAME."""
    epochs = run.read_history(name)
    return {"training_minutes": float(epochs["epoch_seconds"].sum() / 60),
            "images_per_second": float(epochs["images_per_second"].median()),
            "parameters": int(model.count_params()),
            "trainable_parameters": models.count_trainable(model)}


def evaluate_on_test(run: RunFolder, name: str, loaded: inference.LoadedModel,
                     tta: bool = False,
                     n_resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
    """Predict validation and test with model NAME, score the test split and save the report.

    Temperature is fitted on validation and applied to test (NLL and ECE before and after).
    """
    class_names = loaded.class_names
    validation = scoring.predict_split(run, name, "validation", loaded)
    test = scoring.predict_split(run, name, "test", loaded)
    report = {"model": name, "label": loaded.label}
    report.update(scoring.report_from_predictions(test, class_names, n_resamples))
    report["validation_accuracy"] = float((validation["label"]
                                           == validation["predicted"]).mean())
    y_validation = scoring.true_indices(validation, class_names)
    y_test = scoring.true_indices(test, class_names)
    temperature = metrics.fit_temperature(
        y_validation, scoring.probabilities_of(validation, class_names))
    test_probabilities = scoring.probabilities_of(test, class_names)
    scaled = metrics.apply_temperature(test_probabilities, temperature)
    report["calibration"] = {
        "temperature": temperature,
        "nll_before": metrics.negative_log_likelihood(y_test, test_probabilities),
        "nll_after": metrics.negative_log_likelihood(y_test, scaled),
        "ece_before": metrics.expected_calibration_error(y_test, test_probabilities),
        "ece_after": metrics.expected_calibration_error(y_test, scaled),
        "temperature_at_bound": metrics.temperature_at_bound(temperature),
    }
    if tta:
        augmented = scoring.predict_split(run, name, "test", loaded, tta=True)
        report["tta"] = scoring.report_from_predictions(augmented, class_names, n_resamples)
    else:  # an earlier run's TTA predictions are not this report's
        run.set_aside([run.predictions(name, "test", tta=True)], "TTA is off in this run")
    files.write_json(report, run.test_metrics(name))
    return report


def seed_runs(run: RunFolder, name: str) -> list[str]:
    """The runs (one per seed) model NAME was kept from; empty when it was trained once.

    Raises DataError when a seed's run is not one NAME was chosen among (a later run replaced
    it, then failed): the spread would mix two recipes."""
    candidates = run.read_run_record(name).get("candidates", {})
    for candidate, chosen_among in candidates.items():
        path = run.validation_metrics(candidate)
        if not path.exists() or files.read_json(path) != chosen_among:
            raise DataError(
                f"{candidate} is no longer the run {name} was kept among (a later run "
                f"replaced it and did not finish all seeds): the seeds would mix two recipes. "
                f"Run the notebook that trains {name} to its end.")
    return list(candidates)


def seed_spread(run: RunFolder, names: list[str]) -> pd.DataFrame:
    """Test accuracy and macro-F1 of each seed's run in ``names``: the variation between
    training runs, which a bootstrap interval over test images does not cover."""
    rows = []
    for name in names:
        loaded = inference.load_model(run.model(name))
        test = scoring.predict_split(run, name, "test", loaded)
        true = scoring.true_indices(test, loaded.class_names)
        predicted = scoring.probabilities_of(test, loaded.class_names).argmax(axis=1)
        rows.append({"run": name, "seed": run.read_run_record(name)["seed"],
                     "validation accuracy": json.loads(
                         run.validation_metrics(name).read_text())["accuracy"],
                     "test accuracy": metrics.accuracy(true, predicted),
                     "test macro-F1": metrics.macro_f1(true, predicted),
                     "training minutes": float(
                         run.read_history(name)["epoch_seconds"].sum() / 60)})
    return pd.DataFrame(rows).set_index("run")


def mean_and_sd(values: pd.Series, signed: bool = False) -> str:
    """"mean ± sd" (sample standard deviation) to 4 decimals; ``signed`` for differences."""
    return f"{values.mean():{'+' if signed else ''}.4f} ± {values.std(ddof=1):.4f}"


def comparison_table(reports: dict[str, dict], costs: dict[str, dict],
                     seeds: dict[str, pd.DataFrame] | None = None,
                     limits: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per model label: caveats, test metrics with 95% intervals, calibration,
    validation-to-test gap, the seeds' mean ± sd and training cost."""
    rows = []
    for label, report in reports.items():
        calibration = report["calibration"]
        row = {"model": label}
        if limits is not None:
            row["caveats"] = "; ".join(limits.get(label, [])) or "none"
        row |= {
            "test accuracy": report["accuracy"],
            "accuracy 95% CI": "{:.4f}-{:.4f}".format(*report["accuracy_ci95"]),
            "macro-F1": report["macro_f1"],
            "macro-F1 95% CI": "{:.4f}-{:.4f}".format(*report["macro_f1_ci95"]),
            "balanced accuracy": report["balanced_accuracy"],
            "ROC-AUC": report["roc_auc_macro_ovr"],
            "ECE before/after T": f"{calibration['ece_before']:.4f} / "
                                  f"{calibration['ece_after']:.4f}",
            "validation accuracy": report["validation_accuracy"],
            "validation - test": report["validation_accuracy"] - report["accuracy"],
        }
        if "tta" in report:
            row["test accuracy with TTA"] = report["tta"]["accuracy"]
        spread = (seeds or {}).get(label)
        # Every model has a count (a model trained once: 1), so that the column read back
        # from comparison.csv is whole numbers, never 3.0000 beside an empty cell.
        row["seeds"] = len(spread) if spread is not None else 1
        if spread is not None and len(spread) > 1:
            row.update({
                "test accuracy over seeds (mean ± sd)": mean_and_sd(spread["test accuracy"]),
                "macro-F1 over seeds (mean ± sd)": mean_and_sd(spread["test macro-F1"]),
                # The recipe's cost: every seed was trained, not only the one kept.
                "training minutes, all seeds": float(spread["training minutes"].sum())})
        cost = costs[label]
        row.update({"training minutes": cost["training_minutes"],
                    "images/s (training)": cost["images_per_second"],
                    "parameters": cost["parameters"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _counted_from(row: dict, first: int) -> dict:
    """A ``learning_dynamics`` row whose epoch numbers start at epoch ``first`` (0-based)."""
    return {key: value + first if key in EPOCH_NUMBERS and value is not None else value
            for key, value in row.items()}


def phase_dynamics(run: RunFolder, name: str, threshold: float = CONVERGENCE_ACCURACY,
                   row_name: str | None = None) -> pd.DataFrame:
    """``learning_dynamics`` of run NAME, one row per training phase.

    Epoch numbers stay those of the whole run, so each row's ``best_epoch`` is the checkpoint
    that phase kept."""
    epochs = run.read_history(name)
    label = row_name or run.read_run_record(name)["label"]
    boundary = run.phase_boundary(name)
    if not boundary or boundary >= len(epochs):
        row = learning_dynamics(epochs, threshold)
        # A run that went on from another's epoch count (notebook 4's phase-2 mistakes):
        # its epochs are numbered as fit counted them.
        first = int(epochs["epoch"].iloc[0]) if "epoch" in epochs and len(epochs) else 0
        return dynamics_frame({label: _counted_from(row, first)})
    rows = {}
    for phase, part in ((f"{label}: phase 1 (frozen base)", epochs.iloc[:boundary]),
                        (f"{label}: phase 2 (base unfrozen)", epochs.iloc[boundary:])):
        first = int(part.index[0])
        row = _counted_from(learning_dynamics(part.reset_index(drop=True), threshold), first)
        if row["minutes_to_threshold"] is not None:  # minutes of the whole run, as epochs
            row["minutes_to_threshold"] += float(epochs["epoch_seconds"].iloc[:first].sum() / 60)
        rows[phase] = row
    return dynamics_frame(rows)


def per_class_table(reports: dict[str, dict]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (rows) and model (column groups)."""
    return pd.concat({label: pd.DataFrame.from_dict(report["per_class"], orient="index")
                      [["precision", "recall", "f1", "support"]]
                      for label, report in reports.items()}, axis=1)


def confused_pairs(y_true: np.ndarray, predicted: dict[str, np.ndarray],
                   class_names: tuple[str, ...], top: int = 5) -> pd.DataFrame:
    """The class pairs the models confuse most, ranked by all models' errors in either
    direction. Pairs no model confuses are left out, so there may be fewer than ``top`` rows."""
    n = len(class_names)
    confusions = {}
    for label, pred in predicted.items():
        counts = np.zeros((n, n), dtype=int)
        np.add.at(counts, (np.asarray(y_true), np.asarray(pred)), 1)
        confusions[label] = counts
    rows = []
    for first in range(n):
        for second in range(first + 1, n):
            row = {"pair": f"{class_names[first]} / {class_names[second]}", "all models": 0}
            for label, counts in confusions.items():
                forward, backward = int(counts[first, second]), int(counts[second, first])
                row[label] = (f"{forward + backward} ({class_names[first]} as "
                              f"{class_names[second]}: {forward}, {class_names[second]} as "
                              f"{class_names[first]}: {backward})")
                row["all models"] += forward + backward
            if row["all models"]:
                rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["pair", "all models", *predicted]).set_index("pair")
    table = pd.DataFrame(rows).set_index("pair")[[*predicted, "all models"]]
    return table.sort_values("all models", ascending=False, kind="stable").head(top)


# "Converged" in the conclusion: the best validation accuracy of a run's last
# CONVERGENCE_WINDOW epochs is less than this above the best before them (notebook 5's
# CONVERGED_ACCURACY_GAIN passes its own).
CONVERGED_ACCURACY_GAIN = 0.005
CONVERGENCE_WINDOW = 2


def initial_weights(record: dict) -> str:
    """Where a run's weights started: "ImageNet", "file NAME" or "random"."""
    setting = record.get("parameters", {}).get("RESNET_WEIGHTS", "none")
    if setting == "none":
        return "random"
    return "ImageNet" if setting == "imagenet" else f"file {Path(setting).name}"


def convergence(epochs: pd.DataFrame, gain: float = CONVERGED_ACCURACY_GAIN,
                window: int = CONVERGENCE_WINDOW) -> str:
    """"yes" when the best validation accuracy of the last ``window`` epochs is less than
    ``gain`` above the best before them, else "no: ..." saying why (too few epochs, or by how
    much it still rose)."""
    accuracies = epochs["val_accuracy"].to_numpy(dtype=float)
    if len(accuracies) <= window:
        return (f"no: {len(accuracies)} epoch{'s' if len(accuracies) != 1 else ''}, too few "
                "to tell")
    rise = float(np.max(accuracies[-window:]) - np.max(accuracies[:-window]))
    if rise < gain:
        return "yes"
    return f"no: validation accuracy rose {rise:+.3f} in its last {window} epochs"


# The budget row of every seed's training time, which the verdict lists when it differs.
ALL_MINUTES = "minutes (final runs, all seeds)"


def training_budget(run: RunFolder, name: str, loaded: inference.LoadedModel,
                    gain: float = CONVERGED_ACCURACY_GAIN) -> dict:
    """What model NAME saw and spent in training: weights, input, images, epochs, seeds,
    minutes, convergence and parameters."""
    record = run.read_run_record(name)
    history = run.read_history(name)
    boundary = run.phase_boundary(name)
    candidates = seed_runs(run, name)
    minutes = float(history["epoch_seconds"].sum() / 60)
    all_minutes = (sum(float(run.read_history(candidate)["epoch_seconds"].sum() / 60)
                       for candidate in candidates) if candidates else minutes)
    epochs = (f"{boundary} + {len(history) - boundary}" if boundary and boundary < len(history)
              else str(len(history)))
    return {
        "initial weights": initial_weights(record),
        "input (pixels)": f"{loaded.image_size}x{loaded.image_size}",
        "crop fraction": float(loaded.crop_fraction),
        "training images": int(record["data"]["training_images"]),
        "epochs (frozen + unfrozen)" if "+" in epochs else "epochs": epochs,
        "seeds trained": max(1, len(candidates)),
        "minutes (kept run)": minutes,
        ALL_MINUTES: all_minutes,
        "converged": convergence(history, gain),
        "number format": record.get("precision", "?"),
        "parameters": int(loaded.model.count_params()),
    }


def budget_table(budgets: dict[str, dict]) -> pd.DataFrame:
    """``training_budget`` of several models, one column each, side by side."""
    table = pd.DataFrame.from_dict(budgets, orient="index")
    epochs = [column for column in table.columns if column.startswith("epochs")]
    if len(epochs) > 1:  # one model trained in two phases: one column for both
        table["epochs"] = table[epochs].bfill(axis=1).iloc[:, 0]
        table = table.drop(columns=[column for column in epochs if column != "epochs"])
        table = table.rename(columns={"epochs": "epochs (frozen + unfrozen where two)"})
    for column in ("minutes (kept run)", ALL_MINUTES):
        table[column] = table[column].map(lambda minutes: f"{minutes:.1f}")
    table["crop fraction"] = table["crop fraction"].map(lambda fraction: f"{fraction:g}")
    for column in ("training images", "parameters"):
        table[column] = table[column].map(lambda count: f"{count:,}")
    return table.T


def seed_differences(run: RunFolder, names: list[str], y_true: np.ndarray,
                     other_predicted: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Per seed's run in ``names``: its test accuracy and macro-F1 minus the other model's."""
    present = np.unique(y_true)
    rows = {}
    for name in names:
        frame = pd.read_csv(run.predictions(name, "test"))
        if scoring.true_indices(frame, class_names).tolist() != list(y_true):
            raise DataError(f"The test predictions of {name} are not of the same images, in "
                            "the same order, as the other model's: run notebook 5 again.")
        predicted = scoring.probabilities_of(frame, class_names).argmax(axis=1)
        rows[name] = {
            "accuracy difference": metrics.accuracy(y_true, predicted)
            - metrics.accuracy(y_true, other_predicted),
            "macro-F1 difference": metrics.macro_f1(y_true, predicted, present)
            - metrics.macro_f1(y_true, other_predicted, present)}
    return pd.DataFrame.from_dict(rows, orient="index")


def difference_table(difference: dict, label_a: str, label_b: str) -> pd.DataFrame:
    """``metrics.paired_bootstrap_difference``'s result as a table, one column per metric."""
    return pd.DataFrame({
        metric: {label_a: values["a"], label_b: values["b"],
                 "difference (A - B)": values["difference"],
                 "95% paired interval": "{:+.4f} to {:+.4f}".format(*values["ci95"]),
                 "resamples where A is better": values["share_of_resamples_a_better"]}
        for metric, values in (("accuracy", difference["accuracy"]),
                               ("macro-F1", difference["macro_f1"]))})


def mcnemar_sentence(mcnemar: dict, label_a: str, label_b: str) -> str:
    """``metrics.mcnemar_exact``'s result in one sentence, naming the two models."""
    n_images = sum(mcnemar[key] for key in ("a_only_correct", "b_only_correct",
                                             "both_correct", "both_wrong"))
    return (f"McNemar on {n_images} images: only {label_a} right {mcnemar['a_only_correct']}, "
            f"only {label_b} right {mcnemar['b_only_correct']}, both right "
            f"{mcnemar['both_correct']}, both wrong {mcnemar['both_wrong']}; exact p = "
            f"{mcnemar['p_value']:.4g}")


def ensemble_table(kept: tuple[str, dict], ensemble: tuple[str, dict], spread: pd.DataFrame,
                   parameters: int) -> pd.DataFrame:
    """The kept seed, the ensemble of all seeds and the seeds' mean ± sd on the test split,
    with what each costs at inference (``parameters``: one member's count)."""
    members = len(spread)
    rows = {}
    for (label, report), passes in ((kept, 1), (ensemble, members)):
        rows[label] = {
            "test accuracy": f"{report['accuracy']:.4f}",
            "accuracy 95% CI": "{:.4f}-{:.4f}".format(*report["accuracy_ci95"]),
            "macro-F1": f"{report['macro_f1']:.4f}",
            "macro-F1 95% CI": "{:.4f}-{:.4f}".format(*report["macro_f1_ci95"]),
            "models run per image": str(passes),
            "parameters": f"{passes * parameters:,}"}
    rows[f"{members} seeds one by one, mean ± sd"] = {
        "test accuracy": mean_and_sd(spread["test accuracy"]), "accuracy 95% CI": "",
        "macro-F1": mean_and_sd(spread["test macro-F1"]),
        "macro-F1 95% CI": "", "models run per image": "1", "parameters": f"{parameters:,}"}
    return pd.DataFrame.from_dict(rows, orient="index")


def kept_checkpoints_by_phase(run: RunFolder, name: str) -> dict[str, float] | None:
    """Validation accuracy of the checkpoint each phase of run NAME kept; None for one phase."""
    epochs = run.read_history(name)
    boundary = run.phase_boundary(name)
    if not boundary or boundary >= len(epochs):
        return None
    phases = {"phase 1 (frozen base)": epochs.iloc[:boundary],
              "phase 2 (base unfrozen)": epochs.iloc[boundary:]}
    return {phase: float(part["val_accuracy"].loc[part["val_loss"].idxmin()])
            for phase, part in phases.items()}
