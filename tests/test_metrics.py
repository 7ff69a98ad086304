"""Metrics against values computed by hand on small arrays."""

import math

import numpy as np
import pytest

from helpers import metrics

# Three classes. Confusion matrix (rows true, columns predicted): [[2,1,0],[0,1,1],[0,0,1]].
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])
CLASSES = ("a", "b", "c")


def confident(y_pred: np.ndarray, top: float = 0.8, n_classes: int = 3) -> np.ndarray:
    """Probabilities that put ``top`` on the predicted class and share the rest evenly."""
    probabilities = np.full((len(y_pred), n_classes), (1 - top) / (n_classes - 1))
    probabilities[np.arange(len(y_pred)), y_pred] = top
    return probabilities


def test_classification_metrics_match_hand_computed_values():
    report = metrics.classification_metrics(Y_TRUE, confident(Y_PRED), CLASSES)
    assert report["n_images"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    # Recalls 2/3, 1/2, 1.
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # F1: 2*1*(2/3)/(5/3) = 0.8; 0.5; 2*0.5*1/1.5 = 2/3.
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert report["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["confusion_matrix_normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0])
    # The true class gets 0.8 on the 4 right answers, 0.1 on the 2 wrong ones.
    assert report["log_loss"] == pytest.approx(-(4 * np.log(0.8) + 2 * np.log(0.1)) / 6)
    assert 0.5 < report["roc_auc_macro_ovr"] <= 1


def test_macro_f1_averages_over_the_classes_present_and_names_the_absent():
    # A platelet-only folder (class 2 of 3), every image right: macro-F1 1, not 1/3.
    y_true = np.array([2, 2, 2, 2])
    report = metrics.classification_metrics(y_true, confident(y_true), CLASSES)
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert report["absent_classes"] == ["a", "b"]
    assert set(report["per_class"]) == set(CLASSES)  # a row for every class all the same
    # A wrong prediction of an absent class still costs the true class its recall.
    wrong = np.array([2, 2, 2, 0])
    assert metrics.macro_f1(y_true, wrong) == pytest.approx(2 * 0.75 / 1.75)
    report = metrics.with_intervals(metrics.classification_metrics(y_true, confident(wrong),
                                                                   CLASSES), y_true, wrong)
    assert report["macro_f1_ci95"][1] == 1.0  # resamples average over class 2 alone too


def test_roc_auc_is_none_when_a_class_has_no_image():
    y_true = np.array([0, 0, 1, 1])
    report = metrics.classification_metrics(y_true, confident(y_true), CLASSES)
    assert report["roc_auc_macro_ovr"] is None
    assert report["per_class"]["c"]["support"] == 0


def test_classification_metrics_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        metrics.classification_metrics(Y_TRUE, confident(Y_PRED)[:, :2], CLASSES)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_images():
    generator = np.random.default_rng(0)
    small_true = generator.integers(0, 3, 100)
    small_pred = np.where(generator.random(100) < 0.8, small_true, (small_true + 1) % 3)
    low, high = metrics.bootstrap_interval(small_true, small_pred, metrics.accuracy, seed=1)
    assert low < metrics.accuracy(small_true, small_pred) < high
    assert (low, high) == metrics.bootstrap_interval(small_true, small_pred, metrics.accuracy,
                                                     seed=1)
    large_true, large_pred = np.tile(small_true, 16), np.tile(small_pred, 16)
    large_low, large_high = metrics.bootstrap_interval(large_true, large_pred,
                                                       metrics.accuracy, seed=1)
    assert large_high - large_low < (high - low) / 2  # width ~ 1/sqrt(n): a quarter here
    assert metrics.bootstrap_interval(small_true, small_true, metrics.accuracy) == (1.0, 1.0)


