"""A model's seeds as one model of the run folder.

Notebook 3 builds the average of the seeds' probabilities as one Keras model; this saves it
like every trained model, records its members and tells when one was trained again since.
"""

from __future__ import annotations

import json

import keras

from helpers import files, fingerprints, inference, metrics, publish, scoring
from helpers.errors import DataError
from helpers.runfolder import RunFolder


def load_members(run: RunFolder, names: list[str]) -> list[keras.Model]:
    """The kept models of the runs ``names``, each renamed after its run (a Keras model's
    layers need distinct names)."""
    if len(names) < 2:
        raise ValueError(f"An ensemble needs at least two members, got {names}")
    members = []
    for name in names:
        model = inference.load_model(run.model(name)).model
        model.name = name
        members.append(model)
    return members


def member_settings(run: RunFolder, names: list[str]) -> dict:
    """The image settings the members share; ValueError when they differ."""
    settings = {}
    for name in names:
        info = inference.read_sidecar(inference.sidecar_path(run.model(name)))
        settings[name] = {key: info[key] for key in ("image_size", "resize_method",
                                                     "crop_fraction")}
    distinct = {json.dumps(value, sort_keys=True) for value in settings.values()}
    if len(distinct) > 1:
        raise ValueError(f"The members prepare their images differently, so no one input "
                         f"serves them all: {settings}")
    return settings[names[0]]


def member_fingerprints(run: RunFolder, names: list[str]) -> dict[str, str]:
    """The sha256 of each member's kept model file."""
    return {name: files.file_sha256(run.model(name)) for name in names}


def save(run: RunFolder, name: str, members: list[str], model: keras.Model,
         label: str) -> dict:
    """Save ``model``, built from the runs ``members``, as run NAME; returns its validation
    metrics, written last so a half-saved ensemble never counts as finished.

    The same ensemble already finished (same members, configuration, label and file) is kept
    and not scored again.
    """
    settings = member_settings(run, members)
    record = {"name": name, "label": label, "members": member_fingerprints(run, members),
              "configuration_sha256": fingerprints.recipe_fingerprint(model),
              "inference_cost": f"{len(members)} models per image"}
    finished = _finished_metrics(run, name, record, settings)
    if finished is not None:
        print(f"{run.model(name).name} is already this ensemble of the same member models, "
              "finished: kept, not scored again.")
        return finished
    def write() -> dict:
        with files.atomic_output(run.model(name), suffix=".keras") as temporary:
            model.save(temporary)
        inference.write_sidecar(run.model(name), label=label, **settings)
        record["model_sha256"] = files.file_sha256(run.model(name))
        files.write_json(record, run.run_record(name))
        loaded = inference.load_model(run.model(name))
        frame = scoring.predict_split(run, name, "validation", loaded)
        y_true = scoring.true_indices(frame, loaded.class_names)
        predicted = scoring.probabilities_of(frame, loaded.class_names).argmax(axis=1)
        return {"n_images": int(len(y_true)), "accuracy": metrics.accuracy(y_true, predicted),
                "macro_f1": metrics.macro_f1(y_true, predicted), "members": members}

    return publish.publish(run, name, write)


def _finished_metrics(run: RunFolder, name: str, record: dict, settings: dict) -> dict | None:
    """The validation metrics of the finished ensemble NAME when its record, sidecar and
    model file match; None otherwise."""
    paths = (run.model(name), inference.sidecar_path(run.model(name)), run.run_record(name),
             run.predictions(name, "validation"), run.validation_metrics(name))
    if not all(path.exists() for path in paths):
        return None
    try:
        recorded = files.read_json(run.run_record(name))
        result = files.read_json(run.validation_metrics(name))
        sidecar = inference.read_sidecar(inference.sidecar_path(run.model(name)))
    except (OSError, ValueError, DataError):
        return None
    model_sha256 = recorded.pop("model_sha256", None)
    if (recorded != record or sidecar.get("label") != record["label"]
            or any(sidecar.get(key) != value for key, value in settings.items())
            or model_sha256 != files.file_sha256(run.model(name))):
        return None
    return result


def members(run: RunFolder, name: str) -> list[str]:
    """The member runs of the ensemble NAME, checked to be the models it was built from.

    DataError when it is unfinished, its model file was replaced or a member trained again.
    """
    record_path = run.run_record(name)
    if not (run.model(name).exists() and record_path.exists()
            and run.validation_metrics(name).exists()):
        raise DataError(f"No finished ensemble {name!r} in {run.root}: run notebook 03 "
                        "to its end.")
    record = files.read_json(record_path)
    # Recorded since the ensemble is kept across runs; absent from an earlier version's.
    if "model_sha256" in record and files.file_sha256(run.model(name)) != record["model_sha256"]:
        raise DataError(f"{run.model(name)} is not the ensemble notebook 03 saved (replaced "
                        "or damaged since): run notebook 03 again to rebuild it.")
    recorded = record["members"]
    changed = [member for member, sha256 in recorded.items()
               if not run.model(member).exists() or files.file_sha256(run.model(member)) != sha256]
    if changed:
        raise DataError(
            f"The ensemble {name!r} was built from other models than the current "
            f"{', '.join(changed)} (trained again since): run notebook 03 again to rebuild it.")
    return list(recorded)


def set_aside(run: RunFolder, name: str) -> bool:
    """Set the ensemble NAME's files aside (``RunFolder.set_aside_runs``: a profile trains one
    seed, so an earlier ensemble no longer belongs to the run); whether there was one."""
    return bool(run.set_aside_runs([name], "one seed in this profile: no ensemble"))
