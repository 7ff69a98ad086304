import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import acquire, audit, data, preparation, runfolder, runtime, split, synthetic
from helpers.errors import DataError, DataSourceError, StaleSplitError
from helpers.labels import CLASS_NAMES
from helpers.runfolder import RunFolder
from helpers.tools import study
from tests.conftest import REPOSITORY


@pytest.fixture()
def made_split(synthetic_audit, tmp_path):
    split_csv = tmp_path / "split.csv"
    return split.make_split(synthetic_audit, split_csv, seed=7), split_csv


def test_no_content_in_two_splits_and_conflicts_in_none(made_split, synthetic_source):
    result, _ = made_split
    _, planted = synthetic_source
    splits_per_hash = result.split.groupby("sha256")["split"].nunique()
    assert splits_per_hash.max() == 1
    assert not result.split["sha256"].duplicated().any()
    assert planted["cross_class"] not in set(result.split["path"])
    assert planted["cross_class_of"] not in set(result.split["path"])


def test_stratified_within_one_image(made_split):
    result, _ = made_split
    for label in CLASS_NAMES:
        counts = result.split.loc[result.split["label"] == label, "split"].value_counts()
        total = counts.sum()
        for name, fraction in split.SPLIT_FRACTIONS.items():
            assert abs(counts.get(name, 0) - fraction * total) <= 1, (label, name)


def test_proportions_on_many_class_sizes():
    for n in [1, 2, 3, 7, 10, 33, 101, 1000]:
        images = pd.DataFrame({"path": [f"basophil/{i}.jpg" for i in range(n)],
                               "label": "basophil",
                               "sha256": [f"{i:064x}" for i in range(n)]})
        counts = split.assign_splits(images, seed=1)["split"].value_counts()
        for name, fraction in split.SPLIT_FRACTIONS.items():
            assert abs(counts.get(name, 0) - fraction * n) <= 1, (n, name)


def test_every_file_is_in_the_split_or_excluded_with_a_reason(made_split, synthetic_audit,
                                                               synthetic_source):
    result, split_csv = made_split
    _, planted = synthetic_source
    assert len(result.split) + len(result.excluded) == synthetic_audit.summary["n_files"]
    reasons = result.excluded.set_index("path")["reason"]
    assert reasons[planted["duplicate"]] == f"duplicate of {planted['duplicate_of']}"
    assert "two classes" in reasons[planted["cross_class"]]
    assert "not an image" in reasons[planted["not_image"]]
    assert "corrupt" in reasons[planted["corrupt"]]
    metadata = json.loads(split.metadata_path(split_csv).read_text())
    assert metadata["seed"] == 7
    assert {row["path"] for row in metadata["excluded"]} == set(reasons.index)


def test_same_seed_gives_a_byte_identical_file_and_another_seed_does_not(synthetic_audit,
                                                                         tmp_path):
    paths = {name: tmp_path / f"{name}.csv" for name in ["a", "b", "c"]}
    split.make_split(synthetic_audit, paths["a"], seed=3)
    split.make_split(synthetic_audit, paths["b"], seed=3)
    split.make_split(synthetic_audit, paths["c"], seed=4)
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()
    assert paths["a"].read_text().splitlines()[0] == "path,label,sha256,split"


def test_each_subset_gets_its_share_rounded_to_the_nearest_image():
    # 5 images: 3.5 -> 4 in train, 0.75 -> 1 in validation, none left for test; 7: 5/1/1.
    for n, expected in [(5, {"train": 4, "validation": 1}),
                        (7, {"train": 5, "validation": 1, "test": 1})]:
        images = pd.DataFrame({"path": [f"basophil/{i}.jpg" for i in range(n)],
                               "label": "basophil", "sha256": [f"{i:064x}" for i in range(n)]})
        assert split.assign_splits(images, seed=1)["split"].value_counts().to_dict() == expected


def test_a_split_depends_on_content_and_seed_not_on_file_names():
    images = pd.DataFrame({"path": [f"ig/{i:02d}.jpg" for i in range(20)], "label": "ig",
                           "sha256": [f"{i:064x}" for i in range(20)]})
    renamed = images.assign(path=[f"ig/renamed_{19 - i:02d}.jpg" for i in range(20)])
    by_content = [split.assign_splits(frame, seed=3).set_index("sha256")["split"].sort_index()
                  for frame in (images, renamed)]
    pd.testing.assert_series_equal(*by_content)


def test_the_default_seed_and_fractions_are_notebook_01s():
    # A split made on the command line is then the one notebook 01 would make, and reused.
    declared = study.declared_parameters(REPOSITORY / "notebooks" / "01_data.ipynb")
    assert declared["SPLIT_SEED"][1] == split.DEFAULT_SEED
    assert declared["SPLIT_FRACTIONS"][1] == split.SPLIT_FRACTIONS


