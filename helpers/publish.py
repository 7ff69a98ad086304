"""Publishing a finished run into the run folder, and telling whether one finished.

Validation metrics go first and come back last, so a kill midway never leaves a half-copied
run that counts as finished.
"""

from __future__ import annotations

from collections.abc import Callable

from helpers import files, inference
from helpers.runfolder import RunFolder
from helpers.workfolder import LAST_PHASE, WorkFolder


def publish(run: RunFolder, name: str, write: Callable[[], dict]) -> dict:
    """Replace the finished run NAME: its validation metrics are removed, ``write`` writes
    every other file and returns the new metrics, which are written last. Returns them."""
    run.validation_metrics(name).unlink(missing_ok=True)
    result = write()
    files.write_json(result, run.validation_metrics(name))
    return result


def missing_files(run: RunFolder, name: str) -> list[str]:
    """The files of the finished run NAME that are gone: such a run trains again."""
    needed = [run.model(name), inference.sidecar_path(run.model(name)), run.history(name),
              run.run_record(name), run.validation_metrics(name)]
    try:
        needed += [run.model(name, phase) for phase in run.finished_phases(name)]
    except ValueError:  # a damaged phases file
        needed.append(run.phases(name))
    return [str(path.relative_to(run.root)) for path in needed if not path.is_file()]


def say_finished_before(run: RunFolder, name: str) -> None:
    """Say, as a training run starts, what becomes of the run NAME that finished before."""
    missing = missing_files(run, name)
    print(f"{name} finished before in {run.root}, but {', '.join(missing)} is missing: it "
          "trains again." if missing else
          f"{name} finished before in {run.root}: kept if this is the same recipe, else "
          "trained again (its results stay in place until the new run finishes).")


def finished_fingerprints(run: RunFolder, name: str) -> dict[str, str]:
    """Each phase's recipe of the run NAME that finished before ({} if none did)."""
    if missing_files(run, name):
        return {}
    record = run.read_run_record(name)
    if "fingerprints" in record:
        return record["fingerprints"]
    # Records before per-phase fingerprints hold one: a one-phase run's, which stays kept.
    if record.get("fingerprint") and not run.finished_phases(name):
        return {LAST_PHASE: record["fingerprint"]}
    return {}


def publish_work(work: WorkFolder, result: dict, label: str, image_settings: dict,
                 fingerprints: dict[str, str]) -> None:
    """Publish the training run in ``work``, then remove the work folder. A kill midway
    leaves the work folder whole: the notebook run again finishes the copy."""
    run, name = work.run, work.name

    def write() -> dict:
        # An earlier run's phases, which this one may not have (not a glob: models/cnn_*
        # would also match the runs cnn_constant, cnn_schedule...).
        for phase in run.finished_phases(name):
            if phase not in work.finished_phases():
                run.model(name, phase).unlink(missing_ok=True)
        run.phases(name).unlink(missing_ok=True)
        for phase in work.finished_phases():
            files.copy_atomically(work.checkpoint(phase), run.model(name, phase))
        files.copy_atomically(work.checkpoint(None), run.model(name))
        inference.write_sidecar(run.model(name), label=label, **image_settings)
        files.copy_atomically(work.history_csv, run.history(name))
        files.write_json({**work.read_record(), "fingerprints": fingerprints},
                         run.run_record(name))
        if work.phases.exists():
            files.copy_atomically(work.phases, run.phases(name))
        return result

    publish(run, name, write)
    work.remove()


def keep_best_run(run: RunFolder, candidates: list[str], name: str,
                  by: tuple[str, ...] = ("accuracy", "macro_f1")) -> str:
    """Publish as run NAME the candidate with the best validation metrics ``by`` (compared in
    order); its record lists every candidate's. Returns the name of the run kept."""
    if not candidates:
        raise ValueError("keep_best_run needs at least one finished run")
    scores = {candidate: files.read_json(run.validation_metrics(candidate))
              for candidate in candidates}
    best = max(candidates, key=lambda candidate: tuple(scores[candidate][metric]
                                                       for metric in by))

    def write() -> dict:
        for source, destination in [(run.model(best), run.model(name)),
                                    (inference.sidecar_path(run.model(best)),
                                     inference.sidecar_path(run.model(name))),
                                    (run.history(best), run.history(name))]:
            files.copy_atomically(source, destination)
        run.phases(name).unlink(missing_ok=True)
        if run.phases(best).exists():
            files.copy_atomically(run.phases(best), run.phases(name))
        files.write_json({**run.read_run_record(best), "kept_from": best,
                          "candidates": scores}, run.run_record(name))
        return scores[best]

    publish(run, name, write)
    return best
