"""What a run's training history says (the epoch kept, overfitting, the generalization gap,
speed to an accuracy, BatchNorm's probe), as tables; pandas only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# "Converged" for the convergence-speed figures: validation accuracy reached this.
CONVERGENCE_ACCURACY = 0.95
# Overfitting needs validation loss this far (relative) above its lowest: the CPU study's CNN
# rose 0.2-1.1% in its last epoch, at a learning rate near zero, which is noise, not a trend.
OVERFITTING_RISE = 0.02


def read_history(history_csv: Path) -> pd.DataFrame | None:
    """A history CSV's rows, or None when the file is missing or empty (no epoch ended yet)."""
    if not history_csv.exists() or history_csv.stat().st_size == 0:
        return None
    return pd.read_csv(history_csv)


def learning_dynamics(epochs: pd.DataFrame,
                      threshold: float = CONVERGENCE_ACCURACY) -> dict:
    """How a run learned, from its history (epoch numbers 1-based).

    ``overfitting_from``: the epoch after the best one when, after it, training loss still
    fell and validation loss rose more than OVERFITTING_RISE above its lowest.
    ``*_to_threshold``: when validation accuracy first reached ``threshold`` (None if never).
    """
    best = int(epochs["val_loss"].idxmin())
    after = epochs.iloc[best + 1:]
    overfitting = None
    if (len(after) and after["loss"].min() < epochs["loss"].iloc[best]
            and after["val_loss"].max() > epochs["val_loss"].iloc[best] * (1 + OVERFITTING_RISE)):
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


# Nullable types, the same in every table: all-None object columns warn in pandas 2.1-2.3
# when concatenated, and mix None and <NA> in pandas 3.
DYNAMICS_DTYPES = {"epochs": "Int64", "best_epoch": "Int64", "best_val_accuracy": "Float64",
                   "overfitting_from": "Int64", "gap_at_best": "Float64",
                   "epochs_to_threshold": "Int64", "minutes_to_threshold": "Float64"}


# The columns of ``learning_dynamics`` that are epoch numbers (1-based).
EPOCH_NUMBERS = ("best_epoch", "overfitting_from", "epochs_to_threshold")


def dynamics_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """Rows of ``learning_dynamics`` as a table typed by ``DYNAMICS_DTYPES``."""
    for name, row in rows.items():
        if set(row) != set(DYNAMICS_DTYPES):  # a new key would otherwise be dropped unseen
            raise ValueError(f"{name}: columns {sorted(row)}, but the dynamics table has "
                             f"{sorted(DYNAMICS_DTYPES)}")
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(DYNAMICS_DTYPES))
    return table.astype(DYNAMICS_DTYPES)


def dynamics_table(histories: dict[str, pd.DataFrame],
                   threshold: float = CONVERGENCE_ACCURACY) -> pd.DataFrame:
    """``learning_dynamics`` of several runs, one row each (integers stay integers)."""
    return dynamics_frame(
        {run: learning_dynamics(epochs, threshold) for run, epochs in histories.items()})


def batchnorm_probe_table(history: pd.DataFrame, steps_per_epoch: int,
                          momentum: float) -> pd.DataFrame:
    """Per epoch of a run trained with ``probe_batchnorm_images``: the share of statistics the
    moving averages absorbed (1 - momentum^steps), and validation accuracy both ways."""
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
