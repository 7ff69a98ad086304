"""Checks on the real PBC images in ../shared/data (skipped where they are not)."""

import hashlib

import numpy as np
import pytest

from helpers import audit, locate, pipeline, split
from helpers.labels import CLASS_NAMES
from tests.conftest import real_data

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def pbc_dev_audit():
    return audit.audit(locate.find_data_root(real_data("pbc_dev")))


def test_every_file_indexed_and_the_download_quirks_reported(pbc_dev_audit):
    summary = pbc_dev_audit.summary
    root = pbc_dev_audit.data_root
    assert summary["n_files"] == 14534
    assert summary["missing_classes"] == [] and summary["empty_classes"] == []
    assert len(summary["not_images"]) == 1
    assert summary["not_images"][0].startswith("neutrophil/.")  # the macOS metadata file
    assert summary["corrupt"] == [] and summary["unknown_folders"] == {}
    assert summary["n_images"] == 14533
    assert len(summary["cross_class_conflicts"]) == 1
    pair = summary["cross_class_conflicts"][0]
    assert len({path.split("/")[0] for path in pair}) == 2
    assert summary["duplicate_groups"], "the download has byte-identical files within classes"
    for group in summary["duplicate_groups"] + summary["cross_class_conflicts"]:
        digests = {hashlib.sha256((root / path).read_bytes()).hexdigest() for path in group}
        assert len(digests) == 1, group


def test_real_split_is_leak_free_and_stratified(pbc_dev_audit, tmp_path):
    result = split.make_split(pbc_dev_audit, tmp_path / "split.csv")
    frame = result.split
    assert frame.groupby("sha256")["split"].nunique().max() == 1
    assert not frame["sha256"].duplicated().any()
    conflict_paths = set(pbc_dev_audit.summary["cross_class_conflicts"][0])
    assert conflict_paths.isdisjoint(frame["path"])
    assert len(frame) + len(result.excluded) == pbc_dev_audit.summary["n_files"]
    for label in CLASS_NAMES:
        counts = frame.loc[frame["label"] == label, "split"].value_counts()
        for name, fraction in split.SPLIT_FRACTIONS.items():
            assert abs(counts[name] - fraction * counts.sum()) <= 1


def test_full_resolution_originals_load_through_the_pipeline(tmp_path):
    root = locate.find_data_root(real_data("pbc_fullres_sample"))
    result = audit.audit(root)
    assert set(result.summary["sizes"]) <= {"360x363", "366x369", "360x360"}
    frame = split.make_split(result, tmp_path / "split.csv").split
    dataset = pipeline.make_dataset(frame, root, "test", image_size=64, batch_size=32)
    images = np.concatenate([batch.numpy() for batch, _ in dataset])
    assert images.shape[1:] == (64, 64, 3)
    assert 100 < images.mean() < 250  # stained smears: bright, not black or blown out
