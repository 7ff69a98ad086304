"""The table of the earlier study's mistakes (notebook 4's last section)."""

import math

import pandas as pd

from helpers import mistakes


def _history(accuracies, losses):
    return pd.DataFrame({"val_accuracy": accuracies, "val_loss": losses})


def test_the_table_gives_each_runs_kept_best_and_last_epoch_and_the_reference():
    kept = {"none (the recipe)": {"accuracy": 0.98}, "no_preprocessing": {"accuracy": 0.62},
            "all": None}
    histories = {"none (the recipe)": _history([0.9, 0.98, 0.97], [0.5, 0.1, 0.2]),
                 "no_preprocessing": _history([0.70, 0.62], [0.9, 1.1])}
    table = mistakes.mistakes_table(kept, histories, reference=0.66)
    assert list(table.index) == ["none (the recipe)", "no_preprocessing", "all",
                                 mistakes.REFERENCE]
    assert table.loc["none (the recipe)", mistakes.BEST] == 0.98  # lowest validation loss
    assert table.loc["none (the recipe)", mistakes.LAST] == 0.97
    assert table.loc["no_preprocessing"].tolist() == [0.62, 0.70, 0.62]  # last reported
    assert math.isnan(table.loc["all", mistakes.KEPT])
    # Of the last phase: a better phase-1 epoch is not the recipe's best.
    two_phases = _history([0.99, 0.95, 0.97], [0.05, 0.3, 0.2])
    phased = mistakes.mistakes_table({"recipe": {"accuracy": 0.97}}, {"recipe": two_phases},
                                     0.66, boundaries={"recipe": 1})
    assert phased.loc["recipe", mistakes.BEST] == 0.97
    # The last phase's first epoch is one of its own.
    first_is_best = _history([0.99, 0.96, 0.95], [0.05, 0.1, 0.2])
    from_boundary = mistakes.mistakes_table({"recipe": {"accuracy": 0.96}},
                                            {"recipe": first_is_best}, 0.66,
                                            boundaries={"recipe": 1})
    assert from_boundary.loc["recipe", mistakes.BEST] == 0.96
    whole = mistakes.mistakes_table({"recipe": {"accuracy": 0.97}}, {"recipe": two_phases}, 0.66)
    assert whole.loc["recipe", mistakes.BEST] == 0.99
    text = mistakes.mistakes_text(table)
    all_line = next(line for line in text.splitlines() if line.startswith("all"))
    assert all_line.split() == ["all", "diverged", "-", "-"]
    reference = next(line for line in text.splitlines() if line.startswith("the earlier"))
    assert reference.split()[-3:] == ["0.6600", "-", "-"]


def test_the_runs_near_the_reference_are_named_from_the_numbers():
    table = mistakes.mistakes_table(
        {"none (the recipe)": {"accuracy": 0.67}, "a": {"accuracy": 0.63},
         "b": {"accuracy": 0.90}, "c": None}, {}, reference=0.66)
    # The recipe is never the answer, even when it sits near the figure.
    assert mistakes.near_the_reference(table, 0.66, 0.05) == (
        "Within 0.05 of the earlier study's 0.66: a (0.6300).")
    assert mistakes.near_the_reference(table, 0.66, 0.01) == (
        "No run lands within 0.01 of the earlier study's 0.66; the nearest is a at 0.6300.")
    # Exactly ``within`` away counts as within.
    exact = mistakes.mistakes_table({"a": {"accuracy": 0.75}}, {}, reference=0.5)
    assert mistakes.near_the_reference(exact, 0.5, 0.25).startswith("Within 0.25")
    none_finished = mistakes.mistakes_table({"c": None}, {}, reference=0.66)
    assert "No mistake run finished" in mistakes.near_the_reference(none_finished, 0.66, 0.05)
