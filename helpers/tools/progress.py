"""The headless study's view of a kernel's live progress (``helpers.liveprogress`` writes it,
``callbacks.LiveProgress`` in the kernel): read it, judge whether it is current, and say
it in a line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from helpers.liveprogress import STAGES

# Progress not rewritten for this long is no longer shown: its fit stopped without saying so
# (an error caught by the notebook). A step or a validation batch takes far less.
SILENCE_SECONDS = 600.0

def clock(seconds: float) -> str:
    """Seconds as MM:SS, or H:MM:SS from an hour on (as tqdm shows elapsed time)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


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
