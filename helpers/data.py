"""Command line for the data steps.

    python -m helpers.data audit DATA_DIR [--json FILE] [--index-csv FILE]
    python -m helpers.data split DATA_DIR --out FILE [--seed N] [--force]
    python -m helpers.data prepare [--source kaggle|medmnist|local] [--data-dir DIR] --run-dir DIR
    python -m helpers.data synthetic OUT_DIR [--images-per-class N] [--image-size N] [--seed N]

DATA_DIR may be any folder that contains the class folders, however deeply (a download).
Errors in the data print one clear message and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers import acquire, audit, files, locate, split, synthetic
from helpers.errors import DataError
from helpers.runfolder import RunFolder


def _print_split(result: split.SplitResult, split_csv: Path) -> None:
    action = "Reused the saved split" if result.reused else "Wrote a new split"
    print(f"{action}: {split_csv} ({len(result.excluded)} file(s) left out, "
          f"listed with reasons in {split.metadata_path(split_csv)})")
    print(split.split_counts(result.split).to_string())


def run_audit(args: argparse.Namespace) -> None:
    result = audit.audit(locate.find_data_root(args.data_dir), progress=True)
    print(audit.format_summary(result.summary))
    if args.json:
        files.write_json(result.summary, args.json)
        print(f"\nJSON report: {args.json}")
    if args.index_csv:
        result.index.to_csv(args.index_csv, index=False)
        print(f"Per-file index: {args.index_csv}")


def check_split_output(split_csv: Path) -> None:
    """A split is written as ``NAME.csv`` with ``NAME.json`` beside it: refuse (before any
    work) another suffix, a folder, or existing files there that are not a split."""
    if split_csv.suffix != ".csv" or split_csv.is_dir():
        raise DataError(f"--out {split_csv}: the split is a .csv file (its metadata goes to the "
                        ".json beside it).")
    metadata = split.metadata_path(split_csv)
    if split_csv.exists():
        split.read_split(split_csv)  # raises when it is not a split
    if metadata.exists():
        try:
            is_split = "data_root" in json.loads(metadata.read_text())
        except (ValueError, UnicodeDecodeError):
            is_split = False
        if not is_split:
            raise DataError(f"{metadata} exists and is not a split's metadata: it would be "
                            "overwritten. Give --out another name.")


def run_split(args: argparse.Namespace) -> None:
    split_csv = Path(args.out)
    check_split_output(split_csv)
    result = audit.audit(locate.find_data_root(args.data_dir), progress=True)
    _print_split(split.make_split(result, split_csv, seed=args.seed, force=args.force), split_csv)


def prepare(source: str, run_dir: str | Path, data_dir: str | Path | None = None,
            cache_dir: str | Path = "data", medmnist_size: int = 224,
            seed: int = split.DEFAULT_SEED,
            force: bool = False) -> tuple[audit.AuditResult, split.SplitResult]:
    """Acquire the data, audit it and write (or reuse) the split in ``RUN_DIR/data``.

    Writes audit.json, audit_index.csv, split.csv and split.json there.
    """
    data_root = acquire.acquire(source, data_dir=data_dir, cache_dir=cache_dir,
                                medmnist_size=medmnist_size)
    result = audit.audit(data_root, progress=True)
    run = RunFolder(run_dir)
    files.write_json(result.summary, run.audit_json)
    files.write_text_atomically(result.index.to_csv(index=False), run.audit_index)
    split_result = split.make_split(result, run.split_csv, seed=seed, force=force)
    return result, split_result


def run_prepare(args: argparse.Namespace) -> None:
    result, split_result = prepare(args.source, args.run_dir, data_dir=args.data_dir,
                                   cache_dir=args.cache_dir, medmnist_size=args.medmnist_size,
                                   seed=args.seed, force=args.force)
    run = RunFolder(args.run_dir)
    print(f"Data: {result.data_root}")
    print(audit.format_summary(result.summary))
    print(f"\nAudit: {run.audit_json} and {run.audit_index}\n")
    _print_split(split_result, run.split_csv)


def run_synthetic(args: argparse.Namespace) -> None:
    planted = synthetic.make_synthetic_dataset(
        args.out_dir, images_per_class=args.images_per_class, image_size=args.image_size,
        seed=args.seed, quirks=not args.no_quirks)
    print(f"Synthetic dataset in {args.out_dir}; planted quirks: {json.dumps(planted, indent=2)}")


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
    split_parser.add_argument("--seed", type=int, default=split.DEFAULT_SEED)
    split_parser.add_argument("--force", action="store_true",
                              help="make a new split even if a saved one exists")
    split_parser.set_defaults(run=run_split)

    prepare_parser = commands.add_parser(
        "prepare", help="acquire, audit and split into RUN_DIR/data")
    prepare_parser.add_argument("--source", choices=acquire.SOURCES, default="kaggle")
    prepare_parser.add_argument("--data-dir", help="the folder to use with --source local")
    prepare_parser.add_argument("--cache-dir", default="data",
                                help="where medmnist downloads go (default: data)")
    prepare_parser.add_argument("--medmnist-size", type=int, default=224,
                                choices=sorted(acquire.MEDMNIST_FILES))
    prepare_parser.add_argument("--run-dir", default="runs/latest")
    prepare_parser.add_argument("--seed", type=int, default=split.DEFAULT_SEED)
    prepare_parser.add_argument("--force", action="store_true",
                                help="make a new split even if a saved one exists")
    prepare_parser.set_defaults(run=run_prepare)

    synthetic_parser = commands.add_parser("synthetic", help="write a synthetic test dataset")
    synthetic_parser.add_argument("out_dir")
    synthetic_parser.add_argument("--images-per-class", type=int, default=12)
    synthetic_parser.add_argument("--image-size", type=int, default=64)
    synthetic_parser.add_argument("--seed", type=int, default=0)
    synthetic_parser.add_argument("--no-quirks", action="store_true")
    synthetic_parser.set_defaults(run=run_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
