"""Live progress of a training run, from the kernel that trains to the headless study's line.

``python -m helpers.study`` names a file in PROGRESS_VARIABLE for the kernels it starts. Only
then does ``training.TrainingRun.callbacks`` add ``callbacks.LiveProgress``, which keeps that
file up to date while ``fit`` runs: JSON written atomically at each epoch's start and end, at
the start of validation and the end of ``fit``, and at most every INTERVAL seconds in between.
The runner reads it (``read``), drops what is not current (``is_current``) and shows it
(``describe``) on the notebook's one line. In Colab or Jupyter, where the variable is not set,
nothing is written.

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
# Progress not rewritten for this long is no longer shown: its fit stopped without saying so
# (an error caught by the notebook). A step or a validation batch takes far less.
SILENCE_SECONDS = 600.0
STAGES = ("training", "validating", "ended")

_warned = False


def path_from_environment() -> Path | None:
    """The progress file the headless study asked for, or None (not run by the study)."""
    value = os.environ.get(PROGRESS_VARIABLE, "")
    return Path(value) if value else None


def clock(seconds: float) -> str:
    """Seconds as MM:SS, or H:MM:SS from an hour on (as tqdm shows elapsed time)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


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


def _number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read(path: str | os.PathLike) -> dict | None:
    """The progress in ``path``, or None: no file, or not progress as ``callbacks.LiveProgress``
    writes it (garbled, cut short, another kind of JSON). Never raises."""
    try:
        progress = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(progress, dict):
        return None
    valid = (isinstance(progress.get("run"), str) and progress["run"]
             and isinstance(progress.get("phase"), str | type(None))
             and _whole(progress.get("epoch")) and _whole(progress.get("epochs"))
             and _whole(progress.get("completed", 0)) and _whole(progress.get("initial", 0))
             and _whole(progress.get("step", 0))
             and (progress.get("steps") is None or _whole(progress["steps"]))
             and progress.get("stage") in STAGES
             and _number(progress.get("elapsed")) and _number(progress.get("updated"))
             and (progress.get("eta") is None or _number(progress["eta"])))
    return progress if valid else None


def is_current(progress: dict | None, since: float | None, now: float,
               include_ended: bool = False) -> bool:
    """Whether ``progress`` tells what the kernel does now: written since ``since`` (when the
    running cell started; earlier progress is of a cell that finished), in the last
    SILENCE_SECONDS, and of a ``fit`` still running (or one that ended, with
    ``include_ended``)."""
    if progress is None:
        return False
    if progress["stage"] == "ended" and not include_ended:
        return False
    if since is not None and progress["updated"] < since:
        return False
    return now - progress["updated"] <= SILENCE_SECONDS


def label(progress: dict) -> str:
    """The run's name, with its phase in brackets."""
    phase = progress.get("phase")
    return f"{progress['run']} ({phase})" if phase else progress["run"]


def _elapsed_and_left(progress: dict, now: float) -> tuple[float, float | None]:
    """Elapsed and left seconds of ``progress`` as of ``now`` (it was written at
    ``updated``; ``fit`` went on since, unless it ended)."""
    since_written = 0.0 if progress["stage"] == "ended" else max(0.0, now - progress["updated"])
    eta = progress.get("eta")
    return (progress["elapsed"] + since_written,
            None if eta is None else max(0.0, eta - since_written))


def describe(progress: dict, now: float, short: bool = False) -> str:
    """What the run is doing, e.g. "cnn_seed43: epoch 5/15, step 120/187, 02:10 elapsed,
    ~04:20 left" (``short``: "cnn_seed43: epoch 5/15, ~04:20 left")."""
    elapsed, left = _elapsed_and_left(progress, now)
    parts = [f"{label(progress)}: epoch {progress['epoch']}/{progress['epochs']}"]
    if not short:
        if progress["stage"] == "validating":
            parts.append("validating")
        elif progress.get("steps"):
            parts.append(f"step {progress.get('step', 0)}/{progress['steps']}")
        parts.append(f"{clock(elapsed)} elapsed")
    if left is not None:
        parts.append(f"~{clock(left)} left")
    return ", ".join(parts)


def describe_epochs_done(progress: dict, now: float) -> str:
    """The run's epochs done, for a log: "cnn_seed43: 5/15 epochs done, 02:10 elapsed,
    ~04:20 left" (no time left once ``fit`` ended)."""
    elapsed, left = _elapsed_and_left(progress, now)
    text = (f"{label(progress)}: {progress.get('completed', 0)}/{progress['epochs']} epochs "
            f"done, {clock(elapsed)} elapsed")
    if left is not None and progress["stage"] != "ended":
        text += f", ~{clock(left)} left"
    return text


def epochs_done_in_fit(progress: dict) -> int:
    """Epochs this ``fit`` finished (not those before it: a resumed run, an earlier phase)."""
    return progress.get("completed", 0) - progress.get("initial", 0)
