"""What values the study's parameters accept (helpers/tools/parameters.py), judged by the runner
before the first notebook."""

import ast
import subprocess
import sys

import nbformat
import pytest

from helpers import devices, models, preparation
from helpers.tools import notebooks, parameters, study


def _defaults() -> dict:
    return {name: default for name, (_, default) in study.all_declared_parameters().items()}


@pytest.mark.parametrize("profile", ["colab", "smoke", "cpu", "full"])
def test_every_profile_is_accepted(profile):
    assert parameters.problems(_defaults() | study.load_profile(profile)) == []
    # On a machine that trains in float32 on its CPU too.
    assert parameters.problems(_defaults() | study.load_profile(profile)
                               | study.float32_cpu_values(profile)) == []


@pytest.mark.parametrize("name, value, says", [
    ("SPLIT_SEED", -1, "SPLIT_SEED must be 0 or more, got -1"),
    ("SEED", -5, "SEED must be 0 or more"),
    ("RESNET_MISTAKES", ["learning_rat"], "RESNET_MISTAKES has no ['learning_rat']: give "
                                          '["every"] or a list of earlier_training'),
    ("RESNET_MISTAKES", ["every", "all"], "RESNET_MISTAKES has no ['every']"),
    ("CNN_LR_STRATEGIES", [], "CNN_LR_STRATEGIES must list at least one of constant"),
    ("CNN_LR_STRATEGIES", ["cosine"], "has no ['cosine']: give a list of constant, schedule"),
    ("DATA_SOURCE", "Synthetic", "must be one of kaggle, medmnist, local, synthetic"),
    ("MEDMNIST_SIZE", 28, "MEDMNIST_SIZE must be one of 64, 128, 224"),
    ("PRECISION", "fp16", "PRECISION must be one of auto, float32"),
    ("CNN_CROP_FRACTION", 0.0, "CNN_CROP_FRACTION must be in (0, 1]"),
    ("RESNET_CROP_FRACTION", 1.5, "must be in (0, 1]"),
    ("RESNET_FINE_TUNE_BLOCKS", 17, "must be 0-16"),
    ("RESNET_IMAGE_SIZE", 16, "RESNET_IMAGE_SIZE must be 32 or more"),
    ("CNN_EPOCHS", 0, "CNN_EPOCHS must be 1 or more"),
    ("RESNET_FROZEN_EPOCHS", 0, "must be 1 or more"),
    ("CNN_BATCH_SIZE", 0, "must be 1 or more"),
    ("CNN_LEARNING_RATE", 0.0, "CNN_LEARNING_RATE must be above 0"),
    ("RESNET_WEIGHT_DECAY", -1e-4, "must be 0 or more"),
    ("RESNET_MAX_IMAGES", -1, "must be 0 or more"),
    ("BOOTSTRAP_RESAMPLES", 5, "must be 100 or more"),
    ("CONVERGENCE_ACCURACY", 1.5, "must be in (0, 1]"),
    ("SPLIT_FRACTIONS", {"train": 0.8, "validation": 0.2}, "SPLIT_FRACTIONS must give train"),
    ("SYNTHETIC_IMAGES_PER_CLASS", 2, "must be 3 or more"),
])
def test_each_value_the_study_would_refuse_is_named_with_what_it_accepts(name, value, says):
    found = parameters.problems(_defaults() | {name: value})
    assert len(found) == 1 and says in found[0], found


def test_relations_between_parameters_are_judged_too():
    found = parameters.problems(_defaults() | {"DATA_SOURCE": "local", "DATA_DIR": ""})
    assert found == ["DATA_DIR must name the folder of images when DATA_SOURCE is local "
                     "(python -m helpers.study --data-dir DIR sets both)"]


def test_the_runner_refuses_them_all_at_once_before_any_notebook_and_without_tensorflow(
        tmp_path):
    script = ("import sys\nfrom helpers.tools import study\n"
              f"code = study.main(['--profile', 'smoke', '--run-dir', {str(tmp_path)!r}, "
              "'--set', 'RESNET_MISTAKES=[learning_rat]', '--set', 'SPLIT_SEED=-1'])\n"
              "print('tensorflow' in sys.modules, code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=notebooks.project.ROOT, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False 1"
    assert "RESNET_MISTAKES has no ['learning_rat']" in result.stderr
    assert "SPLIT_SEED must be 0 or more, got -1" in result.stderr
    assert not (tmp_path / "notebooks").exists()


def test_the_choices_are_those_the_code_takes():
    assert parameters.DATA_SOURCES == preparation.SOURCES
    assert parameters.PRECISIONS == devices.PRECISIONS
    assert len(models.RESNET50_BLOCKS) == parameters.RESNET50_BLOCKS
    notebook = nbformat.read(notebooks.SOURCE_DIR / "04_train_resnet50.ipynb", as_version=4)
    names = next(ast.literal_eval(node.value) for cell in notebook.cells
                 if cell.cell_type == "code" and "MISTAKE_NAMES = (" in cell.source
                 for node in ast.parse(cell.source).body
                 if isinstance(node, ast.Assign) and node.targets[0].id == "MISTAKE_NAMES")
    assert names == parameters.RESNET_MISTAKE_NAMES
