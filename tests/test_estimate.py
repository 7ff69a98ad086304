"""The estimate of each notebook's time (helpers/tools/estimate.py, measure.py): the
arithmetic, the measurement, the runner's and a notebook's own."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers.tools import estimate, measure, study

RATES = {"precision": "float32", "decode": 1000.0, "audit": 3000.0,
         "cnn": {"train": 100.0, "predict": 400.0, "infer": 500.0, "build": 1.0, "save": 0.5,
                 "overhead": 5.0},
         "resnet50": {"train": 20.0, "predict": 80.0, "infer": 100.0, "build": 2.0,
                      "save": 1.5, "overhead": 30.0}}
COUNTS = {"all": 10_000, "train": 7000, "validation": 1500, "test": 1500}


@pytest.fixture(autouse=True)
def bfloat16_machine(monkeypatch):
    """The cpu profile as a machine with bfloat16 units runs it (its float32 section unused)."""
    monkeypatch.setattr(study, "trains_in_float32_on_cpu", lambda precision: False)


def configured(**changes) -> dict:
    parameters = study.configured_parameters("cpu", None, []).configured
    return parameters | changes


def cnn_fit_seconds(images: int, epochs: int, precise: int) -> float:
    """One CNN fit, worked out by hand from RATES and COUNTS."""
    cnn = RATES["cnn"]
    per_epoch = images / cnn["train"] + (precise + 1500) / cnn["predict"] + 2 * cnn["save"]
    return cnn["build"] + cnn["overhead"] + (images + 1500) / 1000.0 + epochs * per_epoch


def test_each_more_seed_costs_one_full_cnn_run_and_its_validation_predictions():
    one, two = (estimate.notebook_seconds(configured(CNN_SEEDS=seeds), COUNTS, RATES)
                for seeds in (2, 3))
    run = cnn_fit_seconds(7000, configured()["CNN_EPOCHS"],
                          configured()["CNN_PRECISE_BATCHNORM_IMAGES"])
    # The seed's fit, and its validation predictions twice (its own and in the ensemble).
    assert two["03_train_cnn"] - one["03_train_cnn"] == pytest.approx(run + 2 * 1500 / 400)
    assert {name: two[name] for name in two if name not in ("03_train_cnn", "05_compare")} == \
        {name: one[name] for name in one if name not in ("03_train_cnn", "05_compare")}


def test_a_slower_training_step_lengthens_only_the_notebook_that_trains_with_it():
    slow = {**RATES, "resnet50": {**RATES["resnet50"], "train": 10.0}}
    base = estimate.notebook_seconds(configured(RESNET_MISTAKES=[]), COUNTS, RATES)
    slower = estimate.notebook_seconds(configured(RESNET_MISTAKES=[]), COUNTS, slow)
    epochs = configured()["RESNET_FINE_TUNE_EPOCHS"]
    assert slower["04_train_resnet50"] - base["04_train_resnet50"] == pytest.approx(
        epochs * (7000 / 10.0 - 7000 / 20.0))
    assert all(slower[name] == base[name] for name in base if name != "04_train_resnet50")


def test_a_slower_core_lengthens_each_notebook_outside_its_models_in_proportion():
    here = {**RATES, "startup": estimate.REFERENCE_STARTUP}
    base = estimate.notebook_seconds(configured(), COUNTS, here)
    slower = estimate.notebook_seconds(configured(), COUNTS,
                                       {**here, "startup": 2 * estimate.REFERENCE_STARTUP})
    assert {name: slower[name] - base[name] for name in base} == pytest.approx(
        estimate.NOTEBOOK_OVERHEAD)


def test_the_one_core_start_is_timed_on_a_fresh_python_importing_the_notebooks_modules(
        monkeypatch):
    commands, run = [], subprocess.run

    def importing_checked(command, **options):
        commands.append(command)
        checked = ("; import sys; assert {'tensorflow', 'keras', 'pandas', 'matplotlib.pyplot',"
                   " 'seaborn'} <= set(sys.modules)")
        return run([*command[:-1], command[-1] + checked], **options)

    monkeypatch.setattr(measure.subprocess, "run", importing_checked)
    assert measure.startup_seconds() > 0  # None if the imports or the check had failed
    assert len(commands) == 1 and commands[0][:2] == [sys.executable, "-c"]


@pytest.mark.parametrize("failure", ["exit status 1", "hangs"])
def test_a_start_up_that_cannot_be_timed_counts_the_reference_machines(monkeypatch, failure):
    def failing(command, **options):
        if failure == "hangs":
            raise subprocess.TimeoutExpired(command, options["timeout"])
        return subprocess.CompletedProcess(command, 1, b"", b"ImportError")

    monkeypatch.setattr(measure.subprocess, "run", failing)
    assert measure.startup_seconds() is None
    # measure_rates then leaves it out, and the estimate counts REFERENCE_STARTUP's seconds.
    assert estimate.notebook_seconds(configured(), COUNTS, RATES) == estimate.notebook_seconds(
        configured(), COUNTS, {**RATES, "startup": estimate.REFERENCE_STARTUP})


def test_test_time_augmentation_adds_eight_views_of_the_test_split_for_both_models():
    off = estimate.notebook_seconds(configured(TTA=False), COUNTS, RATES)
    on = estimate.notebook_seconds(configured(TTA=True), COUNTS, RATES)
    # At notebook 5's rate (its traced forward pass), not Keras's predict loop's.
    assert on["05_compare"] - off["05_compare"] == pytest.approx(8 * 1500 / 500 + 8 * 1500 / 100)


def test_the_counts_come_from_the_folder_the_drawn_images_or_the_published_size(tmp_path):
    for number in range(10):
        (tmp_path / "basophil" / f"{number}.jpg").parent.mkdir(exist_ok=True)
        (tmp_path / "basophil" / f"{number}.jpg").write_bytes(b"")
    (tmp_path / "basophil" / "notes.txt").write_text("not an image")
    local = estimate.image_counts({"DATA_SOURCE": "local", "DATA_DIR": str(tmp_path)})
    assert local["all"] == 10 and local["train"] == 7
    assert estimate.image_counts({"DATA_SOURCE": "synthetic",
                                  "SYNTHETIC_IMAGES_PER_CLASS": 5})["all"] == 40
    assert estimate.image_counts({"DATA_SOURCE": "kaggle"})["all"] == estimate.PBC_IMAGES


def test_the_runner_prints_every_notebook_and_the_total_measured_here():
    parameters = study.configured_parameters("smoke", None, []).configured
    text, seconds = estimate.in_subprocess(parameters)
    assert text.startswith("Expected time here (float32;"), text
    assert re.search(r"; a kernel's imports \d+\.\d s\):", text), text  # timed, and shown
    for name in study.NOTEBOOKS:
        assert f"  {name} " in text
    assert "in all" in text and "Shorter (--set NAME=VALUE" in text
    # The seconds the notebooks' lines show beside their time: those printed, per notebook.
    assert list(seconds) == list(study.NOTEBOOKS) and all(value > 0 for value in seconds.values())
    printed = float(re.search(r"in all +([\d.]+) (s|min)", text).group(1))
    total = sum(seconds.values())
    assert printed == pytest.approx(total / 60 if total >= 90 else total, abs=0.5)


def test_an_estimate_that_cannot_be_made_says_why_in_one_line_and_the_study_goes_on():
    parameters = study.configured_parameters("smoke", None, []).configured
    del parameters["CNN_IMAGE_SIZE"]
    text, seconds = estimate.in_subprocess(parameters)
    assert text.startswith("No time estimate:") and "CNN_IMAGE_SIZE" in text
    assert seconds is None
    assert "\n" not in text


def test_one_notebooks_estimate_needs_only_its_parameters_and_measures_only_its_model():
    cnn_only = {name: value for name, value in configured().items()
                if name.startswith("CNN_") or name == "PRECISION"}
    seconds = estimate.notebook_seconds(cnn_only, COUNTS, {**RATES, "resnet50": None},
                                        ("03_train_cnn",))
    assert seconds == {"03_train_cnn": estimate.notebook_seconds(configured(), COUNTS,
                                                                  RATES)["03_train_cnn"]}
    # Measured in a process of its own, on the split's counts: the CNN alone, quickly.
    smoke = study.configured_parameters("smoke", None, []).configured
    cnn_only = {name: value for name, value in smoke.items()
                if name.startswith("CNN_") or name == "PRECISION"}
    text, seconds = estimate.in_subprocess(cnn_only, COUNTS, ("03_train_cnn",))
    assert list(seconds or {}) == ["03_train_cnn"], text
    assert "7,000 training, 1,500 validation" in text and "CNN" in text
    assert "ResNet50" not in text and "CNN_SEEDS=1" in text and "TTA" not in text


def test_a_split_is_counted_by_its_subsets(tmp_path):
    import pandas as pd

    subsets = ["train"] * 5 + ["validation"] * 2 + ["test"] * 3
    pd.DataFrame({"path": [f"basophil/{number}.jpg" for number in range(10)],
                  "label": "basophil", "sha256": [f"{number:064x}" for number in range(10)],
                  "split": subsets}).to_csv(tmp_path / "split.csv", index=False)
    assert estimate.split_counts(tmp_path / "split.csv") == {
        "all": 10, "train": 5, "validation": 2, "test": 3}


@pytest.mark.parametrize("name", ["03_train_cnn", "04_train_resnet50"])
def test_in_colab_notebooks_3_and_4_print_their_own_estimate_after_their_parameters(
        name, tmp_path, capsys):
    """The notebook's own cells (setup's names, its parameters with the smoke profile's
    values, then the cell after), run as Colab would: IS_COLAB true."""
    import nbformat
    import pandas as pd

    from helpers import models, runtime
    from helpers.tools import notebooks

    split_csv = tmp_path / "data" / "split.csv"
    split_csv.parent.mkdir()
    pd.DataFrame({"path": [f"basophil/{number}.jpg" for number in range(20)],
                  "label": "basophil", "sha256": [f"{number:064x}" for number in range(20)],
                  "split": ["train"] * 14 + ["validation"] * 3 + ["test"] * 3}
                 ).to_csv(split_csv, index=False)
    cells = nbformat.read(notebooks.SOURCE_DIR / f"{name}.ipynb", as_version=4).cells
    namespace = {"IS_COLAB": True, "estimate": estimate, "runtime": runtime, "models": models}
    exec(cells[2].source, namespace)  # the parameters cell
    smoke = study.load_profile("smoke")
    namespace.update({key: value for key, value in smoke.items() if key in namespace},
                     RUN_DIR=str(tmp_path))
    exec(cells[3].source, namespace)
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("Timing a few training steps here"), said
    assert said[1].startswith("Expected time here (float32; 14 training, 3 validation, 3 test")
    assert said[2].startswith(f"  {name} ") and "in all" not in "\n".join(said)  # one notebook
    assert ("ResNet50" in said[1]) is (name == "04_train_resnet50")
    # No split yet: said in one line, the notebook goes on to its own clear error.
    split_csv.unlink()
    exec(cells[3].source, namespace)
    assert "No time estimate: no split at" in capsys.readouterr().out


def test_a_local_cluster_shares_the_cores_or_gives_each_training_a_gpu():
    assert estimate.cluster_shares("", cores=2) == (1, 1.0)
    # Each worker keeps its share of the cores, alone or not; more workers than cores share.
    assert estimate.cluster_shares("local:2", cores=2) == (2, 2.0)
    assert estimate.cluster_shares("local:3", cores=8) == (3, 4.0)
    assert estimate.cluster_shares("local:4", cores=2) == (4, 4.0)
    assert estimate.cluster_shares("local:4", gpus=2, cores=2) == (2, 1.0)
    assert estimate.cluster_shares("tcp://scheduler:8786") is None
    # The longest first to the least busy slot; one alone on a worker is slower.
    assert estimate.at_once([10.0, 10.0, 10.0], (2, 2.0)) == 40.0
    assert estimate.at_once([30.0, 10.0, 10.0, 10.0], (2, 1.0)) == 30.0
    assert estimate.at_once([10.0], (2, 2.0)) == 20.0 and estimate.at_once([], (2, 2.0)) == 0.0


def test_trainings_sent_together_are_counted_at_once_under_a_local_cluster():
    alone = configured(CNN_SEEDS=3, CNN_BATCHNORM_DEMO=False, RESNET_MISTAKES=["all"])
    here = estimate.notebook_seconds(alone, COUNTS, RATES)
    gpus = estimate.notebook_seconds(alone | {"CLUSTER": "local:4"}, COUNTS,
                                     {**RATES, "gpus": 4})
    seed = cnn_fit_seconds(7000, alone["CNN_EPOCHS"], alone["CNN_PRECISE_BATCHNORM_IMAGES"])
    # Three seeds on four GPUs take one seed's time; the single strategy takes its own.
    assert here["03_train_cnn"] - gpus["03_train_cnn"] == pytest.approx(2 * seed)
    assert here["04_train_resnet50"] == gpus["04_train_resnet50"]  # one mistake: alone anyway
    assert here["05_compare"] == gpus["05_compare"]  # the kernel's own work
    # A scheduler's workers are not timed here: counted as here, and said so.
    assert estimate.notebook_seconds(alone | {"CLUSTER": "tcp://host:8786"}, COUNTS,
                                     RATES) == here
    said = estimate.describe(here, RATES, COUNTS, alone | {"CLUSTER": "tcp://host:8786"})
    assert "CLUSTER=tcp://host:8786: counted as if trained here" in said
    said = estimate.describe(gpus, {**RATES, "gpus": 4}, COUNTS, alone | {"CLUSTER": "local:4"})
    assert "counted 4 at once, each 1.0x as long as alone here (a GPU each)" in said
    # Several GPUs and no cluster: the estimate points to one training per GPU.
    said = estimate.describe(here, {**RATES, "gpus": 4}, COUNTS, alone)
    assert "4 GPUs here: CLUSTER=local:4 trains the independent runs at once" in said
    assert "GPUs here" not in estimate.describe(here, RATES, COUNTS, alone)


def test_the_levers_named_are_those_not_already_pulled():
    seconds = {"03_train_cnn": 60.0, "04_train_resnet50": 60.0, "05_compare": 60.0}
    pulled = estimate.describe(seconds, RATES, COUNTS, configured(
        CNN_SEEDS=1, RESNET_MISTAKES=[], TTA=False, CNN_BATCHNORM_DEMO=True))
    assert "Shorter (--set NAME=VALUE, or the parameters cell): CNN_EPOCHS, " \
        "CNN_BATCHNORM_DEMO=false, RESNET_FINE_TUNE_EPOCHS, RESNET_MAX_IMAGES, or a GPU." in pulled
    untouched = estimate.describe(seconds, RATES, COUNTS, configured(
        CNN_SEEDS=3, RESNET_MISTAKES=["all"], TTA=True))
    for lever in ("CNN_SEEDS=1", "RESNET_MISTAKES=[]", "TTA=false"):
        assert lever in untouched
    assert "in all" in untouched


def test_the_measurement_runs_where_papermill_is_missing_as_in_colab():
    """Colab has no papermill: measuring notebook 3's CNN must not import the runner."""
    import json
    import subprocess
    import sys

    from helpers import project

    smoke = study.configured_parameters("smoke", None, []).configured
    code = ("import sys\nsys.modules['papermill'] = None\nsys.modules['nbval'] = None\n"
            "from helpers.tools import measure\n"
            "sys.exit(measure.main(['--notebooks', '03_train_cnn']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          input=json.dumps({"parameters": smoke, "counts": COUNTS}),
                          cwd=project.ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(json.loads(done.stdout.splitlines()[-1])["seconds"]) == ["03_train_cnn"]


def test_parameters_json_cannot_hold_are_left_out_not_a_failure():
    from pathlib import Path

    loop: list = []
    loop.append(loop)
    smoke = study.configured_parameters("smoke", None, []).configured
    cnn_only = {name: value for name, value in smoke.items()
                if name.startswith("CNN_") or name == "PRECISION"}
    text, seconds = estimate.in_subprocess(
        {**cnn_only, "REPOSITORY": Path("/content"), "LOOP": loop, "MAPPING": {1: object()}},
        COUNTS, ("03_train_cnn",))
    assert seconds is not None and list(seconds) == ["03_train_cnn"], text


def test_the_audit_rate_is_what_its_threads_reach_on_files_of_every_class(tmp_path, monkeypatch):
    """Timed as notebook 1 audits (on its thread pool), not one thread's rate times the cores:
    on 2 EPYC cores two threads checked 1.3x one's rate on cold files, 1.1x on warm ones."""
    import os
    import threading
    import time

    from helpers import audit, synthetic
    from helpers.labels import CLASS_NAMES

    synthetic.make_synthetic_dataset(tmp_path / "data", images_per_class=6, image_size=24,
                                     quirks=False)
    seen, one_at_a_time = [], threading.Lock()

    def serial_inspection(path):  # files that cannot be read two at a time
        with one_at_a_time:
            time.sleep(0.02)
            seen.append(path)
        return {}

    monkeypatch.setattr(audit, "inspect_file", serial_inspection)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    rates = measure.file_rates(tmp_path / "data", 24, sample=16)
    assert len(seen) == 16
    assert rates["audit"] < 1 / 0.02  # four threads, no faster than one
    assert {path.parent.name for path in seen} >= set(CLASS_NAMES)  # not the first class's
    assert rates["decode"] > 0
    (tmp_path / "empty").mkdir()
    assert measure.file_rates(tmp_path / "empty", 24) == {}
