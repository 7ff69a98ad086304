"""The run folder: the one place that knows where a study's files live.

The notebooks pass results to each other only through this folder, so its layout is their
contract (docs/run-folder.md lists every file). Every path is asked of a ``RunFolder``;
nothing else builds one by hand.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from helpers import files, integrity, project, split
from helpers.errors import DataError

# The file that marks a run folder (written by notebook 1, the study and training runs).
MARKER = ".blood-cell-study-run"


# What a run folder holds, under its root: the study writes and reads these, so no command's
# output, and no synthetic draw but the run's own, may land among them.
RESULT_PARTS = ("data", "synthetic", "models", "history", "work", "config", "metrics",
                "predictions", "figures", "notebooks", "logs", "superseded", "locks",
                "report.html", ".lock", MARKER)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a run folder: marked by the study, or holding its lock, or (of an
    earlier version, before the marker) trained models and their records."""
    return ((folder / MARKER).exists() or (folder / ".lock").exists()
            or ((folder / "models").is_dir() and (folder / "config").is_dir()))


def owning_run_folder(path: str | os.PathLike) -> Path | None:
    """The run folder among whose own files (RESULT_PARTS) ``path`` lies, or None."""
    path = Path(path).resolve()
    for folder in path.parents:
        relative = path.relative_to(folder)
        if relative.parts[0] in RESULT_PARTS and is_run_folder(folder):
            return folder
    return None


def mark(root: str | os.PathLike) -> None:
    """Mark ``root`` as a run folder, creating it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER).exists():  # written once: a refused notebook changes nothing
        (root / MARKER).touch()


def check_root(root: str | os.PathLike) -> None:
    """DataError when a run folder ``root`` is a file, or lies under one."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.is_dir():
            return
        if path.exists():
            where = "is a file" if path == root else f"lies under {path}, which is a file"
            raise DataError(f"The run folder {root} {where}: give a folder.")


def check_placement(root: str | os.PathLike,
                    data_root: str | os.PathLike | None = None) -> None:
    """DataError when a run folder ``root`` lies inside another run folder, or inside (or
    is) the data folder ``data_root``: its figures and models would be read as images of a
    class on the next split. (The data may lie inside the run folder: synthetic data does.)"""
    root = Path(root).resolve()
    if root == project.ROOT:
        raise DataError(f"The run folder {root} is the repository itself: give a folder in it "
                        "(runs/latest) or elsewhere.")
    for folder in root.parents:
        # The study's mark alone: a ".lock" of another tool (pytest's temporary folders have
        # one) says nothing of a run folder.
        if (folder / MARKER).exists():
            raise DataError(f"The run folder {root} lies inside the run folder {folder}: give "
                            "a folder outside it, so the two never mix their results (if "
                            f"{folder} holds no results, remove its {MARKER} file).")
    if root.is_dir() and not (root / MARKER).exists():  # a new run folder around old ones
        for inner in _folders_within(root, depth=2):
            if (inner / MARKER).exists():
                raise DataError(f"The run folder {root} holds the run folder {inner}: give "
                                "a folder that holds none, so the two never mix their results.")
    if data_root is not None:
        data = Path(data_root).resolve()
        if root == data or data in root.parents:
            raise DataError(f"The run folder {root} lies inside the data folder {data}: its "
                            "figures and models would be read as images on the next split. "
                            "Give a run folder outside the data folder.")


