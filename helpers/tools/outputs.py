"""Where a command line may write (``--out`` and the like): the output-path policy of every
command, checked before any work. Its outputs never land on an input, a model or its sidecar,
a file the study reads, or among a run folder's own files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from helpers.files import OutputError, file_kind, output_target
from helpers.runfolder import owning_run_folder


def check_writable(target: Path, option: str) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written: under a
    file, read-only, no permission (a probe file is made and removed there)."""
    folder = target.parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {target}: {folder} is a {file_kind(folder)}, not a folder, "
                          "so nothing can be written under it.")
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"{option} {target}: cannot write in {folder} "
                          f"({error.strerror or error}).") from None


# A split made with ``data split`` outside any run folder, which training may read: an
# output of another command that would replace one is refused.
_STUDY_FILES = {"split.csv", "split.json", "split_files.csv"}


def check_output_path(path: str | os.PathLike, suffix: str,
                      inputs: list[str | os.PathLike] = (),
                      input_folders: list[str | os.PathLike] = (),
                      option: str = "--out") -> Path:
    """``path`` as an output file of a command line, checked before any work: OutputError
    when it is not a regular file or a new name (``output_target``), cannot be written, is
    one of ``inputs`` or inside ``input_folders``, an existing file of another kind than the
    ``suffix`` written (an image, a notebook), a model (``.keras``) or a model's sidecar (a
    ``.json`` beside a ``.keras``), or lies among a run folder's own files (its data, models,
    histories, records, metrics, predictions, figures, notebooks, logs). ``option`` names
    the option in the messages."""
    path = Path(path)
    target = output_target(path)
    resolved = target.resolve()
    if any(resolved == Path(item).resolve() for item in inputs) or any(
            resolved.is_relative_to(Path(folder).resolve()) for folder in input_folders):
        raise OutputError(f"{option} {path} is one of the inputs, or inside an input folder: "
                          "it would change what is read. Write it elsewhere.")
    if target.exists() and target.suffix.lower() != suffix:
        raise OutputError(f"{option} {path} exists and is not a {suffix} file: writing there "
                          f"would replace it. Give a new name, or a {suffix} file to replace.")
    if target.suffix == ".keras" or (target.suffix == ".json"
                                     and target.with_suffix(".keras").exists()):
        raise OutputError(f"{option} {path} would replace a model or the sidecar a model needs "
                          "to load: give another file name.")
    if target.name in _STUDY_FILES and target.exists():
        raise OutputError(f"{option} {path} would replace a file the study reads: give "
                          "another file name.")
    run = owning_run_folder(resolved)
    if run is not None:
        raise OutputError(f"{option} {path} lies among the files of the run folder {run}, "
                          "which the study writes and reads: write it outside "
                          f"{run}'s folders (e.g. {run / 'exports' / target.name}).")
    check_writable(target, option)
    return path