def test_split_does_not_depend_on_file_order(synthetic_audit):
    images, _ = split.select_images(synthetic_audit.index)
    shuffled = images.sample(frac=1, random_state=np.random.RandomState(0))
    pd.testing.assert_frame_equal(split.assign_splits(images, 5), split.assign_splits(shuffled, 5))


def test_selection_of_a_folder_with_no_copies_or_no_usable_image(synthetic_audit):
    """Empty parts of the selection (no copies, nothing usable) under every pandas the
    requirements admit: pandas 2.2 gave empty columns another dtype and failed here."""
    index = synthetic_audit.index
    all_images, all_excluded = split.select_images(index)
    copies = all_excluded["reason"].str.startswith(split.DUPLICATE_OF)
    assert copies.sum() == 1
    without_copies = index[~index["path"].isin(all_excluded.loc[copies, "path"])]
    images, excluded = split.select_images(without_copies)
    pd.testing.assert_frame_equal(images, all_images)
    assert not excluded["reason"].str.startswith(split.DUPLICATE_OF).any()
    unusable = index[~split.usable_mask(index)]
    images, excluded = split.select_images(unusable)
    assert images.empty and sorted(excluded["path"]) == sorted(unusable["path"])
    assert all(isinstance(reason, str) and reason for reason in excluded["reason"])


def test_saved_split_is_reused_when_data_unchanged(made_split, synthetic_audit):
    result, split_csv = made_split
    before = split_csv.read_bytes()
    again = split.make_split(synthetic_audit, split_csv, seed=7)
    assert again.reused
    pd.testing.assert_frame_equal(again.split, result.split)
    assert split_csv.read_bytes() == before


@pytest.mark.parametrize("change, expected", [
    ("add", "new on disk"), ("remove", "no longer on disk"), ("modify", "changed content"),
])
def test_stale_split_is_detected(synthetic_data, tmp_path, change, expected):
    root, _ = synthetic_data
    split_csv = tmp_path / "split.csv"
    split.make_split(audit.audit(root), split_csv, seed=7)
    target = root / "ig" / "ig_0003.jpg"
    if change == "add":
        pixels = synthetic.make_cell_image("ig", 48, np.random.default_rng(99))
        Image.fromarray(pixels).save(root / "ig" / "ig_new.jpg")
    elif change == "remove":
        target.unlink()
    else:
        (root / "ig" / "ig_0004.jpg").replace(target)
    with pytest.raises(StaleSplitError, match=expected):
        split.make_split(audit.audit(root), split_csv, seed=7)
    forced = split.make_split(audit.audit(root), split_csv, seed=7, force=True)
    assert not forced.reused


def test_other_seed_than_the_saved_split_is_an_error(made_split, synthetic_audit):
    _, split_csv = made_split
    with pytest.raises(StaleSplitError, match="seed 7"):
        split.make_split(synthetic_audit, split_csv, seed=8)


def test_the_fractions_asked_for_are_the_split_made_and_recorded(synthetic_audit, tmp_path):
    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    split_csv = tmp_path / "split.csv"
    result = split.make_split(synthetic_audit, split_csv, seed=7, fractions=fractions)
    for label in CLASS_NAMES:
        counts = result.split.loc[result.split["label"] == label, "split"].value_counts()
        for name, fraction in fractions.items():
            assert abs(counts.get(name, 0) - fraction * counts.sum()) <= 1, (label, name)
    assert json.loads(split.metadata_path(split_csv).read_text())["fractions"] == fractions
    assert split.make_split(synthetic_audit, split_csv, seed=7, fractions=fractions).reused
    # Other fractions than the saved split's: refused, saying which, unless forced.
    with pytest.raises(StaleSplitError, match="fractions"):
        split.make_split(synthetic_audit, split_csv, seed=7)
    assert not split.make_split(synthetic_audit, split_csv, seed=7, force=True).reused


@pytest.mark.parametrize("fractions", [
    {"train": 0.7, "validation": 0.2}, {"train": 0.7, "validation": 0.2, "test": 0.2},
    {"train": 1.0, "validation": 0.0, "test": 0.0}, {"train": "0.7", "validation": 0.15,
                                                     "test": 0.15}, [0.7, 0.15, 0.15]])
def test_fractions_that_are_not_three_shares_of_one_are_refused(fractions, synthetic_audit,
                                                                 tmp_path):
    with pytest.raises(DataError, match="SPLIT_FRACTIONS"):
        split.make_split(synthetic_audit, tmp_path / "split.csv", fractions=fractions)
    assert not (tmp_path / "split.csv").exists()


