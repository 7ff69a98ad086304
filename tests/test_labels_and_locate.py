from pathlib import Path

import pytest

from helpers.errors import DataLayoutError
from helpers.labels import CLASS_NAMES, canonical_label
from helpers.locate import class_folders, find_data_root


def test_class_names_are_alphabetical_like_bloodmnist():
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert len(CLASS_NAMES) == 8


@pytest.mark.parametrize("name, label", [
    ("basophil", "basophil"), ("IG", "ig"), (" Neutrophils ", "neutrophil"),
    ("immature-granulocytes", "ig"), ("Immature granulocytes", "ig"), ("platelets", "platelet"),
    ("notes", None), ("__MACOSX", None), ("", None),
])
def test_canonical_label(name, label):
    assert canonical_label(name) == label


def _make_classes(root: Path, names=CLASS_NAMES) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_finds_nested_root_and_ignores_macos_mirror(tmp_path):
    root = tmp_path / "download" / "versions" / "1" / "bloodcells_dataset"
    _make_classes(root)
    _make_classes(tmp_path / "download" / "__MACOSX" / "bloodcells_dataset")
    assert find_data_root(tmp_path / "download") == root
    assert find_data_root(root) == root


def test_two_copies_of_the_data_are_an_error_naming_both(tmp_path):
    _make_classes(tmp_path / "copy_a")
    _make_classes(tmp_path / "copy_b")
    with pytest.raises(DataLayoutError, match="Several folders") as error:
        find_data_root(tmp_path)
    assert "copy_a" in str(error.value) and "copy_b" in str(error.value)


def test_the_folder_with_more_classes_wins(tmp_path):
    _make_classes(tmp_path / "full")
    _make_classes(tmp_path / "partial", CLASS_NAMES[:3])
    assert find_data_root(tmp_path) == tmp_path / "full"


def test_no_class_folders_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataLayoutError, match="No class folders"):
        find_data_root(tmp_path)


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataLayoutError, match="not found"):
        find_data_root(tmp_path / "nowhere")


def test_class_folders_maps_spellings(tmp_path):
    _make_classes(tmp_path, ["Basophil", "IG", "unknown"])
    assert class_folders(tmp_path) == {"Basophil": "basophil", "IG": "ig"}
