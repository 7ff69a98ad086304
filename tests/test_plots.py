import matplotlib
import pandas as pd
from PIL import Image

from helpers import plots

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
