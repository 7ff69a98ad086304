"""The work folder of one training run (``work/NAME/``): where it trains and resumes until it
finishes. ``TrainingRun`` decides; this keeps the files consistent across kills (see
docs/run-folder.md).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py

from helpers import files, histories
from helpers.runfolder import RunFolder

# The key of the last (or only) training phase, whose ``phase`` is None.
LAST_PHASE = "last"


def _readable_weights(path: Path) -> bool:
    """Whether a ``.weights.h5`` file opens (a kill mid-write leaves one that does not)."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _readable_json(path: Path) -> bool:
    """Whether ``path`` holds JSON (Keras writes its backup's metadata in place)."""
    try:
        files.read_json(path)
        return True
    except (OSError, ValueError):
        return False


class WorkFolder:
    """``work/NAME/`` of the run folder ``run``: checkpoints, history, phases, fingerprints,
    record and backups of a run in progress."""

    def __init__(self, run: RunFolder, name: str):
        self.run, self.name = run, name
        self.path = run.work(name)

    # -- its files ---------------------------------------------------------------------------
    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    @property
    def record(self) -> Path:
        return self.path / "record.json"

    @property
    def phases(self) -> Path:
        return self.path / "phases.json"

    @property
    def fingerprints_file(self) -> Path:
        return self.path / "fingerprints.json"

    def checkpoint(self, phase: str | None) -> Path:
        return self.path / (f"{self.name}_{phase}.keras" if phase else f"{self.name}.keras")

    def backup_dir(self, phase: str | None) -> Path:
        return self.path / (f"backup_{phase}" if phase else "backup")

    def exists(self) -> bool:
        return self.path.exists()

    def trained_anything(self) -> bool:
        return (self.history_csv.exists() or self.phases.exists()
                or any(self.path.glob("backup*")))

    def read_record(self) -> dict | None:
        return files.read_json(self.record, None)

    def fingerprints(self) -> dict[str, str]:
        return files.read_json(self.fingerprints_file, {})

    def finished_phases(self) -> dict[str, int]:
        return files.read_json(self.phases, {})

    def epochs_done(self) -> int:
        """Epochs in the history so far (every phase)."""
        history = histories.read_history(self.history_csv)
        return 0 if history is None else len(history)

    def end_phase(self, phase: str) -> int:
        """Record that training phase ``phase`` finished; returns the epochs done so far."""
        finished = {**self.finished_phases(), phase: self.epochs_done()}
        files.write_json(finished, self.phases)
        return finished[phase]

    # -- what a run that cannot go on does with it ---------------------------------------------
    def set_aside(self, why: str) -> None:
        """Move an unfinished run that cannot resume to ``work/NAME.set-aside-TIME``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.name}.set-aside-{stamp}")
        number = 1
        while aside.exists():  # two set aside within a second
            number += 1
            aside = self.path.with_name(f"{self.name}.set-aside-{stamp}-{number}")
        os.replace(self.path, aside)
        print(f"The unfinished run {self.name!r} in {self.run.root} started with {why}: "
              f"resuming it would mix two runs. It is set aside in {aside} (to resume it, set "
              f"that back and move it back to {self.path}); this run starts afresh.")

    def resume_problem(self, split_sha256: str, seed: int, deterministic: bool,
                       parameters: dict) -> str | None:
        """Why the unfinished run cannot resume under these settings, or None."""
        record = self.read_record()
        if record is None:
            return None  # killed before its record was written: nothing trained yet
        if record["split_sha256"] != split_sha256:
            return f"another split than {self.run.split_csv} holds now"
        if (record["seed"], record["deterministic"]) != (seed, deterministic):
            return (f"seed {record['seed']} (deterministic {record['deterministic']}), "
                    f"not {seed} ({deterministic})")
        if record["parameters"] != parameters:
            changed = sorted(key for key in {*record["parameters"], *parameters}
                             if record["parameters"].get(key) != parameters.get(key))
            return f"other parameters ({', '.join(changed)})"
        return None

    def move_diverged(self) -> Path:
        """Move the work folder to ``work/NAME.diverged``; returns where it then is."""
        aside = self.path.with_name(f"{self.name}.diverged")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            if self.path.exists():
                os.replace(self.path, aside)
        except OSError:  # a file still open (Windows): the next run must not resume it
            print(f"Could not move {self.path} aside: delete it before running {self.name} "
                  "again.")
            return self.path
        return aside

    # -- consistency across kills ----------------------------------------------------------------
    def check_backup(self, phase: str | None) -> None:
        """A backup damaged by a kill mid-write: resume from the one before when Keras kept
        it, else start this phase again; say which."""
        backup_dir = self.backup_dir(phase)
        latest = backup_dir / "latest.weights.h5"
        if not latest.exists() or (_readable_weights(latest) and _readable_json(
                backup_dir / "training_metadata.json")):
            return
        previous = latest.with_name(latest.name + ".bkp")
        previous_metadata = backup_dir / "training_metadata.json.bkp"
        if (previous.exists() and _readable_weights(previous)
                and _readable_json(previous_metadata)):
            print(f"The backup of {self.name} in {backup_dir} is damaged (a kill while it was "
                  "written): resuming from the one before it.")
            files.copy_atomically(previous, latest)
            files.copy_atomically(previous_metadata, backup_dir / "training_metadata.json")
            return
        print(f"The backup of {self.name} in {backup_dir} is damaged (a kill while it was "
              "written) and there is no earlier one: this phase starts again from its "
              "first epoch.")
        shutil.rmtree(backup_dir)

    def drop_unbacked_history(self, phase: str | None, initial_epoch: int) -> None:
        """Remove history rows of epochs the backup does not hold (a kill between the row
        and the backup), which the resumed ``fit`` trains again."""
        history = histories.read_history(self.history_csv)
        if history is None:
            return
        metadata = self.backup_dir(phase) / "training_metadata.json"
        resume_at = files.read_json(metadata, {"epoch": initial_epoch})["epoch"]
        if (history["epoch"] >= resume_at).any():
            files.write_text_atomically(
                history[history["epoch"] < resume_at].to_csv(index=False), self.history_csv)

    def discard_phase(self, phase: str | None) -> None:
        """Forget what the work folder holds of ``phase`` and of every phase after it."""
        closed = self.finished_phases()
        names = list(closed)
        earlier = names[:names.index(phase)] if phase in closed else names
        started = [None if key == LAST_PHASE else key for key in self.fingerprints()]
        for name in {*names, *started, phase, None} - set(earlier):  # this phase and later
            self.checkpoint(name).unlink(missing_ok=True)
            shutil.rmtree(self.backup_dir(name), ignore_errors=True)
        start = closed[earlier[-1]] if earlier else 0
        history = histories.read_history(self.history_csv)
        if history is not None:
            files.write_text_atomically(history[history["epoch"] < start].to_csv(index=False),
                                        self.history_csv)
        files.write_json({name: value for name, value in self.fingerprints().items()
                          if name in earlier}, self.fingerprints_file)
        files.write_json({name: closed[name] for name in earlier}, self.phases)

    def start_from_finished(self, kept: list[str], fingerprints: dict[str, str]) -> None:
        """Fill the work folder with the phases ``kept`` of the run that finished before, so
        the phase about to train continues from them."""
        boundaries = self.run.finished_phases(self.name)
        kept_boundaries = {phase: boundaries[phase] for phase in kept}
        for phase in kept:
            files.copy_atomically(self.run.model(self.name, phase), self.checkpoint(phase))
        history = self.run.read_history(self.name)
        files.write_text_atomically(
            history[history["epoch"] < max(kept_boundaries.values())].to_csv(index=False),
            self.history_csv)
        files.write_json({phase: fingerprints[phase] for phase in kept}, self.fingerprints_file)
        files.write_json(kept_boundaries, self.phases)  # last: the phases now count as done
        print(f"{self.name}: {', '.join(kept)} kept from the run that finished before; "
              "training goes on from there.")

    def remove(self) -> None:
        """Remove the work folder, renamed first so a kill cannot leave half of it to resume."""
        leaving = self.path.with_name(f".{self.name}.finished")
        shutil.rmtree(leaving, ignore_errors=True)
        os.replace(self.path, leaving)
        shutil.rmtree(leaving)
