"""The published figures notebook 5 prints beside the run's own."""

import math

from helpers import published


def test_this_runs_models_come_first_in_the_column_of_their_input_size():
    table = published.with_this_run({"CNN": ("random", 64, 0.98941),
                                     "ResNet50, ImageNet": ("ImageNet", 96, 0.99)})
    assert table["source"].tolist()[:2] == ["this run (its own split)"] * 2
    assert table.loc[0, "64 px"] == 98.94 and math.isnan(table.loc[0, "128 px"])
    # 96 px is no column of BloodMNIST's: the nearest below, the size named.
    assert table.loc[1, "model"] == "ResNet50, ImageNet (96 px)"
    assert table.loc[1, "64 px"] == 99.0
    # Under BloodMNIST's smallest size: its column, never the largest.
    tiny = published.with_this_run({"CNN": ("random", 16, 0.5)})
    assert tiny.loc[0, "28 px"] == 50.0 and tiny.loc[0, "model"] == "CNN (16 px)"
    assert len(table) == 2 + len(published.PUBLISHED) + len(published.ORIGINALS)
    text = published.table_text(table)
    assert "nan" not in text and "98.94" in text


def test_each_published_row_has_a_figure_per_resolution_or_one_on_the_originals():
    table = published.published_table()
    sizes = [f"{size} px" for size in published.RESOLUTIONS]
    for _, row in table.iterrows():
        filled = row[sizes].notna().sum()
        assert (filled, row["originals"] == row["originals"]) in ((4, False), (0, True))
    # The linear probe on a frozen backbone at 64 px: the figure the earlier 66% sits near.
    probe = table[table["weights, training"] == "ImageNet, frozen, linear head"]
    assert probe["64 px"].tolist() == [67.15]
    assert all(f"[{number}]" in published.CITATIONS for number in (1, 2, 3))


def test_notebook_4_quotes_the_published_range_of_fine_tuned_imagenet_models():
    import nbformat

    from tests.conftest import REPOSITORY

    at_224 = [row[3][-1] for row in published.PUBLISHED if "fine-tuned" in row[2]]
    originals = max(row[3] for row in published.ORIGINALS if "fine-tuned" in row[2])
    quoted = (f"{min(at_224):.1f}-{max(at_224):.1f}% on BloodMNIST (these images at "
              f"{published.RESOLUTIONS[-1]} px) and {originals:.1f}%")
    notebook = nbformat.read(REPOSITORY / "notebooks" / "04_train_resnet50.ipynb", as_version=4)
    assert quoted in " ".join(notebook.cells[0].source.split())
