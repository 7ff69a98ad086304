"""Half-resolution copies and the figures of the resolution check (helpers.resolution).

The check itself, on the smoke study's models, is in test_smoke_study.py.
"""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import half_resolution, resolution
from helpers.tools import resolution as resolution_command
from tests.conftest import real_data


def _jpeg(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("size, half", [((360, 363), (180, 182)), ((366, 369), (183, 184)),
                                        ((1, 3), (1, 2)), ((363, 360), (182, 180))])
def test_a_half_resolution_copy_is_a_jpeg_of_half_each_side_rounded(tmp_path, size, half):
    source = tmp_path / "cell.jpg"
    source.write_bytes(_jpeg(*size))
    with Image.open(io.BytesIO(half_resolution.half_resolution_bytes(source))) as copy:
        assert (copy.format, copy.size) == ("JPEG", half)


def test_half_resolution_copies_are_made_exactly_as_the_development_data_was():
    originals = sorted(real_data("pbc_fullres_sample").glob("*/*"))[::16]
    development = real_data("pbc_dev")
    for original in originals:
        copy = Image.open(io.BytesIO(half_resolution.half_resolution_bytes(original)))
        made = Image.open(development / original.parent.name / original.name)
        np.testing.assert_array_equal(np.asarray(copy.convert("RGB")),
                                      np.asarray(made.convert("RGB")), err_msg=str(original))


def test_copies_keep_the_order_and_apart_the_equal_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").write_bytes(_jpeg(40 if folder == "a" else 60, 20))
    copies = half_resolution.half_resolution_copies(
        [tmp_path / "b" / "same.jpg", tmp_path / "a" / "same.jpg"], tmp_path / "copies")
    assert [Image.open(copy).size for copy in copies] == [(30, 10), (20, 10)]


def test_agreement_counts_the_images_whose_class_changed():
    y_true = np.array([0, 1, 2, 2])
    original = np.eye(3)[[0, 1, 2, 1]]  # three right
    half = np.eye(3)[[0, 2, 2, 1]]  # two right; image 1 changed
    assert half_resolution.agreement_figures(y_true, original, half) == {
        "n_images": 4, "accuracy_original": 0.75, "accuracy_half": 0.5, "agreement": 0.75,
        "changed": 1}


def test_images_are_matched_to_the_split_by_name_by_content_and_through_duplicates(tmp_path):
    names = ["IG/x.jpg", "platelet/x.jpg", "ig/new.jpg", "ig/copy.jpg", "ig/dropped.jpg"]
    images = pd.DataFrame({"path": [str(tmp_path / name) for name in names],
                           "label": ["ig", "platelet", "ig", "ig", "ig"],
                           "sha256": ["a", "b", "c", "d-same-as-other", "e"]})
    split = pd.DataFrame({"path": ["ig/x.jpg", "platelet/x.jpg", "ig/other.jpg"],
                          "label": ["ig", "platelet", "ig"],
                          "sha256": ["a2", "b2", "d-same-as-other"],
                          "split": ["train", "test", "validation"]})
    excluded = [{"path": "ig/dropped.jpg", "label": "ig", "reason": "duplicate of ig/x.jpg"},
                {"path": "ig/new.jpg", "label": "ig",
                 "reason": "same content under two classes: label unknown"}]
    # IG/x.jpg: the class folder in another case is the same class.
    assert half_resolution.split_of_images(images, split, excluded).tolist() == [
        "train", "test", "not in the split", "validation", "train"]


def test_models_of_another_run_folder_are_refused(tmp_path):
    from helpers.errors import DataError
    from helpers.runfolder import RunFolder, mark

    for name in ("one", "two"):
        mark(tmp_path / name)
        (tmp_path / name / "models").mkdir()
        (tmp_path / name / "models" / "cnn.keras").write_bytes(b"")
    resolution_command.check_models_of_run([tmp_path / "one" / "models" / "cnn.keras",
                                    tmp_path / "elsewhere.keras"], RunFolder(tmp_path / "one"))
    with pytest.raises(DataError, match="belongs to the run folder"):
        resolution_command.check_models_of_run([tmp_path / "two" / "models" / "cnn.keras"],
                                       RunFolder(tmp_path / "one"))


def test_the_command_needs_a_model_and_a_folder_and_names_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        resolution.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert resolution.main([str(tmp_path / "none.keras"), str(tmp_path)]) == 1
    assert "Model file not found" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    assert resolution.main([str(tmp_path / "none.keras"), str(tmp_path / "data"),
                            "--out", str(tmp_path / "data" / "out.json")]) == 1
    assert "input" in capsys.readouterr().err
    assert resolution.main([str(tmp_path / "none.keras"), str(tmp_path / "data"),
                            "--run", str(tmp_path / "no-run")]) == 1
    assert "No split" in capsys.readouterr().err


def test_the_check_scores_each_model_on_the_originals_and_on_their_half_copies(tmp_path,
                                                                              monkeypatch):
    from types import SimpleNamespace

    paths = []
    for index in range(4):
        path = tmp_path / f"a{index}.jpg"
        path.write_bytes(_jpeg(200, 202))
        paths.append(str(path))
    images = pd.DataFrame({"path": paths, "label": ["a"] * 4, "sha256": list("wxyz"),
                           "split": ["train", "train", "test", "validation"]})

    def width(path) -> int:
        with Image.open(path) as image:
            return image.size[0]

    def by_width(loaded, files, progress):  # right at full size, wrong at half
        return np.eye(2)[[0 if width(path) > 150 else 1 for path in files]]

    monkeypatch.setattr(half_resolution.inference, "predict_probabilities", by_width)
    model = SimpleNamespace(class_names=("a", "b"), label="Sized", path=tmp_path / "m.keras")
    table = half_resolution.resolution_check([model], images, root=tmp_path)
    assert table["images"].tolist() == ["all images", "not trained on"]
    assert table["n_images"].tolist() == [4, 2]
    assert table["original"].tolist() == ["200x202"] * 2
    assert table["half"].tolist() == ["100x101"] * 2
    assert table["accuracy_original"].tolist() == [1.0, 1.0]
    assert table["accuracy_half"].tolist() == [0.0, 0.0] and table["changed"].tolist() == [4, 2]
    assert table["file"].tolist() == ["m.keras"] * 2
    # Of images all trained on, or none: one group, the images all counted once.
    for subset in ("train", "test"):
        table = half_resolution.resolution_check([model], images.assign(split=subset))
        assert table["images"].tolist() == ["all images"] and table["n_images"].tolist() == [4]
