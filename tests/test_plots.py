import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import metrics, plots

matplotlib.use("Agg")


def _history(n, offset=0.0):
    return pd.DataFrame({"epoch": range(n), "loss": [1 / (e + 1) for e in range(n)],
                         "val_loss": [1.2 / (e + 1) + offset for e in range(n)],
                         "accuracy": [0.5 + e / (3 * n) for e in range(n)],
                         "val_accuracy": [0.4 + e / (3 * n) for e in range(n)],
                         "learning_rate": [1e-3] * n})


def test_training_curves_are_saved_with_one_line_per_run_and_the_phase_boundary(tmp_path):
    path = tmp_path / "figures" / "curves.png"
    figure = plots.plot_training_curves({"cnn": _history(5), "resnet50": _history(8, 0.1)},
                                        phase_boundaries={"resnet50": 3}, path=path)
    accuracy_axis = figure.axes[1]
    labels = [line.get_label() for line in accuracy_axis.get_lines()]
    assert labels.count("cnn") == 1 and labels.count("resnet50") == 1
    boundaries = [line for line in accuracy_axis.get_lines()
                  if list(line.get_xdata()) == [3.5, 3.5]]
    assert len(boundaries) == 1
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000


def _report(y_pred):
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), y_pred] = 0.8
    return y_true, probabilities, metrics.classification_metrics(y_true, probabilities,
                                                                 ("a", "b", "c"))


def test_evaluation_figures_draw_each_model_and_save_png(tmp_path):
    y_true, good, good_report = _report(np.array([0, 0, 1, 1, 2, 2]))
    _, poor, poor_report = _report(np.array([0, 1, 1, 2, 2, 0]))
    reports = {"good": good_report, "poor": poor_report}
    figure = plots.plot_confusion_matrices(reports, path=tmp_path / "confusion.png")
    assert [axis.get_title() for axis in figure.axes[:2]] == [
        "good (accuracy 1.000)", "poor (accuracy 0.500)"]
    figure = plots.plot_per_class_f1(reports, path=tmp_path / "f1.png")
    assert len(figure.axes[0].patches) >= 6  # 3 classes x 2 models
    bottom = figure.axes[0].get_ylim()[0]  # zoomed to the bars, and the label says so
    lowest = min(scores["f1"] for scores in poor_report["per_class"].values())
    assert bottom == pytest.approx(lowest - 0.05) and bottom > 0
    assert figure.axes[0].get_ylabel() == f"F1 (axis from {bottom:.2f})"
    _, zero, zero_report = _report(np.array([1, 1, 1, 1, 1, 1]))  # classes a and c: F1 0
    figure = plots.plot_per_class_f1({"zero": zero_report})
    assert figure.axes[0].get_ylim()[0] == 0 and figure.axes[0].get_ylabel() == "F1"
    figure = plots.plot_reliability({"good": (y_true, good), "poor": (y_true, poor)},
                                    path=tmp_path / "reliability.png")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any(text.startswith("poor (ECE 0.300)") for text in legend)  # 0.8 vs 0.5
    figure = plots.plot_roc_curves(y_true, {"good": good, "poor": poor}, ("a", "b", "c"),
                                   path=tmp_path / "roc.png")
    assert len(figure.axes[0].get_lines()) == 4  # 3 classes + the diagonal
    images = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    figure = plots.show_images(images, ["x", "y", "z"], columns=2,
                               overlays=[np.eye(8)] * 3, path=tmp_path / "grid.png")
    assert [axis.get_title() for axis in figure.axes[:3]] == ["x", "y", "z"]
    for name in ("confusion", "f1", "reliability", "roc", "grid"):
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.format == "PNG"


def test_confident_mistakes_are_the_wrong_ones_most_confident_first():
    predictions = pd.DataFrame({"label": ["a", "a", "b", "b"],
                                "predicted": ["a", "b", "a", "b"],
                                "confidence": [0.99, 0.7, 0.9, 0.6]})
    mistakes = plots.confident_mistakes(predictions, count=5)
    assert mistakes["confidence"].tolist() == [0.9, 0.7]
