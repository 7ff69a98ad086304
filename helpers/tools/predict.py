"""The command line ``python -m helpers.predict MODEL IMAGE_OR_DIR... [--out predictions.csv]``:
classify image files with a saved model, top-3 classes and probabilities per image.

Folders are searched recursively, hidden files included. Any JPEG, PNG or BMP that
TensorFlow decodes works (grayscale and RGBA are converted to RGB). Files that are not usable
images (not decodable, not a regular file, a name that is not UTF-8) stay in the output with
the reason in the ``problem`` column, so every input gets a row; none is opened unless it is
a regular file.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from helpers import audit, files
from helpers.errors import DataError
from helpers.tools import command, outputs

TOP_K = 3


def input_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The files named, and every file under the folders named (sorted, hidden ones too,
    linked folders followed). Each gets a row of the predictions, usable or not."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += files.list_files(item)
        elif item.exists() or item.is_symlink():  # a file, or a link to nothing: a row
            found.append(item)
        else:
            raise DataError(f"No such file or folder: {files.display_name(item)}")
    return found


def predict_files(loaded, paths: list[Path],
                  tta: bool = False) -> pd.DataFrame:
    """One row per file: path, problem ("" when usable), then top-k class and probability;
    ``loaded``: an ``inference.LoadedModel``."""
    from helpers import inference

    with ThreadPoolExecutor() as pool:
        problems = list(pool.map(lambda path: audit.inspect_file(path)["problem"], paths))
    usable = [path for path, problem in zip(paths, problems, strict=True) if not problem]
    probabilities = (inference.predict_probabilities(loaded, usable, tta=tta) if usable
                     else np.zeros((0, len(loaded.class_names))))
    top = np.argsort(-probabilities, axis=1)[:, :TOP_K]
    by_path = {path: (top[row], probabilities[row]) for row, path in enumerate(usable)}
    rows = []
    for path, problem in zip(paths, problems, strict=True):
        row = {"path": files.display_name(path), "problem": problem}
        if path in by_path:
            classes, scores = by_path[path]
            for rank, index in enumerate(classes, start=1):
                row[f"class_{rank}"] = loaded.class_names[index]
                row[f"probability_{rank}"] = round(float(scores[index]), 6)
        rows.append(row)
    columns = ["path", "problem"] + [f"{kind}_{rank}" for rank in range(1, TOP_K + 1)
                                     for kind in ("class", "probability")]
    return pd.DataFrame(rows, columns=columns)


# What a spreadsheet would run as a formula at the start of a cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell a spreadsheet would read as a formula (a file named
    "=HYPERLINK(...).jpg") prefixed with an apostrophe, as OWASP advises for CSV exports."""
    def neutral(value: object) -> object:
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) \
            else value
    return frame.apply(lambda column: column.map(neutral)
                       if pd.api.types.is_string_dtype(column) or column.dtype == object
                       else column)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file saved by a training notebook"
                        " (NAME.json beside)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--out", help="write the predictions as CSV here")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips and 90-degree rotations")
    args = parser.parse_args(argv)
    return command.exit_status(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    from helpers import inference  # TensorFlow: only once the arguments are accepted

    paths = input_files(args.inputs)
    if args.out:
        outputs.check_output_path(args.out, ".csv",
                                  [args.model, inference.sidecar_path(args.model), *paths],
                                  input_folders=[item for item in args.inputs
                                                 if Path(item).is_dir()])
    loaded = inference.load_model(args.model)
    if not paths:
        raise DataError("No files found in the inputs given.")
    predictions = predict_files(loaded, paths, tta=args.tta)
    for row in predictions.itertuples():
        if row.problem:
            print(f"{files.terminal_text(row.path)}: skipped "
                  f"({files.terminal_text(row.problem)})")
        else:
            print(f"{files.terminal_text(row.path)}: {row.class_1} {row.probability_1:.3f}  "
                  f"({row.class_2} {row.probability_2:.3f}, {row.class_3} "
                  f"{row.probability_3:.3f})")
    if args.out:
        # Every text cell quoted: a carriage return in a name stays inside its cell.
        files.write_text_atomically(spreadsheet_safe(predictions).to_csv(
            index=False, quoting=csv.QUOTE_NONNUMERIC), args.out)
        print(f"Wrote {files.display_name(args.out)}")
    n_skipped = int((predictions["problem"] != "").sum())
    print(f"{len(predictions) - n_skipped} image(s) classified, {n_skipped} skipped")
    if n_skipped == len(predictions):
        print("error: no input could be classified", file=sys.stderr)
        return 1
    return 0