def _folders_within(folder: Path, depth: int) -> list[Path]:
    """The folders under ``folder`` down to ``depth`` levels (not through links)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                found.append(Path(entry.path))
                if depth > 1:
                    found += _folders_within(Path(entry.path), depth - 1)
    return found


@dataclass(frozen=True)
class RunFolder:
    """Paths and small readers of one run folder (``root``)."""

    root: Path

    def __post_init__(self) -> None:
        if not str(self.root).strip():  # Path("") is the current folder: a repository, a home
            raise DataError("The run folder is an empty name: give a folder (runs/latest).")
        try:
            object.__setattr__(self, "root", Path(self.root).expanduser())
        except RuntimeError as error:  # ~name of no user
            raise DataError(f"The run folder {self.root}: {error}.") from None

    # -- data ------------------------------------------------------------------------------
    @property
    def split_csv(self) -> Path:
        return self.root / "data" / "split.csv"

    @property
    def split_metadata(self) -> Path:
        """``split.json`` beside the split: seed, counts and the data root."""
        return self.split_csv.with_suffix(".json")

    @property
    def synthetic_data(self) -> Path:
        """Where notebook 1 draws the synthetic dataset (``DATA_SOURCE = "synthetic"``)."""
        return self.root / "synthetic"

    @property
    def audit_json(self) -> Path:
        return self.root / "data" / "audit.json"

    @property
    def audit_index(self) -> Path:
        return self.root / "data" / "audit_index.csv"

    @property
    def split_files(self) -> Path:
        """``split_files.csv``: size and modification time of each image at the split."""
        return integrity.status_path(self.split_csv)

    def load_split(self, check_images: bool = True) -> tuple[pd.DataFrame, Path]:
        """The split (one row per image) and the data root its paths are relative to.

        ``check_images``: the images there are the ones the split recorded (``integrity``),
        or StaleSplitError names those missing, changed or added. Raises DataError when
        notebook 1 has not made the split yet, or its images cannot be found.
        """
        if not self.split_csv.exists():
            raise DataError(f"No split in {self.root}: run notebook 01 or `python -m helpers.data "
                            f"prepare --run-dir {self.root}` first.")
        metadata = integrity.read_metadata(self.split_csv)
        split_frame = split.read_split(self.split_csv)
        data_root = integrity.locate_data_root(metadata, self.split_csv)
        if check_images:
            integrity.check_images(split_frame, metadata, data_root, self.split_csv)
        return split_frame, data_root

    def read_audit(self) -> dict:
        return files.read_json(self.audit_json)

    # -- models ----------------------------------------------------------------------------
    def model(self, name: str, phase: str | None = None) -> Path:
        """``models/NAME.keras``, or the best model of training phase ``phase``."""
        return self.root / "models" / (f"{name}_{phase}.keras" if phase else f"{name}.keras")

    # -- training --------------------------------------------------------------------------
    def history(self, name: str) -> Path:
        return self.root / "history" / f"{name}.csv"

    def read_history(self, name: str) -> pd.DataFrame:
        """The per-epoch history of run NAME (every phase)."""
        return pd.read_csv(self.history(name))

    def history_names(self) -> list[str]:
        """The names of every run with a history, sorted."""
        return sorted(path.stem for path in (self.root / "history").glob("*.csv"))

    def phases(self, name: str) -> Path:
        return self.root / "history" / f"{name}_phases.json"

    def finished_phases(self, name: str) -> dict[str, int]:
        """Finished training phases of run NAME and the epoch count at each one's end."""
        return files.read_json(self.phases(name), {})

    def phase_boundary(self, name: str) -> int | None:
        """Epochs of the first of two phases (phase 2 unfreezes the base), or None."""
        finished = list(self.finished_phases(name).values())
        return finished[0] if finished else None

    def work(self, name: str) -> Path:
        """Where run NAME trains until it finishes (``training.TrainingRun``)."""
        return self.root / "work" / name

    def training_lock(self, name: str) -> Path:
        """The folder of run NAME's own lock (``locks/NAME/.lock``, ``helpers.runlock``),
        held while it trains, in a kernel or on a cluster's worker."""
        return self.root / "locks" / name

    def run_record(self, name: str) -> Path:
        return self.root / "config" / f"{name}.json"

    def read_run_record(self, name: str) -> dict:
        """What run NAME was trained with: parameters, data settings, split hash, versions."""
        return files.read_json(self.run_record(name))

    # -- results ---------------------------------------------------------------------------
    def validation_metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}_validation.json"

    def test_metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}_test.json"

    @property
    def comparison_table(self) -> Path:
        return self.root / "metrics" / "comparison.csv"

    @property
    def resolution_table(self) -> Path:
        """Accuracy and agreement at the source resolution and at half of it (notebook 5)."""
        return self.root / "metrics" / "resolution.csv"

    @property
    def conclusion(self) -> Path:
        return self.root / "metrics" / "conclusion.md"

    def predictions(self, name: str, subset: str, tta: bool = False) -> Path:
        return self.root / "predictions" / f"{name}_{subset}{'_tta' if tta else ''}.csv"

    def run_files(self, name: str) -> list[Path]:
        """Every file of the run folder that belongs to run NAME (those that exist), its
        metrics first: a run half moved away never counts as finished."""
        paths = [self.validation_metrics(name), self.test_metrics(name),
                 self.model(name), self.model(name).with_suffix(".json"),
                 *(self.model(name, phase) for phase in self.finished_phases(name)),
                 self.history(name), self.phases(name), self.run_record(name),
                 *(self.predictions(name, subset, tta) for subset in split.SPLIT_NAMES
                   for tta in (False, True))]
        return [path for path in paths if path.exists()]

    def set_aside(self, paths: list[Path], why: str) -> list[Path]:
        """Move ``paths`` (those that exist) into ``superseded/TIME/``, keeping their place
        under the run folder, and say so in one line: results that no longer belong to
        this run (TTA turned off, fewer seeds) are never left beside its new ones, nor
        deleted. Returns where they went."""
        present = [Path(path) for path in paths if Path(path).exists()]
        if not present:
            return []
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        moved = []
        for path in present:
            target = self.root / "superseded" / stamp / path.relative_to(self.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved.append(target)
        print(f"Set aside ({why}): {', '.join(path.name for path in present)} -> "
              f"superseded/{stamp}/")
        return moved

    def set_aside_runs(self, names: list[str], why: str) -> list[Path]:
        """``set_aside`` every file of the runs ``names``."""
        return self.set_aside([path for name in names for path in self.run_files(name)], why)

    def figure(self, name: str) -> Path:
        return self.root / "figures" / f"{name}.png"

    @property
    def notebooks(self) -> Path:
        """Where a headless study puts the executed notebooks."""
        return self.root / "notebooks"

    def log(self, notebook: str) -> Path:
        """What the kernel running ``notebook`` headless wrote to stderr."""
        return self.root / "logs" / f"{notebook}.log"

    @property
    def report(self) -> Path:
        """The executed notebooks of a headless study as one HTML page."""
        return self.root / "report.html"
