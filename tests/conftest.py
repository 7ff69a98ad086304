"""Shared fixtures: a synthetic dataset with the download's quirks, and the real data if present."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import pytest

from helpers import audit, synthetic
from helpers.runfolder import RunFolder
from helpers.tools import notebooks

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


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """A TrainingRun sets Keras's global dtype policy (mixed bfloat16 on CPUs with AMX), as
    a notebook's kernel should; between tests it must not carry over."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def _is_notebook(item) -> bool:
    return str(item.path).endswith(".ipynb")


def pytest_collection_modifyitems(session, config, items):
    """nbval's notebooks first: the smoke run they leave behind is what ``smoke_run`` reads."""
    items.sort(key=lambda item: not _is_notebook(item))  # stable: keeps the order otherwise


def pytest_collection_finish(session):
    """nbval's notebooks share one run folder: start it empty, so no earlier run is resumed."""
    from helpers import project
    from helpers.tools import notebooks

    notebook_items = [item for item in session.items if _is_notebook(item)]
    session.config.stash[NBVAL_RUNS_STUDY] = len(notebook_items) > 0 and {
        item.path.stem for item in notebook_items} == set(project.NOTEBOOKS)
    if notebook_items:
        shutil.rmtree(project.resolve(notebooks.CHECKED_RUN_DIR), ignore_errors=True)


NBVAL_RUNS_STUDY = pytest.StashKey[bool]()
# The test images read between notebook 1 (which splits) and notebook 5 (which first uses the
# test split): set when nbval ran the five notebooks, or a reason why it could not be known.
TEST_IMAGES_READ = pytest.StashKey[dict]()


def pytest_runtest_setup(item):
    """Around nbval's run of the study: stamp the test split's files before notebook 2's
    first cell, and see which were read before notebook 5's (``tests/reads.py``)."""
    if not _is_notebook(item) or not item.config.stash.get(NBVAL_RUNS_STUDY, False):
        return
    from helpers import project
    from helpers.tools import notebooks
    from tests import reads

    state = item.config.stash.setdefault(TEST_IMAGES_READ, {})
    notebook = item.path.stem
    if notebook == "02_explore" and "stamped" not in state:
        frame, data_root = RunFolder(project.resolve(notebooks.CHECKED_RUN_DIR)).load_split()
        paths = {subset: [data_root / path for path in frame.loc[frame["split"] == subset,
                                                                  "path"]]
                 for subset in ("train", "test")}
        if not reads.reads_are_recorded(paths["train"][0]):
            state["unknown"] = "this filesystem does not record reads (noatime)"
        else:
            state["stamped"] = reads.stamp(paths["test"])
    elif notebook == "05_compare" and "stamped" in state and "read" not in state:
        state["read"] = reads.read_since(state["stamped"])


@pytest.fixture(scope="session")
def smoke_run(request, tmp_path_factory) -> RunFolder:
    """The run folder of the whole study run with the smoke profile (synthetic data).

    When nbval executed all five notebooks in this session (it runs them first), their run
    folder is used; otherwise (a test file run on its own) the study runs here with papermill.
    """
    from helpers import project
    from helpers.tools import notebooks, study

    checked = RunFolder(project.resolve(notebooks.CHECKED_RUN_DIR))
    if request.config.stash.get(NBVAL_RUNS_STUDY, False) and checked.comparison_table.exists():
        return checked
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    study.run_study(study.load_profile("smoke"), str(run_dir), log=lambda message: None)
    return RunFolder(run_dir)


def small_resnet50(image_size: int = 32) -> keras.Model:
    """Notebook 4's phase-1 model (``build_resnet50`` of its cells), from random weights:
    augmentation, preprocessing, the frozen base called in inference mode, a softmax head."""
    build = notebooks.definitions("04_train_resnet50", ("augmentation", "build_resnet50"),
                                  scope={"WEIGHTS": None}, RESNET_IMAGE_SIZE=image_size)
    model, _ = build["build_resnet50"]()
    return model
