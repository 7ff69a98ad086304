"""Live progress of a training run, from the kernel that trains to the headless study's line.

``python -m helpers.study`` names a file in PROGRESS_VARIABLE for the kernels it starts. Only
then does ``TrainingRun.callbacks`` add ``callbacks.LiveProgress``, which keeps that file up
to date while ``fit`` runs: JSON written atomically at each epoch's start and end, at the
start of validation and the end of ``fit``, and at most every INTERVAL seconds in between.
The runner reads and shows it (``helpers.tools.progress``). In Colab or Jupyter, where the
variable is not set, nothing is written.

The file holds one object:

    run        the run's name                       epochs     the epochs ``fit`` was given
    phase      its phase, or null                   step       steps done in the epoch
    epoch      the epoch in progress (1-based,      steps      steps per epoch (or null)
               counted as ``fit`` counts, so a      stage      "training", "validating" or
               resumed run and a later phase                   "ended" (``fit`` returned)
               continue the count)                  elapsed    seconds since ``fit`` began
    completed  epochs done, those before this       eta        seconds left, estimated (null:
               ``fit`` included                                 no estimate yet)
    initial    epochs done before this ``fit``      updated    when written (``time.time()``)
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from helpers import files

PROGRESS_VARIABLE = "BLOOD_CELLS_PROGRESS_FILE"
# Seconds between two writes while an epoch runs (epoch starts and ends are always written).
INTERVAL = 1.0
STAGES = ("training", "validating", "ended")

_warned = False


def path_from_environment() -> Path | None:
    """The progress file the headless study asked for, or None (not run by the study)."""
    value = os.environ.get(PROGRESS_VARIABLE, "")
    return Path(value) if value else None


def typical_epoch(epoch_seconds: list[float]) -> float | None:
    """The seconds an epoch takes: the mean of the epochs done in this ``fit``, without the
    first once there are others (it also builds the graph and fills the data cache)."""
    if not epoch_seconds:
        return None
    later = epoch_seconds[1:] or epoch_seconds
    return sum(later) / len(later)


def seconds_left(epoch_seconds: list[float], epochs_after: int,
                 epoch_elapsed: float | None = None, step: int = 0, steps: int | None = None,
                 step_seconds: float | None = None) -> float | None:
    """Seconds ``fit`` still needs: the rest of the epoch in progress (``epoch_elapsed``
    seconds in, ``step`` of ``steps`` done; None: between two epochs) and ``epochs_after``
    more; None while there is nothing to go by.

    The rest of the epoch from its steps' pace (``step_seconds``, the mean step after its
    first, which also builds the graph), else from the time an epoch takes
    (``typical_epoch`` of those done); later epochs from that time, else from the pace."""
    typical = typical_epoch(epoch_seconds)
    if typical is None and (step_seconds is None or not steps):
        return None
    if epoch_elapsed is None:
        current = 0.0
    elif step_seconds is not None and steps:
        current = max(0, steps - step) * step_seconds  # validation not counted
    else:
        current = max(0.0, typical - epoch_elapsed)
    return current + max(0, epochs_after) * (typical if typical is not None
                                             else step_seconds * steps)


class ProgressWriter:
    """Writes progress (a dict) to ``path`` atomically, at most every ``interval`` seconds
    unless forced. A write that fails warns once (per process) and is skipped: progress
    never fails a training."""

    def __init__(self, path: str | os.PathLike, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.interval = interval
        self.clock, self.wall_clock = clock, wall_clock
        self._last = -math.inf

    def due(self) -> bool:
        """Whether a write not forced would be made now."""
        return self.clock() - self._last >= self.interval

    def write(self, progress: dict, force: bool = False) -> bool:
        """Write ``progress`` (with ``updated``) if forced or due; whether it was written."""
        global _warned
        if not force and not self.due():
            return False
        self._last = self.clock()
        try:
            files.write_text_atomically(
                json.dumps({**progress, "updated": self.wall_clock()}), self.path)
        except Exception as error:  # a full disk, a folder gone: training goes on
            if not _warned:
                _warned = True
                warnings.warn(f"Could not write the training progress to {self.path} "
                              f"({error}); training goes on without it.", RuntimeWarning,
                              stacklevel=2)
            return False
        return True
