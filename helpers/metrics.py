"""Test metrics a reviewer asks for: per-class scores, confidence intervals, calibration,
and the paired comparison of two models on the same images.

Everything takes class indices (``y_true``, ``y_pred``) and probability arrays
(``[n_images, n_classes]``) as numpy arrays; scikit-learn and scipy do the arithmetic.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np
from scipy import optimize, stats
from sklearn import metrics as skmetrics

from helpers.labels import CLASS_NAMES

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
# The temperatures fit_temperature searches; a fit at either end is flagged
# (temperature_at_bound): the best temperature may lie beyond it.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Keeps log(0) finite when a model puts exactly zero probability on the true class.
_EPSILON = 1e-12


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of images whose predicted class is the true class."""
    return float(skmetrics.accuracy_score(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray,
             classes: Sequence[int] | None = None) -> float:
    """Unweighted mean of the per-class F1 over ``classes`` (default: the classes present in
    ``y_true``). A class no image belongs to has no F1 to average: counting it as 0 would cap
    a perfect score on a platelet-only folder at 1/8. Predictions of such a class still count,
    as errors of the images' true classes."""
    classes = np.unique(y_true) if classes is None else classes
    return float(skmetrics.f1_score(y_true, y_pred, labels=list(classes), average="macro",
                                    zero_division=0))


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray,
                           class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, per-class precision/recall/F1/support,
    confusion matrix (counts and row-normalised), macro one-vs-rest ROC-AUC, log loss.

    ROC-AUC is None when a class has no image (it is undefined then). Rows of the
    confusion matrix are true classes, columns predicted ones.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_classes = len(class_names)
    if probabilities.shape != (len(y_true), n_classes):
        raise ValueError(f"probabilities must have shape ({len(y_true)}, {n_classes}), "
                         f"got {probabilities.shape}")
    labels = list(range(n_classes))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = skmetrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    confusion = skmetrics.confusion_matrix(y_true, y_pred, labels=labels)
    row_totals = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, row_totals, out=np.zeros(confusion.shape),
                           where=row_totals > 0)
    present = np.unique(y_true)
    roc_auc = None
    if len(present) == n_classes:
        roc_auc = float(skmetrics.roc_auc_score(y_true, probabilities, multi_class="ovr",
                                                average="macro", labels=labels))
    clipped = np.clip(probabilities, _EPSILON, 1)
    return {
        "n_images": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        # Mean recall over the classes present (sklearn's definition).
        "balanced_accuracy": float(skmetrics.balanced_accuracy_score(y_true, y_pred)),
        # Over the classes present; "absent_classes" names the others (their rows stay).
        "macro_f1": macro_f1(y_true, y_pred),
        "absent_classes": [class_names[i] for i in labels if i not in set(present)],
        "weighted_f1": float(skmetrics.f1_score(y_true, y_pred, labels=labels,
                                                average="weighted", zero_division=0)),
        "roc_auc_macro_ovr": roc_auc,
        "log_loss": float(-np.mean(np.log(clipped[np.arange(len(y_true)), y_true]))),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalized": normalized.round(6).tolist(),
    }


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable, n_resamples: int,
               confidence: float, seed: int) -> object:
    """scipy's paired percentile bootstrap over images, drawn from ``default_rng(seed)``
    (the same draws for every statistic of the same images and seed)."""
    if len(data[0]) < 2:  # scipy needs two images; every resample of one image is that image
        value = float(np.reshape(statistic(*(column[None, :] for column in data), axis=-1), -1)[0])
        return SimpleNamespace(confidence_interval=SimpleNamespace(low=value, high=value),
                               bootstrap_distribution=np.full(n_resamples, value))
    # scipy 1.15 renamed random_state to rng; both take a Generator and draw alike.
    keyword = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=True,
                           vectorized=True, method="percentile", confidence_level=confidence,
                           **{keyword: np.random.default_rng(seed)})


def bootstrap_interval(y_true: np.ndarray, y_pred: np.ndarray,
                       metric: Callable[[np.ndarray, np.ndarray], float],
                       n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, y_pred)``, resampling images."""
    def statistic(true: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.reshape(true, (-1, true.shape[-1])), np.reshape(pred, (-1, pred.shape[-1]))
        return np.array([metric(t, p) for t, p in zip(*rows, strict=True)]).reshape(true.shape[:-1])
    result = _bootstrap((np.asarray(y_true), np.asarray(y_pred)), statistic, n_resamples,
                        confidence, seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def with_intervals(report: dict, y_true: np.ndarray, y_pred: np.ndarray,
                   n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Add 95% bootstrap intervals of accuracy and macro-F1 to a metrics report."""
    present = np.unique(y_true)  # fixed: a resample that misses a class still averages over it
    report["accuracy_ci95"] = list(bootstrap_interval(y_true, y_pred, accuracy,
                                                      n_resamples, seed=seed))
    report["macro_f1_ci95"] = list(bootstrap_interval(
        y_true, y_pred, lambda t, p: macro_f1(t, p, present), n_resamples, seed=seed))
    return report


