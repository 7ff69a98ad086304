"""The verdict of the comparison, written from the run's numbers: ``caveats`` and a
``conclusion`` whose first sentence never says more than was compared."""

from __future__ import annotations

import pandas as pd

from helpers import compare


def _share(value: float) -> str:
    return f"{value:.4f}"


# The rows of ``budget_table`` two models must share to be compared "on equal terms".
TERMS = ("initial weights", "input (pixels)", "crop fraction", "training images",
         "seeds trained")


def _terms(budgets: pd.DataFrame) -> list[str]:
    return [row for row in budgets.index if row in TERMS or row.startswith("epochs")]


# How the rows of TERMS read in a caveat or a verdict.
SHORT_TERMS = {"initial weights": "weights", "input (pixels)": "input size",
               "crop fraction": "crop", "seeds trained": "seeds"}


def _differing(budgets: pd.DataFrame) -> list[str]:
    """The rows of TERMS on which the models of ``budgets`` differ."""
    return [row for row in _terms(budgets) if budgets.loc[row].astype(str).nunique() > 1]


def _unequal(budgets: pd.DataFrame) -> str:
    """The terms on which the models of ``budgets`` differ, in a few words (empty: none)."""
    return ", ".join(SHORT_TERMS.get(row, "epochs" if row.startswith("epochs") else row)
                     for row in _differing(budgets))


def caveats(budgets: pd.DataFrame) -> dict[str, list[str]]:
    """Per model (a column of ``budget_table``): what limits a verdict about it (unequal
    terms, not converged, random init)."""
    differing = _unequal(budgets)
    found: dict[str, list[str]] = {}
    for label in budgets.columns:
        notes = []
        if "random init" in label:
            notes.append("random init: not transfer learning")
        if "converged" in budgets.index and str(budgets.loc["converged", label]) != "yes":
            notes.append("not converged")
        if differing:
            notes.append(f"unequal terms ({differing})")
        found[label] = notes
    return found


def _described(budgets: pd.DataFrame, label: str) -> str:
    """One model's terms: "weights: random, input 64x64 px, 15 epochs, 3 seeds, converged"."""
    column = budgets[label].astype(str)
    epochs = next((column[row] for row in column.index if row.startswith("epochs")), "?")
    seeds = column.get("seeds trained", "1")
    converged = column.get("converged", "yes")
    return (f"weights: {column.get('initial weights', 'random')}, "
            f"input {column.get('input (pixels)', '?')} px, {epochs} epochs, "
            f"{seeds} seed{'s' if seeds != '1' else ''}, "
            + ("converged" if converged == "yes" else "**not converged** (" +
               converged.removeprefix("no: ") + ")"))


