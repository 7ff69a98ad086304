"""The table of notebook 4's last section: the earlier study's mistakes trained back in,
beside the recipe and the earlier study's reported accuracy."""

from __future__ import annotations

import math

import pandas as pd

RECIPE = "none (the recipe)"
REFERENCE = "the earlier study, as reported"
KEPT = "kept model"
BEST = "best epoch"
LAST = "last epoch"


def mistakes_table(kept: dict[str, dict | None], histories: dict[str, pd.DataFrame],
                   reference: float, boundaries: dict[str, int | None] | None = None,
                   ) -> pd.DataFrame:
    """Validation accuracy per run of its kept model (None in ``kept``: diverged), and at
    its last phase's best and last epochs, then a row for the earlier study's ``reference``.
    ``boundaries`` gives where each run's last phase starts in its history."""
    rows = {}
    for name, result in kept.items():
        history = histories.get(name)
        boundary = (boundaries or {}).get(name)
        if history is not None and boundary:
            history = history.iloc[boundary:]
        row = {KEPT: math.nan if result is None else float(result["accuracy"]),
               BEST: math.nan, LAST: math.nan}
        if history is not None and len(history):
            row[BEST] = float(history["val_accuracy"].loc[history["val_loss"].idxmin()])
            row[LAST] = float(history["val_accuracy"].iloc[-1])
        rows[name] = row
    rows[REFERENCE] = {KEPT: reference, BEST: math.nan, LAST: math.nan}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "mistake"
    return table


def mistakes_text(table: pd.DataFrame) -> str:
    """``mistakes_table`` as text: 4 decimals, "diverged" for no kept model, "-" if absent."""
    shown = table.astype(object).map(lambda value: "-" if pd.isna(value) else f"{value:.4f}")
    diverged = table[KEPT].isna() & (table.index != REFERENCE)
    shown.loc[diverged, KEPT] = "diverged"
    return shown.to_string()


def near_the_reference(table: pd.DataFrame, reference: float, within: float) -> str:
    """Which runs' kept models land within ``within`` of ``reference``; else the nearest."""
    runs = table[KEPT].drop(index=[REFERENCE, RECIPE], errors="ignore").dropna()
    if runs.empty:
        return "No mistake run finished: nothing to set beside the earlier study's figure."
    distance = (runs - reference).abs()
    near = runs[distance <= within]
    if len(near):
        return (f"Within {within:.2f} of the earlier study's {reference:.2f}: "
                + ", ".join(f"{name} ({value:.4f})" for name, value in near.items()) + ".")
    nearest = distance.idxmin()
    return (f"No run lands within {within:.2f} of the earlier study's {reference:.2f}; the "
            f"nearest is {nearest} at {runs[nearest]:.4f}.")
