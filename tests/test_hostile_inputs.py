"""Files and settings a user may hand the commands by mistake: each ends in a row with a
reason or one line of error, never a traceback, a hang or a silent acceptance."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import data, evaluate, files, inference, predict, preparation, runtime, split
from helpers.errors import DataError, StaleSplitError
from helpers.labels import CLASS_NAMES
from helpers.runfolder import MARKER, RunFolder
from helpers.tools import notebooks
from helpers.tools import predict as predict_command
from tests.conftest import REPOSITORY

# A file name that is not UTF-8 (Latin-1 from an old system), as Python holds it.
LATIN1_NAME = os.fsdecode(b"neutrophil_caf\xe9.jpg")


def _bad_png() -> bytes:
    """A PNG whose image data fails its CRC: Pillow loads it, TensorFlow does not."""
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "purple").save(buffer, "PNG")
    content = bytearray(buffer.getvalue())
    start = content.index(b"IDAT")
    length = int.from_bytes(content[start - 4:start], "big")
    content[start + 4 + length] ^= 0xFF
    return bytes(content)


@pytest.fixture()
def hostile_folder(synthetic_data):
    """The synthetic dataset plus files the old audit let through or hung on."""
    root, _ = synthetic_data
    Image.new("1", (20, 20)).save(root / "basophil" / "one_bit.bmp", "BMP")
    (root / "eosinophil" / "bad_crc.png").write_bytes(_bad_png())
    os.mkfifo(root / "lymphocyte" / "pipe.jpg")
    (root / "neutrophil" / LATIN1_NAME).write_bytes(
        (root / "neutrophil" / "neutrophil_0001.jpg").read_bytes())
    hidden = root / "monocyte" / ".hidden_cell.jpg"
    Image.new("RGB", (20, 20), "blue").save(hidden)
    expected = {"basophil/one_bit.bmp": "TensorFlow cannot decode",
                "eosinophil/bad_crc.png": "TensorFlow cannot decode",
                "lymphocyte/pipe.jpg": "a FIFO, not a regular file",
                "neutrophil/neutrophil_caf\\xe9.jpg": "not valid UTF-8"}
    return root, expected


def test_the_data_commands_report_each_odd_file_and_keep_it_out_of_the_split(hostile_folder,
                                                                             tmp_path):
    """In a process of its own with a time limit: the old audit waited forever on the FIFO."""
    root, expected = hostile_folder
    index_csv, split_csv = tmp_path / "index.csv", tmp_path / "split.csv"
    result = subprocess.run(
        [sys.executable, "-m", "helpers.data", "audit", str(root), "--index-csv", str(index_csv)],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=90)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert data.main(["split", str(root), "--out", str(split_csv)]) == 0
    index = pd.read_csv(index_csv, keep_default_na=False).set_index("path")
    for path, reason in expected.items():
        assert reason in index.loc[path, "problem"], path
    assert index.loc["monocyte/.hidden_cell.jpg", "problem"] == ""  # hidden, but an image
    in_split = set(split.read_split(split_csv)["path"])
    assert not in_split & set(expected) and "monocyte/.hidden_cell.jpg" in in_split
    excluded = {row["path"]: row["reason"]
                for row in json.loads(split_csv.with_suffix(".json").read_text())["excluded"]}
    assert all(reason in excluded[path] for path, reason in expected.items())
    assert sorted(os.listdir(tmp_path)) == ["index.csv", "pbc", "split.csv", "split.json",
                                            "split_files.csv"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "cnn.keras"
    notebooks.baseline_cnn(16, widths=(4, 8), augment=False, seed=0).save(path)
    inference.write_sidecar(path, label="Baseline CNN", image_size=16,
                            resize_method="bilinear", crop_fraction=0.8)
    return path


def test_predict_and_evaluate_give_each_odd_file_its_reason_and_score_the_rest(
        hostile_folder, saved_model, tmp_path, capsys):
    root, expected = hostile_folder
    out = tmp_path / "predictions.csv"
    assert predict.main([str(saved_model), str(root), "--out", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False)
    rows["path"] = [Path(path).relative_to(root).as_posix() for path in rows["path"]]
    rows = rows.set_index("path")
    for path, reason in expected.items():
        assert reason in rows.loc[path, "problem"], path
    assert rows.loc["monocyte/.hidden_cell.jpg", "class_1"] in CLASS_NAMES
    report_path = tmp_path / "report.json"
    assert evaluate.main([str(saved_model), str(root), "--out", str(report_path)]) == 0
    skipped = {item["path"]: item["reason"]
               for item in json.loads(report_path.read_text())["skipped"]}
    assert all(reason in skipped[path] for path, reason in expected.items())
    assert "Traceback" not in capsys.readouterr().err


def _model_with_sidecar(folder: Path, saved_model: Path, **changes) -> Path:
    path = folder / "model.keras"
    path.write_bytes(saved_model.read_bytes())
    sidecar = json.loads(inference.sidecar_path(saved_model).read_text())
    inference.sidecar_path(path).write_text(json.dumps({**sidecar, **changes}))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 32}, "takes images of shape"),
    ({"resize_method": "nearest-ish"}, "resize_method 'nearest-ish' is none of"),
    ({"class_names": [*CLASS_NAMES[:7], "basophil"]}, "class_names repeats basophil"),
    ({"class_names": [*CLASS_NAMES[:7], 8]}, "class_names must be non-empty strings"),
    ({"crop_fraction": 1e-9}, "crop_fraction must be a number in"),
    ({"crop_fraction": 1.5}, "crop_fraction must be a number in"),
    ({"image_size": True}, "image_size missing or not a whole number"),
    # Outputs read in another order: every figure would swap labels.
    ({"class_names": [CLASS_NAMES[1], CLASS_NAMES[0], *CLASS_NAMES[2:]]},
     f"output 0 '{CLASS_NAMES[1]}' where the study has '{CLASS_NAMES[0]}'"),
    ({"class_names": [*CLASS_NAMES[:7], "band_neutrophil"]},
     "must be the study's 8 classes in its order"),
    ({"class_names": list(reversed(CLASS_NAMES))}, "else every figure would swap labels"),
    # The sidecar of another model file (or the model changed since it was written).
    ({"model_sha256": "0" * 64}, "is not the model model.json was written for"),
])
def test_a_sidecar_that_disagrees_or_is_implausible_is_refused(saved_model, synthetic_source,
                                                               tmp_path, capsys, changes,
                                                               message):
    model = _model_with_sidecar(tmp_path, saved_model, **changes)
    root, _ = synthetic_source
    assert predict.main([str(model), str(root / "basophil")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error


def test_a_model_whose_outputs_are_not_probabilities_is_refused(synthetic_source, tmp_path,
                                                                capsys):
    inputs = keras.Input((16, 16, 3))
    logits = keras.layers.Dense(len(CLASS_NAMES))(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "logits.keras"
    keras.Model(inputs, logits).save(path)
    inference.write_sidecar(path, label="No softmax", image_size=16, resize_method="bilinear",
                            crop_fraction=1.0)
    root, _ = synthetic_source
    assert predict.main([str(path), str(root / "basophil")]) == 1
    assert "not class probabilities" in capsys.readouterr().err
    with pytest.raises(inference.ModelFileError, match="softmax"):
        inference.load_model(path)


def test_outputs_that_stop_being_probabilities_on_some_image_are_refused(tmp_path):
    """A softmax plus relu(mean pixel - 200): probabilities for the grey image of the load
    check, not for a white image. Every batch is checked, not only the first."""
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    softmax = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(pooled)
    bright = keras.layers.Dense(len(CLASS_NAMES), activation="relu", name="bright")(pooled)
    path = tmp_path / "bright.keras"
    model = keras.Model(inputs, keras.layers.Add()([softmax, bright]))
    model.get_layer("bright").set_weights([np.full((3, len(CLASS_NAMES)), 1 / 3),
                                           np.full(len(CLASS_NAMES), -200.0)])
    model.save(path)
    inference.write_sidecar(path, label="Bright breaks it", image_size=16,
                            resize_method="bilinear", crop_fraction=1.0)
    loaded = inference.load_model(path)  # the grey image passes
    images = []
    for name, value in (("grey", 128), ("white", 255)):
        images.append(tmp_path / f"{name}.png")
        Image.new("RGB", (16, 16), (value,) * 3).save(images[-1])
    assert inference.predict_probabilities(loaded, images[:1], batch_size=1).shape == (1, 8)
    with pytest.raises(inference.ModelFileError, match="not class probabilities"):
        inference.predict_probabilities(loaded, images, batch_size=1)


def test_sigmoid_rows_and_more_outputs_than_classes_are_refused(tmp_path):
    # Each value in [0, 1] but rows not summing to 1: a sigmoid head, not class probabilities.
    sigmoid = np.full((2, len(CLASS_NAMES)), 0.5)
    with pytest.raises(inference.ModelFileError, match="rows summing to 4"):
        inference.check_probabilities(sigmoid, tmp_path / "sigmoid.keras")
    inference.check_probabilities(np.full((2, len(CLASS_NAMES)), 1 / len(CLASS_NAMES)),
                                  tmp_path / "softmax.keras")
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(len(CLASS_NAMES) + 1, activation="softmax")(pooled)
    path = tmp_path / "nine.keras"
    keras.Model(inputs, outputs).save(path)
    inference.write_sidecar(path, label="Nine outputs", image_size=16,
                            resize_method="bilinear", crop_fraction=1.0)
    with pytest.raises(inference.ModelFileError, match="9 outputs but"):
        inference.load_model(path)


def test_a_folder_given_as_the_model_is_named_as_a_folder(saved_model, synthetic_source,
                                                          capsys):
    root, _ = synthetic_source
    assert predict.main([str(saved_model.parent), str(root)]) == 1
    error = capsys.readouterr().err
    assert "is a folder" in error and "cnn.keras" in error


def test_a_split_with_a_repeated_row_or_no_seed_is_refused_with_the_way_out(synthetic_source,
                                                                           tmp_path, capsys):
    root, _ = synthetic_source
    split_csv = tmp_path / "split.csv"
    assert data.main(["split", str(root), "--out", str(split_csv)]) == 0
    rows = split_csv.read_text().splitlines(keepends=True)
    split_csv.write_text("".join(rows + rows[1:2]))
    with pytest.raises(StaleSplitError, match="same file in 1 more row"):
        split.read_split(split_csv)
    split_csv.write_text("".join(rows))
    metadata = json.loads(split_csv.with_suffix(".json").read_text())
    del metadata["seed"]
    split_csv.with_suffix(".json").write_text(json.dumps(metadata))
    capsys.readouterr()
    assert data.main(["split", str(root), "--out", str(split_csv)]) == 1
    error = capsys.readouterr().err
    assert "has no seed" in error and "--force" in error and "Traceback" not in error
    assert data.main(["split", str(root), "--out", str(split_csv), "--force"]) == 0


def test_synthetic_refuses_no_images_and_a_folder_of_other_images(tmp_path, capsys):
    assert data.main(["synthetic", str(tmp_path / "none"), "--images-per-class", "0"]) == 1
    assert "at least 1 image per class" in capsys.readouterr().err
    real = tmp_path / "real"
    (real / "basophil").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(real / "basophil" / "BA_100102.jpg")
    assert data.main(["synthetic", str(real)]) == 1
    assert "BA_100102.jpg" in capsys.readouterr().err
    assert [path.name for path in real.rglob("*") if path.is_file()] == ["BA_100102.jpg"]
    # Its own folder again, with fewer images: redrawn, the extra ones gone.
    drawn = tmp_path / "drawn"
    assert data.main(["synthetic", str(drawn), "--images-per-class", "3"]) == 0
    assert data.main(["synthetic", str(drawn), "--images-per-class", "2", "--no-quirks"]) == 0
    assert sorted(path.name for path in (drawn / "basophil").iterdir()) == [
        "basophil_0000.jpg", "basophil_0001.jpg"]
    assert not (drawn / "unknown_folder").exists()  # the planted empty class folder too


def test_a_refused_split_changes_nothing_in_the_run_folder_and_names_the_parameter(tmp_path):
    """Notebook 01's path: synthetic cells drawn from the seed, then the split. With another
    seed the saved split no longer fits: refused before the cells or the audit change."""
    run = RunFolder(tmp_path / "run")
    leftover = run.root / ".synthetic.new-999999"  # of a prepare that was killed
    leftover.mkdir(parents=True)
    preparation.prepare("synthetic", run.root, seed=1, synthetic_images_per_class=3)
    assert not leftover.exists()
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns)
              for path in run.root.rglob("*") if path.is_file()}
    with pytest.raises(StaleSplitError) as refused:
        preparation.prepare("synthetic", run.root, seed=2, synthetic_images_per_class=3)
    assert "NEW_SPLIT = True" in str(refused.value)
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns)
             for path in run.root.rglob("*") if path.is_file()}
    assert after == before
    assert sorted(path.name for path in run.root.iterdir()) == [".blood-cell-study-run", "data",
                                                                "synthetic"]
    preparation.prepare("synthetic", run.root, seed=2, synthetic_images_per_class=3, force=True)
    assert json.loads(run.split_metadata.read_text())["seed"] == 2


def test_a_synthetic_draw_among_a_run_folders_files_is_refused_but_its_own(tmp_path):
    victim = RunFolder(tmp_path / "victim")
    preparation.prepare("synthetic", victim.root, synthetic_images_per_class=3)

    def contents(root):
        return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    before = contents(victim.root)
    thief = RunFolder(tmp_path / "thief")
    # Another run's images (which it reads), its data, or this run's own data folder.
    for folder in (victim.synthetic_data, victim.root / "data", thief.root / "data"):
        with pytest.raises(DataError, match="lies among the files of the run folder"):
            preparation.prepare("synthetic", thief.root, data_dir=folder, seed=5,
                                synthetic_images_per_class=4)
        assert contents(victim.root) == before and not thief.split_csv.exists()
    # Its own synthetic folder, named or not, is where it draws.
    preparation.prepare("synthetic", thief.root, data_dir=thief.synthetic_data)
    preparation.prepare("synthetic", victim.root, synthetic_images_per_class=3)
    assert contents(victim.root).keys() == before.keys()


def test_an_empty_run_folder_name_is_refused_and_a_tilde_is_the_home(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)  # "" would have made the current folder a run folder
    for empty in ("", "  "):
        assert data.main(["prepare", "--source", "synthetic", "--run-dir", empty]) == 1
        assert "empty name" in capsys.readouterr().err
        with pytest.raises(DataError, match="empty name"):
            runtime.run_folder(empty, use_google_drive=False, is_colab=False)
    assert list(tmp_path.iterdir()) == []
    # "." in the repository: the repository itself; ~ of no user.
    monkeypatch.chdir(REPOSITORY)
    for name, refusal in ((".", "is the repository itself"),
                          ("~no-such-user-here/run", "~no-such-user-here/run: ")):
        assert data.main(["prepare", "--source", "synthetic", "--run-dir", name]) == 1
        assert refusal in capsys.readouterr().err
    with pytest.raises(DataError, match="is the repository itself"):
        runtime.run_folder(".", use_google_drive=False, is_colab=False)
    assert not (REPOSITORY / MARKER).exists()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.main(["prepare", "--source", "synthetic", "--images-per-class", "2",
                      "--run-dir", "~/runs/x"]) == 0
    assert RunFolder(tmp_path / "home" / "runs" / "x").split_csv.exists()
    assert not (tmp_path / "~").exists()


def test_a_non_utf8_name_given_on_the_command_line_is_one_line(saved_model, tmp_path, capsys):
    missing = tmp_path / LATIN1_NAME
    assert predict.main([str(saved_model), str(missing)]) == 1
    assert "caf\\xe9" in capsys.readouterr().err
    with pytest.raises(DataError):
        predict_command.input_files([missing])


def test_outputs_inside_the_inputs_and_a_synthetic_folder_under_a_file_are_refused(
        saved_model, synthetic_source, tmp_path, capsys):
    root, _ = synthetic_source
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    cases = [predict.main([str(saved_model), str(root), "--out", str(root / "predictions.csv")]),
             data.main(["split", str(root), "--out", str(root / "split.csv")]),
             data.main(["synthetic", str(a_file / "cells")]),
             data.main(["synthetic", str(a_file)])]
    assert cases == [1, 1, 1, 1]
    errors = capsys.readouterr().err
    assert errors.count("error: ") == 4 and "Traceback" not in errors
    assert not (root / "predictions.csv").exists() and not (root / "split.csv").exists()
    with pytest.raises(SystemExit):  # argparse: a usage line and the reason
        data.main(["split", str(root), "--out", str(tmp_path / "s.csv"), "--seed", "-1"])
    assert "-1 is negative" in capsys.readouterr().err


def test_names_that_are_formulas_or_terminal_escapes_are_neutralised(saved_model,
                                                                     synthetic_source,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    root, _ = synthetic_source
    image = next((root / "basophil").glob("*.jpg")).read_bytes()
    folder = tmp_path / "cells" / "basophil"
    folder.mkdir(parents=True)
    names = ['=HYPERLINK("example.invalid","x").jpg', "+1.jpg", "@cell.jpg",
             "\x1b[2J\x1b[Hcleared.jpg", "line\rreturn.jpg"]
    for name in names:
        (folder / name).write_bytes(image)
    out = tmp_path / "predictions.csv"
    monkeypatch.chdir(folder)  # relative inputs: the CSV's cells are the names themselves
    assert predict.main([str(saved_model), *names, "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\r" not in shown
    assert "\\x1b[2J\\x1b[Hcleared.jpg" in shown and "line\\x0dreturn.jpg" in shown
    # In the CSV no cell starts as a formula: each such name is prefixed with an apostrophe.
    cells = pd.read_csv(out, keep_default_na=False)["path"].tolist()
    assert f"'{names[0]}" in cells and "'+1.jpg" in cells and "'@cell.jpg" in cells
    assert not any(str(cell).startswith(predict_command.FORMULA_STARTS) for cell in cells)
    assert "line\rreturn.jpg" in cells and len(cells) == len(names)  # one row per image


def test_terminal_text_escapes_control_characters_and_keeps_the_rest():
    assert files.terminal_text("basophil/BA_1.jpg") == "basophil/BA_1.jpg"
    assert files.terminal_text("ü 細胞.jpg") == "ü 細胞.jpg"
    assert files.terminal_text("a\nb\tc\x1b\x7f\u202e.jpg") == "a\\x0ab\\x09c\\x1b\\x7f\\u202e.jpg"


def test_special_files_are_named_for_what_they_are(tmp_path):
    assert files.file_kind("/dev/null") == "device"  # a character device
    block = next((path for path in Path("/dev").iterdir() if path.is_block_device()), None)
    if block is None:
        pytest.skip("no block device under /dev on this machine")
    assert files.file_kind(block) == "device"
    os.mkfifo(tmp_path / "pipe")
    assert files.file_kind(tmp_path / "pipe") == "FIFO"
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert files.file_kind(tmp_path / "gone") == "link to nothing"