def test_malformed_split_file_is_an_error(tmp_path, synthetic_audit):
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("file,class\na.jpg,ig\n")
    with pytest.raises(StaleSplitError, match="columns"):
        split.make_split(synthetic_audit, split_csv)


def test_empty_split_file_and_a_tree_without_images_are_clear_errors(tmp_path,
                                                                      synthetic_audit):
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("")
    with pytest.raises(StaleSplitError, match="empty or not a CSV"):
        split.make_split(synthetic_audit, split_csv)
    empty = tmp_path / "empty"
    for label in CLASS_NAMES:
        (empty / label).mkdir(parents=True)
    (empty / "ig" / "notes.jpg").write_text("not an image")
    with pytest.raises(DataError, match="No usable image") as refused:
        split.make_split(audit.audit(empty), tmp_path / "other.csv")
    assert "ig/notes.jpg: not an image" in str(refused.value)  # no report was written yet


def test_split_output_never_replaces_other_files(synthetic_source, tmp_path, capsys):
    root, _ = synthetic_source
    unrelated = tmp_path / "notes.json"
    unrelated.write_text('{"mine": true}')
    assert data.main(["split", str(root), "--out", str(tmp_path / "notes.csv")]) == 1
    assert "is not a split's metadata" in capsys.readouterr().err
    assert data.main(["split", str(root), "--out", str(tmp_path / "notes.txt")]) == 1
    assert "the split is a .csv file" in capsys.readouterr().err
    assert unrelated.read_text() == '{"mine": true}' and not (tmp_path / "notes.txt").exists()
    mine = tmp_path / "table_files.csv"  # where the split table.csv would record its files
    mine.write_text("name,value\nx,1\n")
    assert data.main(["split", str(root), "--out", str(tmp_path / "table.csv")]) == 1
    assert "is not a split's record of its files" in capsys.readouterr().err
    assert mine.read_text() == "name,value\nx,1\n" and not (tmp_path / "table.csv").exists()
    other = tmp_path / "other.csv"  # a CSV of something else: --force replaces splits only
    other.write_text("name,value\nx,1\n")
    for force in ([], ["--force"]):
        assert data.main(["split", str(root), "--out", str(other), *force]) == 1
        error = capsys.readouterr().err
        assert "exists and is not a split" in error and "--force" not in error
    assert other.read_text() == "name,value\nx,1\n"