def conclusion(difference: dict, labels: tuple[str, str], mcnemar: dict,
               top_pairs: dict[str, pd.DataFrame], budgets: pd.DataFrame,
               seeds: pd.DataFrame | None = None,
               flagged_temperatures: tuple[str, ...] = (),
               gain: float = compare.CONVERGED_ACCURACY_GAIN) -> str:
    """The study's conclusion as Markdown, for model A (``labels[0]``) against model B.

    Its first sentence says what was compared; a verdict between models trained on unequal
    terms, or not converged, says so in its own sentence."""
    first, second = labels
    accuracy, macro_f1 = difference["accuracy"], difference["macro_f1"]
    low, high = accuracy["ci95"]
    interval_says = low > 0 or high < 0
    mcnemar_says = mcnemar["p_value"] < 0.05
    better, worse = (first, second) if accuracy["difference"] > 0 else (second, first)
    differing = _differing(budgets)
    unconverged = [label for label in labels if "converged" in budgets.index
                   and str(budgets.loc["converged", label]) != "yes"]
    limits = []
    if differing:
        limits.append(f"they trained on unequal terms ({_unequal(budgets)})")
    if unconverged:  # still improving, or too short to tell: the first sentence says which
        limits.append(" and ".join(unconverged) + " had not converged by the rule above")
    qualifier = (" as the two were trained here, which is not a verdict on the architectures: "
                 + " and ".join(limits)) if limits else ""
    if interval_says and mcnemar_says:
        verdict = (f"**{better} scored higher than {worse}{qualifier}**; on these test images "
                   "the interval excludes zero and McNemar's p is below 0.05" if limits else
                   f"**{better} is more accurate than {worse}** on images like these (one "
                   "hospital, an image-level split): the interval excludes zero and McNemar's "
                   "p is below 0.05")
    elif interval_says or mcnemar_says:
        interval = "excludes" if interval_says else "includes"
        verdict = (f"**the difference is borderline{qualifier}**: the interval {interval} zero, "
                   f"McNemar's p = {mcnemar['p_value']:.3g} {'is' if mcnemar_says else 'is not'} "
                   "below 0.05 (with few images where the models differ the percentile "
                   "bootstrap is approximate and the exact test conservative); treat the sign "
                   "of the difference as uncertain")
    else:
        verdict = (f"**the test images do not separate {first} from {second}{qualifier}**: "
                   "the interval of the difference includes zero and McNemar's p is 0.05 or "
                   "more")
    compared = (f"Compared: {first} ({_described(budgets, first)}) and {second} "
                f"({_described(budgets, second)}), on the same {difference['n_images']} test "
                f"images. Converged means the best validation accuracy of its last "
                f"{compare.CONVERGENCE_WINDOW} epochs was less than {gain:g} above the best before "
                "them.")
    if any("random init" in label for label in labels):
        compared += (" A ResNet50 with random initial weights is not transfer learning: this "
                     "run cannot say what ImageNet weights give.")
    lines = [
        compared,
        f"{first} scored accuracy {_share(accuracy['a'])} and macro-F1 "
        f"{_share(macro_f1['a'])}; {second} {_share(accuracy['b'])} and "
        f"{_share(macro_f1['b'])}. The difference ({first} minus {second}) is "
        f"{accuracy['difference']:+.4f} in accuracy (95% paired bootstrap interval "
        f"{low:+.4f} to {high:+.4f}) and {macro_f1['difference']:+.4f} in macro-F1 "
        f"({macro_f1['ci95'][0]:+.4f} to {macro_f1['ci95'][1]:+.4f}); McNemar's exact test "
        f"gives p = {mcnemar['p_value']:.3g} ({mcnemar['a_only_correct']} images only "
        f"{first} got right, {mcnemar['b_only_correct']} only {second}). So {verdict}.",
    ]
    f1_low, f1_high = macro_f1["ci95"]
    f1_says = f1_low > 0 or f1_high < 0
    if f1_says != interval_says:
        lines.append("Macro-F1, which weighs every class alike, "
                     + ("separates the models where accuracy does not."
                        if f1_says else
                        "does not separate the models where accuracy does: the difference "
                        "lies in the large classes."))
    elif f1_says and (f1_low > 0) != (low > 0):  # both separate them, in opposite directions
        lines.append(f"Macro-F1, which weighs every class alike, points the other way: "
                     f"{first if f1_low > 0 else second} scores higher on it, its interval "
                     "excluding zero too. Which model is better depends on whether the small "
                     "classes count as much as the large ones.")
    if seeds is not None and len(seeds) > 1:
        spread = seeds["accuracy difference"]
        lines.append(
            f"{first} was trained with {len(seeds)} seeds; against the one run of {second} "
            f"(whose own seed-to-seed spread was not measured) the accuracy difference is "
            f"{compare.mean_and_sd(spread, signed=True)} (mean ± sd over the seeds), from "
            f"{spread.min():+.4f} to {spread.max():+.4f}: the kept seed, chosen on validation, "
            "is one draw of these.")
    confused = [f"{label} most between {table.index[0]} ({int(table['all models'].iloc[0])} "
                "test images)" if len(table) else f"{label} makes no error"
                for label, table in top_pairs.items()]
    if confused:
        lines.append("The classes each model confuses: " + "; ".join(confused) + ".")
    listed = differing + [row for row in budgets.index
                          if row == compare.ALL_MINUTES
                          and budgets.loc[row].astype(str).nunique() > 1]
    if differing:
        lines.append("What differed, so this compares the two recipes as run, not the "
                     "architectures at equal cost:\n" + "\n".join(
                         f"- {row}: " + "; ".join(f"{budgets.loc[row, label]} for {label}"
                                                  for label in budgets.columns)
                         for row in listed))
    for label in flagged_temperatures:
        lines.append(f"The temperature fitted for {label} sits at the bound of its search: the "
                     "best temperature lies beyond it, so its calibrated figures are worse than "
                     "the best scaling would give, and not final.")
    return "\n\n".join(lines)
