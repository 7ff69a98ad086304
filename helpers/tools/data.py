"""The command line for the data steps (``python -m helpers.data``).

    python -m helpers.data audit DATA_DIR [--json FILE] [--index-csv FILE]
    python -m helpers.data split DATA_DIR --out FILE [--seed N] [--force]
    python -m helpers.data prepare [--source kaggle|medmnist|local|synthetic] [--data-dir DIR]
                                   --run-dir DIR [--seed N] [--force]
    python -m helpers.data synthetic OUT_DIR [--images-per-class N] [--image-size N] [--seed N]

DATA_DIR may be any folder that contains the class folders, however deeply (a download).
Errors in the data print one clear message and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from helpers import acquire, audit, files, integrity, locate, preparation, split, synthetic
from helpers.errors import DataError, StaleSplitError
from helpers.runfolder import RunFolder, owning_run_folder
from helpers.tools import command, outputs


def is_status_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a record ``integrity.write_status`` wrote (its header says so)."""
    try:
        with open(path, encoding="utf-8") as opened:
            return opened.readline().rstrip("\n") == ",".join(integrity.STATUS_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False



def _print_split(result: split.SplitResult, split_csv: Path) -> None:
    action = "Reused the saved split" if result.reused else "Wrote a new split"
    print(f"{action}: {split_csv} ({len(result.excluded)} file(s) left out, "
          f"listed with reasons in {split.metadata_path(split_csv)})")
    print(split.split_counts(result.split).to_string())


def run_audit(args: argparse.Namespace) -> None:
    for option, out, suffix in [("--json", args.json, ".json"),
                                ("--index-csv", args.index_csv, ".csv")]:
        if out:
            outputs.check_output_path(out, suffix, input_folders=[args.data_dir], option=option)
    if args.json and args.index_csv and files.output_target(args.json).resolve() == (
            files.output_target(args.index_csv).resolve()):
        raise DataError("--json and --index-csv name the same file: give two names.")
    result = audit.audit(locate.find_data_root(args.data_dir), progress=True)
    print(audit.format_summary(result.summary))
    if args.json:
        files.write_json(result.summary, args.json)
        print(f"\nJSON report: {files.display_name(args.json)}")
    if args.index_csv:
        files.write_text_atomically(audit.index_csv(result.index), args.index_csv)
        print(f"Per-file index: {files.display_name(args.index_csv)}")


def check_split_output(split_csv: Path) -> None:
    """A split is written as ``NAME.csv`` with ``NAME.json`` and ``NAME_files.csv`` beside it:
    refuse (before any work) another suffix, a folder, or existing files there that are not
    a split's."""
    if split_csv.suffix != ".csv" or split_csv.is_dir():
        raise DataError(f"--out {split_csv}: the split is a .csv file (its metadata goes to the "
                        ".json beside it).")
    metadata = split.metadata_path(split_csv)
    status = integrity.status_path(split_csv)
    for path in (split_csv, metadata, status):
        run = owning_run_folder(files.output_target(path).resolve())
        if run is not None:
            raise DataError(f"--out {split_csv} lies in the run folder {run}: its split is made "
                            f"by notebook 01 or `python -m helpers.data prepare --run-dir {run}`.")
        outputs.check_writable(files.output_target(path), "--out")
    if split_csv.exists():
        try:
            split.read_split(split_csv)
        except StaleSplitError as error:  # --force replaces a split, never another file
            raise DataError(f"{split_csv} exists and is not a split ({str(error).split('. ')[0]}"
                            "): it would be overwritten. Give --out another name.") from None
    if metadata.exists():
        try:
            is_split = "data_root" in json.loads(metadata.read_text())
        except (ValueError, UnicodeDecodeError):
            is_split = False
        if not is_split:
            raise DataError(f"{metadata} exists and is not a split's metadata: it would be "
                            "overwritten. Give --out another name.")
    if status.exists() and not is_status_file(status):
        raise DataError(f"{status} exists and is not a split's record of its files: it would "
                        "be overwritten. Give --out another name.")


def run_split(args: argparse.Namespace) -> None:
    split_csv = Path(args.out)
    check_split_output(split_csv)
    if files.output_target(split_csv).resolve().is_relative_to(Path(args.data_dir).resolve()):
        raise DataError(f"--out {split_csv} lies inside the data folder {args.data_dir}: it "
                        "would be audited as data. Write it elsewhere.")
    result = audit.audit(locate.find_data_root(args.data_dir), progress=True)
    _print_split(split.make_split(result, split_csv, seed=args.seed, force=args.force), split_csv)


def run_prepare(args: argparse.Namespace) -> None:
    result, split_result = preparation.prepare(args.source, args.run_dir, data_dir=args.data_dir,
                                   cache_dir=args.cache_dir, medmnist_size=args.medmnist_size,
                                   seed=args.seed, force=args.force,
                                   synthetic_images_per_class=args.images_per_class)
    run = RunFolder(args.run_dir)
    print(f"Data: {result.data_root}")
    print(audit.format_summary(result.summary))
    print(f"\nAudit: {run.audit_json} and {run.audit_index}\n")
    _print_split(split_result, run.split_csv)


def run_synthetic(args: argparse.Namespace) -> None:
    run = owning_run_folder(Path(args.out_dir).resolve() / "x")
    if run is not None:
        raise DataError(f"{args.out_dir} lies among the files of the run folder {run}: give "
                        "a folder of its own (notebook 01 draws a run's synthetic data).")
    synthetic.check_folder(args.out_dir)
    outputs.check_writable(Path(args.out_dir) / "x", "OUT_DIR")
    planted = synthetic.make_synthetic_dataset(
        args.out_dir, images_per_class=args.images_per_class, image_size=args.image_size,
        seed=args.seed, quirks=not args.no_quirks)
    print(f"Synthetic dataset in {args.out_dir}; planted quirks: {json.dumps(planted, indent=2)}")


def _count(text: str) -> int:
    """A whole number of 0 or more (seeds, counts), for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    audit_parser = commands.add_parser("audit", help="index and check every file")
    audit_parser.add_argument("data_dir")
    audit_parser.add_argument("--json", help="write the summary as JSON here")
    audit_parser.add_argument("--index-csv", help="write the per-file index as CSV here")
    audit_parser.set_defaults(run=run_audit)

    split_parser = commands.add_parser("split", help="write (or reuse) the split CSV")
    split_parser.add_argument("data_dir")
    split_parser.add_argument("--out", required=True, help="split CSV to write or reuse")
    split_parser.add_argument("--seed", type=_count, default=split.DEFAULT_SEED)
    split_parser.add_argument("--force", action="store_true",
                              help="make a new split even if a saved one exists")
    split_parser.set_defaults(run=run_split)

    prepare_parser = commands.add_parser(
        "prepare", help="acquire, audit and split into RUN_DIR/data")
    prepare_parser.add_argument("--source", choices=preparation.SOURCES, default="kaggle")
    prepare_parser.add_argument("--data-dir", help="the folder to use with --source local")
    prepare_parser.add_argument("--cache-dir", default="data",
                                help="where medmnist downloads go (default: data)")
    prepare_parser.add_argument("--medmnist-size", type=int, default=224,
                                choices=sorted(acquire.MEDMNIST_FILES))
    prepare_parser.add_argument("--run-dir", default="runs/latest")
    prepare_parser.add_argument("--seed", type=_count, default=split.DEFAULT_SEED)
    prepare_parser.add_argument("--force", action="store_true",
                                help="make a new split even if a saved one exists")
    prepare_parser.add_argument("--images-per-class", type=_count, default=12,
                                help="cells drawn per class with --source synthetic")
    prepare_parser.set_defaults(run=run_prepare)

    synthetic_parser = commands.add_parser("synthetic", help="write a synthetic test dataset")
    synthetic_parser.add_argument("out_dir")
    synthetic_parser.add_argument("--images-per-class", type=_count, default=12)
    synthetic_parser.add_argument("--image-size", type=_count, default=64)
    synthetic_parser.add_argument("--seed", type=_count, default=0)
    synthetic_parser.add_argument("--no-quirks", action="store_true")
    synthetic_parser.set_defaults(run=run_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return command.exit_status(lambda: args.run(args))