def test_with_intervals_adds_accuracy_and_macro_f1_intervals():
    report = metrics.with_intervals(
        metrics.classification_metrics(Y_TRUE, confident(Y_PRED), CLASSES), Y_TRUE, Y_PRED,
        n_resamples=200)
    assert report["accuracy_ci95"][0] <= report["accuracy"] <= report["accuracy_ci95"][1]
    assert report["macro_f1_ci95"][0] <= report["macro_f1_ci95"][1]
    # Reproducible: every report draws its resamples from seed 0.
    assert report["macro_f1_ci95"] == list(metrics.bootstrap_interval(
        Y_TRUE, Y_PRED, lambda true, predicted: metrics.macro_f1(true, predicted, [0, 1, 2]),
        n_resamples=200, seed=0))


def test_the_macro_f1_interval_averages_every_resample_over_the_same_classes():
    # One image of class c, always wrong. A resample without it (about a third of them)
    # still averages over a, b and c (F1 of c: 0); averaged over a and b only it would score
    # 1.0, and the interval would reach far above every score the full test set can give.
    y_true = np.array([0] * 25 + [1] * 24 + [2])
    y_pred = np.array([0] * 25 + [1] * 24 + [0])
    report = metrics.with_intervals(
        metrics.classification_metrics(y_true, confident(y_pred), CLASSES), y_true, y_pred,
        n_resamples=500)
    assert report["macro_f1"] == pytest.approx(0.6601, abs=1e-4)
    assert report["macro_f1_ci95"][1] == pytest.approx(2 / 3)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Ten images at confidence 0.8, eight of them right.
    y_true = np.array([0] * 8 + [1] * 2)
    probabilities = confident(np.zeros(10, dtype=int), top=0.8)
    assert metrics.expected_calibration_error(y_true, probabilities) == pytest.approx(0)
    # A confidence on a bin's upper edge is in that bin: 0.8 in (0.7, 0.8], of ten.
    assert metrics.reliability_table(y_true, probabilities, n_bins=10)["count"][7] == 10


def test_ece_measures_overconfidence():
    # Confidence 0.99, half right: the gap is 0.49 in the only filled bin.
    y_true = np.array([0, 1] * 5)
    probabilities = confident(np.zeros(10, dtype=int), top=0.99)
    assert metrics.expected_calibration_error(y_true, probabilities) == pytest.approx(0.49)
    table = metrics.reliability_table(y_true, probabilities)
    assert table["count"].sum() == 10 and table["count"][-1] == 10
    assert np.isnan(table["accuracy"][0])


def test_ece_weights_each_bin_by_its_images_and_takes_absolute_gaps():
    # Ten bins. Bin (0.5, 0.6]: 2 images at 0.55, both right (gap 0.45). Bin (0.7, 0.8]:
    # 4 at 0.75, one right (gap 0.5). Bin (0.9, 1]: 4 at 0.95, all right (gap 0.05, under-
    # rather than overconfident). ECE = (2 * 0.45 + 4 * 0.5 + 4 * 0.05) / 10 = 0.31; an
    # unweighted mean over bins would give 0.333, signed gaps 0.09.
    predicted = np.zeros(10, dtype=int)
    probabilities = np.concatenate([confident(predicted[:2], top=0.55),
                                    confident(predicted[2:6], top=0.75),
                                    confident(predicted[6:], top=0.95)])
    y_true = np.array([0, 0, 0, 1, 1, 2, 0, 0, 0, 0])
    assert metrics.expected_calibration_error(y_true, probabilities, n_bins=10) == (
        pytest.approx(0.31))
    table = metrics.reliability_table(y_true, probabilities, n_bins=10)
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 4, 0, 4]
    np.testing.assert_allclose(table["accuracy"][[5, 7, 9]], [1.0, 0.25, 1.0])
    np.testing.assert_allclose(table["confidence"][[5, 7, 9]], [0.55, 0.75, 0.95])


