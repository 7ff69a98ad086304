"""Prepare a run folder's data (notebook 01, ``python -m helpers.data prepare``): acquire the
images, audit every file and write (or reuse) the split in ``RUN_DIR/data``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from helpers import acquire, audit, files, runlock, split, synthetic
from helpers.errors import DataError
from helpers.runfolder import RunFolder, check_placement, check_root, mark, owning_run_folder

SOURCES = (*acquire.SOURCES, "synthetic")


def prepare(source: str, run_dir: str | Path, data_dir: str | Path | None = None,
            cache_dir: str | Path = "data", medmnist_size: int = 224,
            seed: int = split.DEFAULT_SEED, force: bool = False,
            synthetic_images_per_class: int = 12,
            fractions: dict[str, float] = split.SPLIT_FRACTIONS,
            ) -> tuple[audit.AuditResult, split.SplitResult]:
    """Acquire the data, audit it and write (or reuse) the split in ``RUN_DIR/data``.

    A saved split that no longer fits is refused (StaleSplitError) before anything in the run
    folder changes: synthetic cells are drawn beside their folder and moved in only once the
    split is accepted.
    """
    fractions = split.check_fractions(fractions)
    run = RunFolder(run_dir)
    check_root(run.root)
    check_placement(run.root, acquire.destination(source, data_dir, cache_dir, medmnist_size))
    with runlock.held(run.root, "preparing the data (notebook 01)"):
        staging = None
        if source == "synthetic":
            data_root = Path(data_dir) if data_dir else run.synthetic_data
            owner = owning_run_folder(data_root / "cell.jpg")  # a file drawn there
            if owner is not None and data_root.resolve() != run.synthetic_data.resolve():
                raise DataError(f"The synthetic data folder {data_root} lies among the files of "
                                f"the run folder {owner}: drawing there would replace what it "
                                "reads. Leave DATA_DIR empty (the run's own synthetic/) or "
                                "give a folder outside every run folder.")
            synthetic.check_folder(data_root)
            # Left by a prepare that was killed (under the lock, no other one runs here).
            for leftover in [*data_root.parent.glob(f".{data_root.name}.new-*"),
                             *data_root.parent.glob(f".{data_root.name}.old-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
            staging = data_root.with_name(f".{data_root.name}.new-{os.getpid()}")
        else:
            data_root = acquire.acquire(source, data_dir=data_dir, cache_dir=cache_dir,
                                        medmnist_size=medmnist_size)
            check_placement(run.root, data_root)  # where it landed (Colab's Kaggle cache)
        try:
            if staging is not None:
                synthetic.make_synthetic_dataset(
                    staging, images_per_class=synthetic_images_per_class, seed=seed)
                drawn = audit.audit(staging, progress=True)
                result = audit.AuditResult(data_root, drawn.index,
                                           {**drawn.summary, "data_root": str(data_root)})
            else:
                result = audit.audit(data_root, progress=True)
            mark(run.root)  # once the data is there: a failed download marks nothing
            split_result = split.make_split(result, run.split_csv, seed=seed, force=force,
                                            fractions=fractions)
            if staging is not None:
                # The split records the drawn files' sizes and times, which the move keeps:
                # a kill before it leaves images that every reader finds changed.
                _replace_folder(staging, data_root)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        files.write_json(result.summary, run.audit_json)
        files.write_text_atomically(audit.index_csv(result.index), run.audit_index)
    return result, split_result


def _replace_folder(new: Path, folder: Path) -> None:
    """Put the folder ``new`` in the place of ``folder`` (moved aside, then removed)."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)