def test_a_split_with_an_empty_subset_is_written_with_a_warning(tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    assert data.main(["prepare", "--source", "synthetic", "--images-per-class", "2",
                      "--run-dir", str(run.root)]) == 0  # of 2 or 3: none in validation
    assert "Warning: the split has no validation images" in capsys.readouterr().out
    with pytest.raises(DataError, match="no images in subset 'validation'"):
        split.subset_rows(split.read_split(run.split_csv), "validation")
    assert data.main(["prepare", "--source", "synthetic", "--images-per-class", "12",
                      "--run-dir", str(tmp_path / "enough")]) == 0
    assert "Warning" not in capsys.readouterr().out


def test_split_command(synthetic_source, tmp_path, capsys):
    root, _ = synthetic_source
    split_csv = tmp_path / "out" / "split.csv"
    assert data.main(["split", str(root), "--out", str(split_csv), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Wrote a new split" in printed and "validation" in printed
    assert list(split.read_split(split_csv).columns) == ["path", "label", "sha256", "split"]
    assert data.main(["split", str(root), "--out", str(split_csv), "--seed", "3"]) == 0
    assert "Reused the saved split" in capsys.readouterr().out
    assert data.main(["split", str(root), "--out", str(split_csv), "--seed", "4"]) == 1
    assert "seed 3" in capsys.readouterr().err


def test_a_run_folder_inside_a_downloaded_data_folder_is_refused_before_the_split(
        synthetic_source, tmp_path, monkeypatch, capsys):
    # Where a download landed is checked again once it is there (Colab resolves Kaggle's elsewhere).
    download = tmp_path / "download"
    shutil.copytree(synthetic_source[0], download)
    monkeypatch.setattr(acquire, "acquire", lambda source, **options: download)
    run = RunFolder(download / "basophil" / "myrun")
    for source in ("kaggle", "medmnist"):
        assert data.main(["prepare", "--source", source, "--run-dir", str(run.root)]) == 1
        assert "lies inside the data folder" in capsys.readouterr().err
        assert not run.split_csv.exists() and not run.audit_json.exists()


def test_a_run_folder_inside_a_download_folder_to_be_is_refused_before_anything_is_made(
        tmp_path, monkeypatch, capsys):
    # Where kagglehub and the Zenodo download will put the images is known before they come.
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(acquire, "acquire", lambda *arguments, **options: pytest.fail("acquired"))
    kaggle = tmp_path / "kagglehub" / "datasets" / "unclesamulus" / "blood-cells-image-dataset"
    cache = tmp_path / "cache"
    for source, run_dir in (("kaggle", kaggle / "versions" / "1" / "run"),
                            ("medmnist", cache / "bloodmnist_64" / "run")):
        assert data.main(["prepare", "--source", source, "--cache-dir", str(cache),
                          "--medmnist-size", "64", "--run-dir", str(run_dir)]) == 1
        assert "lies inside the data folder" in capsys.readouterr().err
        assert not tmp_path.joinpath("kagglehub").exists() and not cache.exists()
    # Beside the download, the run folder is made and the download tried.
    def offline(*arguments, **options):
        raise DataSourceError("offline")
    monkeypatch.setattr(acquire, "acquire", offline)
    assert data.main(["prepare", "--source", "medmnist", "--cache-dir", str(cache),
                      "--medmnist-size", "64", "--run-dir", str(cache / "bloodmnist_64-run")]
                     ) == 1
    assert "offline" in capsys.readouterr().err and (cache / "bloodmnist_64-run").is_dir()


def test_notebook_01s_cells_make_nothing_before_the_download_folder_is_checked(
        tmp_path, monkeypatch):
    # Its setup cell names the run folder (runtime.run_folder); the data cell prepares.
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(acquire, "acquire", lambda *arguments, **options: pytest.fail("acquired"))
    inside = acquire.destination("kaggle") / "versions" / "1" / "run"
    run = runtime.run_folder(inside, use_google_drive=False, is_colab=False)
    with pytest.raises(DataError, match="lies inside the data folder"):
        preparation.prepare("kaggle", run.root)
    assert not (tmp_path / "kagglehub").exists()
    outer = tmp_path / "outer"
    runfolder.mark(outer)
    with pytest.raises(DataError, match="inside the run folder"):
        runtime.run_folder(outer / "figures" / "run", use_google_drive=False, is_colab=False)
    assert not (outer / "figures").exists()


def test_a_failed_prepare_leaves_no_run_folder_mark(tmp_path, capsys):
    # A mark left by a typo would refuse every run folder made inside that folder later.
    project = tmp_path / "project"
    project.mkdir()
    assert data.main(["prepare", "--source", "local", "--data-dir", str(tmp_path / "typo"),
                      "--run-dir", str(project)]) == 1
    assert "not found" in capsys.readouterr().err
    assert list(project.iterdir()) == []
    assert data.main(["prepare", "--source", "synthetic", "--images-per-class", "4",
                      "--run-dir", str(project / "run1")]) == 0
    assert data.main(["prepare", "--source", "synthetic", "--run-dir",
                      str(project / "run1" / "inner")]) == 1
    assert f"remove its {runfolder.MARKER} file" in capsys.readouterr().err
    # Nor is a run folder made around one (two levels down: a folder of runs, a project).
    for outer in (project / "run1", project):
        assert data.main(["prepare", "--source", "synthetic", "--run-dir", str(outer.parent)]
                         ) == 1
        assert "holds the run folder" in capsys.readouterr().err
    assert not (tmp_path / runfolder.MARKER).exists()


def test_preparing_a_run_folder_inside_the_data_folder_is_refused_before_anything_is_made(
        synthetic_source, capsys):
    root, _ = synthetic_source
    run_dir = root / "basophil" / "myrun"
    assert data.main(["prepare", "--source", "local", "--data-dir", str(root),
                      "--run-dir", str(run_dir)]) == 1
    assert "lies inside the data folder" in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize("change, expected", [
    # One content under two names, one in train and one in test: a test image trained on.
    (lambda rows: rows.assign(sha256=[rows["sha256"].iloc[0]] * 2 + rows["sha256"][2:].tolist()),
     "same content in 1 more row"),
    # A subset name no reader asks for: its images would silently be in no subset.
    (lambda rows: rows.assign(split=["tst"] + rows["split"][1:].tolist()),
     r"unknown split names \['tst'\]"),
])
def test_a_split_file_with_a_repeated_content_or_an_unknown_subset_is_refused(
        tmp_path, change, expected):
    rows = pd.DataFrame({"path": ["ig/a.jpg", "ig/b.jpg", "ig/c.jpg"],
                         "label": ["ig"] * 3, "sha256": ["1" * 64, "2" * 64, "3" * 64],
                         "split": ["train", "test", "validation"]})
    split_csv = tmp_path / "split.csv"
    rows.to_csv(split_csv, index=False)
    assert len(split.read_split(split_csv)) == 3  # as written: accepted
    change(rows).to_csv(split_csv, index=False)
    with pytest.raises(StaleSplitError, match=expected):
        split.read_split(split_csv)
