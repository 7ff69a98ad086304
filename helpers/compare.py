"""The comparison of trained models on the test split: metrics with intervals, calibration
before and after temperature scaling, training cost, and how each model learned.

Everything is read from and written to the run folder (``helpers.runfolder``): per-image
predictions, ``metrics/NAME_test.json`` and the comparison table.
"""

from __future__ import annotations

import json

import keras
import pandas as pd

from helpers import evaluate, files, inference, metrics, models
from helpers.errors import DataError
from helpers.runfolder import RunFolder

# "Converged" for the convergence-speed figures: validation accuracy reached this.
CONVERGENCE_ACCURACY = 0.95


def learning_dynamics(epochs: pd.DataFrame,
                      threshold: float = CONVERGENCE_ACCURACY) -> dict:
    """How a run learned, from its history.

    ``best_epoch``: lowest validation loss (1-based, the checkpoint kept).
    ``overfitting_from``: the first epoch after the best one, when training loss still fell
    afterwards (validation loss rose while training loss fell); None when the best epoch is
    the last one. ``gap_at_best``: training minus validation accuracy at the best epoch.
    ``epochs_to_threshold`` / ``minutes_to_threshold``: first time validation accuracy
    reached ``threshold`` (None if never).
    """
    best = int(epochs["val_loss"].idxmin())
    after = epochs.iloc[best + 1:]
    overfitting = None
    if len(after) and after["loss"].min() < epochs["loss"].iloc[best]:
        overfitting = best + 2
    reached = epochs.index[epochs["val_accuracy"] >= threshold]
    minutes = epochs["epoch_seconds"].cumsum() / 60 if "epoch_seconds" in epochs else None
    first = int(reached[0]) if len(reached) else None
    return {
        "epochs": int(len(epochs)),
        "best_epoch": best + 1,
        "best_val_accuracy": float(epochs["val_accuracy"].iloc[best]),
        "overfitting_from": overfitting,
        "gap_at_best": float(epochs["accuracy"].iloc[best] - epochs["val_accuracy"].iloc[best]),
        "epochs_to_threshold": None if first is None else first + 1,
        "minutes_to_threshold": (None if first is None or minutes is None
                                 else float(minutes.iloc[first])),
    }


def dynamics_table(histories: dict[str, pd.DataFrame],
                   threshold: float = CONVERGENCE_ACCURACY) -> pd.DataFrame:
    """``learning_dynamics`` of several runs, one row each (integers stay integers)."""
    return pd.DataFrame.from_dict(
        {run: learning_dynamics(epochs, threshold) for run, epochs in histories.items()},
        orient="index").convert_dtypes()


def batchnorm_probe_table(history: pd.DataFrame, steps_per_epoch: int,
                          momentum: float) -> pd.DataFrame:
    """Per epoch of a run trained with ``probe_batchnorm_images`` (``training.TrainingRun``):
    BatchNorm update steps so far, the share of the statistics the moving averages have
    absorbed by then (1 - momentum^steps), training accuracy, and validation accuracy of the
    same weights with the moving averages and with recomputed statistics."""
    steps = (history["epoch"].to_numpy() + 1) * steps_per_epoch
    table = pd.DataFrame({
        "update steps": steps,
        "share absorbed": 1 - momentum ** steps,
        "training accuracy": history["accuracy"].to_numpy(),
        "val_accuracy (moving averages)": history["val_accuracy"].to_numpy(),
        "val_accuracy (recomputed statistics)":
            history["val_accuracy_recomputed_bn"].to_numpy(),
    }, index=pd.Index(history["epoch"].to_numpy() + 1, name="epoch"))
    table["gap"] = (table["val_accuracy (recomputed statistics)"]
                    - table["val_accuracy (moving averages)"])
    return table


def training_cost(run: RunFolder, name: str, model: keras.Model) -> dict:
    """Minutes of training, median training images/s (from the history of run NAME) and the
    parameter counts of its kept ``model``."""
    epochs = run.read_history(name)
    return {"training_minutes": float(epochs["epoch_seconds"].sum() / 60),
            "images_per_second": float(epochs["images_per_second"].median()),
            "parameters": int(model.count_params()),
            "trainable_parameters": models.count_trainable(model)}