def test_temperature_scaling_lowers_nll_and_keeps_predictions():
    generator = np.random.default_rng(3)
    y_true = generator.integers(0, 3, 300)
    y_pred = np.where(generator.random(300) < 0.7, y_true, (y_true + 1) % 3)
    overconfident = confident(y_pred, top=0.999)
    temperature = metrics.fit_temperature(y_true, overconfident)
    assert temperature > 1
    scaled = metrics.apply_temperature(overconfident, temperature)
    assert metrics.negative_log_likelihood(y_true, scaled) < metrics.negative_log_likelihood(
        y_true, overconfident) / 2
    assert np.array_equal(scaled.argmax(axis=1), y_pred)
    assert np.allclose(scaled.sum(axis=1), 1)
    assert metrics.expected_calibration_error(y_true, scaled) < metrics.expected_calibration_error(
        y_true, overconfident)
    assert np.allclose(metrics.apply_temperature(overconfident, 1.0), overconfident)


def test_mcnemar_exact_matches_a_worked_example():
    # 1 image only A gets right, 7 only B: p = 2 * P(X <= 1), X ~ Binomial(8, 1/2)
    # = 2 * (1 + 8) / 256 = 0.0703125.
    y_true = np.zeros(20, dtype=int)
    pred_a = np.array([0] * 1 + [1] * 7 + [0] * 10 + [1] * 2)
    pred_b = np.array([1] * 1 + [0] * 7 + [0] * 10 + [1] * 2)
    result = metrics.mcnemar_exact(y_true, pred_a, pred_b)
    assert result == {"a_only_correct": 1, "b_only_correct": 7, "both_correct": 10,
                      "both_wrong": 2, "p_value": pytest.approx(18 / 256)}
    assert metrics.mcnemar_exact(y_true, pred_a, pred_a)["p_value"] == 1.0


def test_paired_bootstrap_difference_is_of_the_same_images():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 400)
    pred_a = np.where(rng.random(400) < 0.9, y_true, (y_true + 1) % 4)
    pred_b = pred_a.copy()
    pred_b[:10] = (y_true[:10] + 1) % 4  # B errs on up to 10 images more than A
    result = metrics.paired_bootstrap_difference(y_true, pred_a, pred_b, n_classes=4,
                                                 n_resamples=300)
    accuracy = result["accuracy"]
    assert accuracy["difference"] == pytest.approx(
        metrics.accuracy(y_true, pred_a) - metrics.accuracy(y_true, pred_b))
    assert result["macro_f1"]["a"] == pytest.approx(metrics.macro_f1(y_true, pred_a))
    assert result["macro_f1"]["difference"] == pytest.approx(
        metrics.macro_f1(y_true, pred_a) - metrics.macro_f1(y_true, pred_b))
    low, high = accuracy["ci95"]
    assert 0 <= low <= accuracy["difference"] <= high
    # Paired: the models differ on a few images only, so the difference's interval is
    # narrower than either model's own interval (unpaired, it would be wider than both).
    own_low, own_high = metrics.bootstrap_interval(y_true, pred_a, metrics.accuracy, 300)
    assert high - low < (own_high - own_low) / 1.5
    assert accuracy["share_of_resamples_a_better"] > 0.9
    same = metrics.paired_bootstrap_difference(y_true, pred_a, pred_a, n_classes=4,
                                               n_resamples=50)
    assert same["accuracy"]["ci95"] == [0.0, 0.0] and same["macro_f1"]["difference"] == 0.0
    with pytest.raises(ValueError, match="same images"):
        metrics.paired_bootstrap_difference(y_true, pred_a, pred_b[:-1], n_classes=4)
    # A class no test image has: macro-F1 averages over the classes present, as with_intervals.
    three = y_true % 3
    guessed = np.where(rng.random(400) < 0.9, three, 3)  # the absent class predicted too
    result = metrics.paired_bootstrap_difference(three, guessed, three, n_classes=4,
                                                 n_resamples=50)
    assert result["macro_f1"]["a"] == pytest.approx(metrics.macro_f1(three, guessed))


