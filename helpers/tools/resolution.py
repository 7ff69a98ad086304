"""The command line ``python -m helpers.resolution MODEL [MODEL ...] DATA_DIR [--run RUN_DIR]
[--out FILE.json]``: scores models on full-resolution images and on half-resolution copies
of them (``helpers.half_resolution``).

DATA_DIR holds full-resolution images in class folders. With ``--run``, each image is also
looked up in that run folder's split (``split_of_images``), and the figures are given for
the images the models never trained on as well.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from helpers import files
from helpers.errors import DataError
from helpers.runfolder import RunFolder, owning_run_folder
from helpers.tools import command, outputs


def check_models_of_run(model_paths: list[str | os.PathLike], run: RunFolder) -> None:
    """DataError when a model lies in another run folder than ``run``: its images "not
    trained on" would be read from a split it was not trained with."""
    for path in model_paths:
        owner = owning_run_folder(Path(path).resolve())
        if owner is not None and owner != run.root.resolve():
            raise DataError(f"{path} belongs to the run folder {owner}, not to {run.root}: "
                            "give --run the folder the models were trained in.")


def main(argv: list[str] | None = None) -> int:
    """The command line (module doc); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.resolution",
        description="Score models on full-resolution images and on half-resolution copies "
                    "of them (Pillow LANCZOS, JPEG quality 90): accuracy on each, agreement.")
    parser.add_argument("paths", nargs="+", metavar="MODEL ... DATA_DIR",
                        help="one or more saved models (.keras), then the image folder")
    parser.add_argument("--run", help="a run folder: also report the images its models "
                                      "never trained on")
    parser.add_argument("--out", help="write the table as JSON to this file")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one MODEL and a DATA_DIR")
    *model_paths, data_dir = args.paths
    return command.exit_status(lambda: _check(model_paths, data_dir, args))


def _check(model_paths: list[str], data_dir: str, args: argparse.Namespace) -> None:
    from helpers import half_resolution, inference  # TensorFlow: once the arguments are accepted

    if args.out:
        outputs.check_output_path(args.out, ".json", [*model_paths], input_folders=[data_dir])
    run = RunFolder(Path(args.run)) if args.run else None
    if run is not None:
        run.load_split()  # a folder without a split fails here, before any work
        check_models_of_run(model_paths, run)
    models = [inference.load_model(path) for path in model_paths]
    table = half_resolution.resolution_check(models, half_resolution.labelled_folder(data_dir, run))
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    if args.out:
        files.write_text_atomically(table.to_json(orient="records", indent=1) + "\n", args.out)