def evaluate_on_test(run: RunFolder, name: str, loaded: inference.LoadedModel,
                     tta: bool = False,
                     n_resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
    """Predict validation and test with model NAME and score the test split.

    ``loaded`` is ``inference.load_model(run.model(name))``. Temperature is fitted on
    validation and applied to test; the report gives NLL and ECE before and after (accuracy
    cannot change). With ``tta`` the TTA figures are added under "tta", beside the plain ones.
    Saves ``metrics/NAME_test.json``.
    """
    class_names = loaded.class_names
    validation = evaluate.predict_split(run, name, "validation", loaded)
    test = evaluate.predict_split(run, name, "test", loaded)
    report = {"model": name, "label": loaded.label}
    report.update(evaluate.report_from_predictions(test, class_names, n_resamples))
    report["validation_accuracy"] = float((validation["label"]
                                           == validation["predicted"]).mean())
    y_validation = evaluate.true_indices(validation, class_names)
    y_test = evaluate.true_indices(test, class_names)
    temperature = metrics.fit_temperature(
        y_validation, evaluate.probabilities_of(validation, class_names))
    test_probabilities = evaluate.probabilities_of(test, class_names)
    scaled = metrics.apply_temperature(test_probabilities, temperature)
    report["calibration"] = {
        "temperature": temperature,
        "nll_before": metrics.negative_log_likelihood(y_test, test_probabilities),
        "nll_after": metrics.negative_log_likelihood(y_test, scaled),
        "ece_before": metrics.expected_calibration_error(y_test, test_probabilities),
        "ece_after": metrics.expected_calibration_error(y_test, scaled),
    }
    if tta:
        augmented = evaluate.predict_split(run, name, "test", loaded, tta=True)
        report["tta"] = evaluate.report_from_predictions(augmented, class_names, n_resamples)
    files.write_json(report, run.test_metrics(name))
    return report


def seed_runs(run: RunFolder, name: str) -> list[str]:
    """The runs (one per seed) model NAME was kept from (``training.keep_best_run``); empty
    when it was trained once.

    Raises DataError when a seed's run is not the one NAME was chosen among (a later run of
    the notebook replaced some seeds, then failed or stopped before keeping a model): its
    spread would mix two recipes."""
    candidates = run.read_run_record(name).get("candidates", {})
    for candidate, chosen_among in candidates.items():
        path = run.validation_metrics(candidate)
        if not path.exists() or json.loads(path.read_text()) != chosen_among:
            raise DataError(
                f"{candidate} is no longer the run {name} was kept among (a later run "
                f"replaced it and did not finish all seeds): the seeds would mix two recipes. "
                f"Run the notebook that trains {name} to its end.")
    return list(candidates)


def seed_spread(run: RunFolder, names: list[str]) -> pd.DataFrame:
    """Test accuracy and macro-F1 of each run in ``names`` (the same recipe with different
    seeds), with its seed, validation accuracy and training minutes: what varies between
    training runs, which a bootstrap interval over test images does not cover."""
    rows = []
    for name in names:
        loaded = inference.load_model(run.model(name))
        test = evaluate.predict_split(run, name, "test", loaded)
        true = evaluate.true_indices(test, loaded.class_names)
        predicted = evaluate.probabilities_of(test, loaded.class_names).argmax(axis=1)
        rows.append({"run": name, "seed": run.read_run_record(name)["seed"],
                     "validation accuracy": json.loads(
                         run.validation_metrics(name).read_text())["accuracy"],
                     "test accuracy": metrics.accuracy(true, predicted),
                     "test macro-F1": metrics.macro_f1(true, predicted),
                     "training minutes": float(
                         run.read_history(name)["epoch_seconds"].sum() / 60)})
    return pd.DataFrame(rows).set_index("run")


def comparison_table(reports: dict[str, dict], costs: dict[str, dict],
                     seeds: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per model: test metrics with 95% intervals, calibration, validation-to-test
    gap and training cost. ``reports``/``costs`` map a model's label to
    ``evaluate_on_test`` and ``training_cost`` results; ``seeds`` maps a label to its
    ``seed_spread``, reported as mean and standard deviation over the seeds."""
    rows = []
    for label, report in reports.items():
        calibration = report["calibration"]
        row = {
            "model": label,
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
        if spread is not None and len(spread) > 1:
            row.update({
                "seeds": str(len(spread)),  # a count, not a score to print as 3.0000
                "test accuracy over seeds (mean ± sd)":
                    f"{spread['test accuracy'].mean():.4f} ± "
                    f"{spread['test accuracy'].std(ddof=1):.4f}",
                "macro-F1 over seeds (mean ± sd)":
                    f"{spread['test macro-F1'].mean():.4f} ± "
                    f"{spread['test macro-F1'].std(ddof=1):.4f}",
                # The recipe's cost: every seed was trained, not only the one kept.
                "training minutes, all seeds": float(spread["training minutes"].sum())})
        cost = costs[label]
        row.update({"training minutes": cost["training_minutes"],
                    "images/s (training)": cost["images_per_second"],
                    "parameters": cost["parameters"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
