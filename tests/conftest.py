"""Shared fixtures: a synthetic dataset with the download's quirks, and the real data if present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import audit, synthetic

REPOSITORY = Path(__file__).resolve().parents[1]
# The real images lie beside the checkout on the development machines, never inside it.
SHARED_DATA = REPOSITORY.parent / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A synthetic dataset (12 images per class, 48 px) and what was planted in it."""
    root = tmp_path_factory.mktemp("synthetic") / "pbc"
    planted = synthetic.make_synthetic_dataset(root, images_per_class=12, image_size=48)
    return root, planted


@pytest.fixture()
def synthetic_data(synthetic_source, tmp_path) -> tuple[Path, dict[str, str]]:
    """A private copy of the synthetic dataset that a test may change."""
    source, planted = synthetic_source
    root = tmp_path / "pbc"
    shutil.copytree(source, root)
    return root, planted


@pytest.fixture(scope="session")
def synthetic_audit(synthetic_source) -> audit.AuditResult:
    return audit.audit(synthetic_source[0])


def real_data(folder: str) -> Path:
    """The path of a folder of ../shared/data, skipping the test when it is not there."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real PBC images not found at {path} (only on the development machines)")
    return path


def pytest_collection_finish(session):
    """nbval's notebooks share one run folder: start it empty, so no earlier run is resumed."""
    from helpers import notebooks, project

    if any(str(item.path).endswith(".ipynb") for item in session.items):
        shutil.rmtree(project.resolve(notebooks.CHECKED_RUN_DIR), ignore_errors=True)