def test_a_temperature_at_the_end_of_the_search_is_flagged():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 300)
    # Certain and right a third of the time: no temperature within the bounds calibrates it.
    wild = confident(rng.integers(0, 3, 300), top=1 - 1e-9)
    temperature = metrics.fit_temperature(y_true, wild)
    assert metrics.temperature_at_bound(temperature)
    fair = confident(np.where(rng.random(300) < 0.8, y_true, (y_true + 1) % 3), top=0.8)
    assert not metrics.temperature_at_bound(metrics.fit_temperature(y_true, fair))
    low, high = metrics.TEMPERATURE_BOUNDS
    assert metrics.temperature_at_bound(low) and metrics.temperature_at_bound(high)
    assert not metrics.temperature_at_bound(1.0)


def test_the_scipy_bootstrap_draws_the_images_a_hand_written_one_draws():
    """The intervals are scipy's paired percentile bootstrap: resamples of images drawn as
    ``default_rng(seed).integers(0, n, (resamples, n))``, endpoints by numpy's percentile.
    Recomputed here by hand, per resample with scikit-learn, so a scipy that drew or cut
    otherwise would change every reported interval and fail this test."""
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 5, 300)
    pred_a = np.where(rng.random(300) < 0.85, y_true, rng.integers(0, 5, 300))
    pred_b = np.where(rng.random(300) < 0.8, y_true, rng.integers(0, 5, 300))
    draws = np.random.default_rng(3).integers(0, 300, size=(200, 300))
    present = np.unique(y_true)
    by_hand = {
        "accuracy": [metrics.accuracy(y_true[rows], pred_a[rows])
                     - metrics.accuracy(y_true[rows], pred_b[rows]) for rows in draws],
        "macro_f1": [metrics.macro_f1(y_true[rows], pred_a[rows], present)
                     - metrics.macro_f1(y_true[rows], pred_b[rows], present) for rows in draws]}
    result = metrics.paired_bootstrap_difference(y_true, pred_a, pred_b, n_classes=5,
                                                 n_resamples=200, seed=3)
    for metric, differences in by_hand.items():
        assert result[metric]["ci95"] == pytest.approx(np.percentile(differences, [2.5, 97.5]))
        assert result[metric]["share_of_resamples_a_better"] == pytest.approx(
            np.mean(np.array(differences) > 0))
    assert metrics.bootstrap_interval(y_true, pred_a, metrics.accuracy, 200, seed=3) == \
        pytest.approx(np.percentile([metrics.accuracy(y_true[rows], pred_a[rows])
                                     for rows in draws], [2.5, 97.5]))


def test_mcnemar_p_is_the_doubled_binomial_tail():
    y_true = np.zeros(60, dtype=int)
    for a_only, b_only in ((0, 0), (3, 3), (1, 12), (20, 5), (0, 9)):
        pred_a = np.ones(60, dtype=int)
        pred_b = np.ones(60, dtype=int)
        pred_a[:a_only] = 0  # right on these alone
        pred_b[30:30 + b_only] = 0
        pred_a[50:], pred_b[50:] = 0, 0  # both right on these
        discordant = a_only + b_only
        tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
        expected = min(1.0, 2 * tail / 2 ** discordant) if discordant else 1.0
        result = metrics.mcnemar_exact(y_true, pred_a, pred_b)
        assert (result["a_only_correct"], result["b_only_correct"]) == (a_only, b_only)
        assert result["p_value"] == pytest.approx(expected, rel=1e-9)


def test_one_image_gives_the_degenerate_interval_scipy_would_refuse():
    """scipy's bootstrap needs two observations; a folder of one image still gets its report
    (every resample of one image is that image)."""
    one, right, wrong = np.array([2]), np.array([2]), np.array([0])
    assert metrics.bootstrap_interval(one, right, metrics.accuracy) == (1.0, 1.0)
    report = metrics.with_intervals(metrics.classification_metrics(one, confident(right), CLASSES),
                                    one, right, n_resamples=20)
    assert report["accuracy_ci95"] == [1.0, 1.0] and report["macro_f1_ci95"] == [1.0, 1.0]
    result = metrics.paired_bootstrap_difference(one, right, wrong, n_classes=3, n_resamples=20)
    assert result["accuracy"] == {"a": 1.0, "b": 0.0, "difference": 1.0, "ci95": [1.0, 1.0],
                                  "share_of_resamples_a_better": 1.0}
