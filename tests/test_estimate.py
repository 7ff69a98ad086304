"""The runner's estimate of each notebook's time: the arithmetic, and the measurement."""

from __future__ import annotations

import pytest

from helpers.tools import estimate, study

RATES = {"precision": "float32", "decode": 1000.0, "audit": 3000.0,
         "cnn": {"train": 100.0, "predict": 400.0, "build": 1.0, "save": 0.5, "overhead": 5.0},
         "resnet50": {"train": 20.0, "predict": 80.0, "build": 2.0,
                      "save": 1.5, "overhead": 30.0}}
COUNTS = {"all": 10_000, "train": 7000, "validation": 1500, "test": 1500}


def configured(**changes) -> dict:
    _, parameters = study.configured_parameters("cpu", None, [])
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


def test_test_time_augmentation_adds_eight_views_of_the_test_split_for_both_models():
    off = estimate.notebook_seconds(configured(TTA=False), COUNTS, RATES)
    on = estimate.notebook_seconds(configured(TTA=True), COUNTS, RATES)
    assert on["05_compare"] - off["05_compare"] == pytest.approx(8 * 1500 / 400 + 8 * 1500 / 80)


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
    _, parameters = study.configured_parameters("smoke", None, [])
    text = study.estimate_in_subprocess(parameters)
    assert text.startswith("Expected time here (float32;"), text
    for name in study.NOTEBOOKS:
        assert f"  {name} " in text
    assert "in all" in text and "Shorter:" in text


def test_an_estimate_that_cannot_be_made_says_why_in_one_line_and_the_study_goes_on():
    _, parameters = study.configured_parameters("smoke", None, [])
    del parameters["CNN_IMAGE_SIZE"]
    text = study.estimate_in_subprocess(parameters)
    assert text.startswith("No time estimate:") and "CNN_IMAGE_SIZE" in text
    assert "\n" not in text