def reliability_table(y_true: np.ndarray, probabilities: np.ndarray,
                      n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (equal width on [0, 1]): mean confidence, accuracy, image count.

    Confidence is the top probability; bins without images hold NaN confidence/accuracy.
    """
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    # Bin i holds confidences in (i/n, (i+1)/n]; the top probability is always >= 1/n_classes.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, n_bins) / counts
        bin_accuracy = np.bincount(bins, correct.astype(float), n_bins) / counts
    return {"edges": np.linspace(0, 1, n_bins + 1), "confidence": mean_confidence,
            "accuracy": bin_accuracy, "count": counts}


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    """ECE: the image-weighted mean gap between confidence and accuracy over the bins."""
    table = reliability_table(y_true, probabilities, n_bins)
    filled = table["count"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(gaps * table["count"][filled]) / table["count"].sum())


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log-probabilities divided by ``temperature`` (>1 softens, <1 sharpens).

    The models output probabilities; their logs equal the logits up to a per-image constant,
    which softmax ignores, so this is exact temperature scaling.
    """
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1))
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean -log p(true class)."""
    rows = np.arange(len(y_true))
    return float(-np.mean(np.log(np.clip(probabilities[rows, np.asarray(y_true)],
                                         _EPSILON, 1))))


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``y_true``.

    Fit it on the validation split and apply it to the test split; it never changes which
    class is predicted, so accuracy and F1 stay the same.
    """
    def loss(log_temperature: float) -> float:
        return negative_log_likelihood(y_true, apply_temperature(probabilities,
                                                                 np.exp(log_temperature)))
    low, high = TEMPERATURE_BOUNDS
    result = optimize.minimize_scalar(loss, bounds=(np.log(low), np.log(high)),
                                      method="bounded")
    return float(np.exp(result.x))


def temperature_at_bound(temperature: float) -> bool:
    """Whether a fitted temperature sits at an end of TEMPERATURE_BOUNDS (within 1%): the
    fit stopped at the search's limit, so the model's over- or under-confidence is larger
    than scaling within the bounds can undo, and the calibrated figures are not final."""
    low, high = TEMPERATURE_BOUNDS
    return temperature <= low * 1.01 or temperature >= high / 1.01


def mcnemar_exact(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """McNemar's exact test of two models' errors on the same images.

    ``a_only_correct`` and ``b_only_correct`` count the discordant images; under the null
    hypothesis (equal error rates) each discordant image goes either way with probability
    1/2: the two-sided p-value is scipy's exact binomial test.
    """
    y_true = np.asarray(y_true)
    correct_a, correct_b = np.asarray(pred_a) == y_true, np.asarray(pred_b) == y_true
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(
        stats.binomtest(a_only, discordant, 0.5, alternative="two-sided").pvalue)
    return {"a_only_correct": a_only, "b_only_correct": b_only,
            "both_correct": int(np.sum(correct_a & correct_b)),
            "both_wrong": int(np.sum(~correct_a & ~correct_b)), "p_value": p_value}


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
              classes: np.ndarray) -> np.ndarray:
    """Macro-F1 over ``classes`` along the last axis of ``y_true`` and ``y_pred`` (any
    leading axes are resamples), as ``macro_f1`` gives it: the F1 of a class with no true and
    no predicted image is 0 (scikit-learn's ``zero_division=0``)."""
    y_true, y_pred = np.broadcast_arrays(y_true, y_pred)
    rows = y_true.reshape(-1, y_true.shape[-1]), y_pred.reshape(-1, y_pred.shape[-1])
    offsets = np.arange(len(rows[0]))[:, None] * n_classes * n_classes
    confusions = np.bincount((offsets + rows[0] * n_classes + rows[1]).ravel(),
                             minlength=len(rows[0]) * n_classes * n_classes
                             ).reshape(-1, n_classes, n_classes)
    true_positive = np.diagonal(confusions, axis1=1, axis2=2)[:, classes]
    denominator = confusions.sum(axis=2)[:, classes] + confusions.sum(axis=1)[:, classes]
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(true_positive.shape),
                   where=denominator > 0)
    return f1.mean(axis=1).reshape(y_true.shape[:-1])


def paired_bootstrap_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                                n_classes: int = len(CLASS_NAMES),
                                n_resamples: int = BOOTSTRAP_RESAMPLES,
                                confidence: float = 0.95, seed: int = 0) -> dict:
    """Accuracy and macro-F1 of model A minus model B on the same images, each with a paired
    percentile bootstrap interval (``scipy.stats.bootstrap(paired=True)``): every resample
    draws images once and scores both models on them, so the interval is of the difference
    itself (narrower than two separate intervals suggest, since both models find the same
    images easy or hard). Both metrics use the same resamples.

    Macro-F1 averages over the classes present in ``y_true``, as ``with_intervals`` does.
    Returns ``{"n_images", "accuracy": {...}, "macro_f1": {...}}``, each metric's dict with
    "a", "b", "difference", "ci95" and "share_of_resamples_a_better".
    """
    y_true, pred_a, pred_b = (np.asarray(values) for values in (y_true, pred_a, pred_b))
    if not len(y_true) == len(pred_a) == len(pred_b):
        raise ValueError("y_true, pred_a and pred_b must be of the same images")
    if len(y_true) == 0:
        raise ValueError("no images to compare the models on")
    present = np.unique(y_true)
    scores = {"accuracy": lambda true, pred: np.mean(true == pred, axis=-1),
              "macro_f1": lambda true, pred: _macro_f1(true, pred, n_classes, present)}
    result = {"n_images": int(len(y_true))}
    for metric, score in scores.items():
        def difference(true, a, b, axis=-1, score=score):
            return score(true, a) - score(true, b)
        bootstrap = _bootstrap((y_true, pred_a, pred_b), difference, n_resamples, confidence,
                               seed)
        a, b = float(score(y_true, pred_a)), float(score(y_true, pred_b))
        result[metric] = {
            "a": a, "b": b, "difference": a - b,
            "ci95": [float(bootstrap.confidence_interval.low),
                     float(bootstrap.confidence_interval.high)],
            "share_of_resamples_a_better": float(np.mean(bootstrap.bootstrap_distribution > 0))}
    return result
