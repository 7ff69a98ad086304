"""A run reads the images its split recorded: changed, missing and added images are named and
refused; moved run and data folders keep working (helpers.integrity, RunFolder.load_split)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from helpers import audit, files, preparation, split
from helpers.errors import DataError, StaleSplitError
from helpers.runfolder import RunFolder


@pytest.fixture()
def prepared(synthetic_data, tmp_path) -> tuple[RunFolder, Path]:
    """A run folder whose split was made from a private copy of the synthetic data."""
    root, _ = synthetic_data
    run = RunFolder(tmp_path / "run")
    preparation.prepare("local", run.root, data_dir=root)
    return run, root


def _refusal(run: RunFolder) -> str:
    with pytest.raises(StaleSplitError) as caught:
        run.load_split()
    return str(caught.value)


def test_unchanged_images_load_and_their_place_is_recorded_both_ways(prepared):
    run, root = prepared
    frame, data_root = run.load_split()
    assert data_root == root.resolve() and len(frame) > 0
    metadata = json.loads(run.split_metadata.read_text())
    assert metadata["data_root"] == str(root.resolve())
    assert (run.root / metadata["data_root_relative"]).resolve() == root.resolve()
    status = pd.read_csv(run.split_files)
    assert sorted(status["path"]) == sorted(frame["path"])
    assert (status["bytes"] > 0).all()


def test_an_image_replaced_by_another_class_is_named_with_the_way_out(prepared):
    run, root = prepared
    frame, _ = run.load_split()
    test_image = frame[frame["split"] == "test"].iloc[0]
    other = frame[frame["label"] != test_image["label"]].iloc[0]
    shutil.copyfile(root / other["path"], root / test_image["path"])
    message = _refusal(run)
    assert "1 image file(s) changed" in message and test_image["path"] in message
    assert "NEW_SPLIT" in message and "Restore the files" in message


def test_an_image_changed_after_the_audit_hashed_it_is_found_by_every_reader(
        synthetic_data, tmp_path, monkeypatch):
    # Data still being copied or synced while notebook 1 runs: a file changes after the audit
    # read it and before the split is written (its record must be the time the hash saw).
    root, _ = synthetic_data
    run = RunFolder(tmp_path / "run")
    make_split = split.make_split
    changed = {}

    def change_then_split(result, *arguments, **options):
        images = result.index[audit.usable_mask(result.index)]
        one, other = images.iloc[0], images[images["label"] != images.iloc[0]["label"]].iloc[0]
        shutil.copyfile(root / other["path"], root / one["path"])
        changed["path"] = one["path"]
        return make_split(result, *arguments, **options)
    monkeypatch.setattr(split, "make_split", change_then_split)
    preparation.prepare("local", run.root, data_dir=root)
    message = _refusal(run)
    assert "1 image file(s) changed" in message and changed["path"] in message


def test_a_synthetic_redraw_killed_before_its_images_moved_in_is_refused(tmp_path, monkeypatch):
    # The new split is written, then the drawn images replace the old ones: a kill between
    # the two leaves a split of images that are not there.
    run = RunFolder(tmp_path / "run")
    preparation.prepare("synthetic", run.root, synthetic_images_per_class=4, seed=1)

    def killed(new, folder):
        raise KeyboardInterrupt
    monkeypatch.setattr(preparation, "_replace_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        preparation.prepare("synthetic", run.root, synthetic_images_per_class=4, seed=2,
                            force=True)
    assert json.loads(run.split_metadata.read_text())["seed"] == 2
    assert "changed" in _refusal(run)
    monkeypatch.undo()  # run again, it finishes: the split and its images agree
    preparation.prepare("synthetic", run.root, synthetic_images_per_class=4, seed=2)
    assert len(run.load_split()[0]) > 0


def test_a_new_split_killed_after_any_of_its_files_is_refused_or_right(prepared, tmp_path,
                                                                      monkeypatch):
    # A forced new split over changed images writes the split, its metadata and the record
    # of its files' times: killed after any of them, no reader may take an old hash as now.
    run, root = prepared
    frame, _ = run.load_split()
    changed = frame.iloc[0]["path"]
    Image.open(root / changed).rotate(90).save(root / changed)
    saved = tmp_path / "saved"
    shutil.copytree(run.root, saved)
    write = files.write_text_atomically
    for kill_after in range(4):
        shutil.rmtree(run.root)
        shutil.copytree(saved, run.root)
        written = []

        def write_then_die(text, path, kill_after=kill_after, written=written):
            if len(written) == kill_after:
                raise KeyboardInterrupt
            write(text, path)
            written.append(Path(path).name)
        monkeypatch.setattr(files, "write_text_atomically", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            preparation.prepare("local", run.root, data_dir=root, force=True)
        monkeypatch.setattr(files, "write_text_atomically", write)
        try:
            now, _ = run.load_split()
        except StaleSplitError:
            continue  # refused, with the way out
        assert now.set_index("path").loc[changed, "sha256"] == files.file_sha256(root / changed)


def test_the_same_bytes_with_a_new_time_are_accepted_and_the_record_refreshed(prepared):
    run, root = prepared
    frame, _ = run.load_split()
    path = root / frame.iloc[3]["path"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    run.load_split()
    recorded = pd.read_csv(run.split_files).set_index("path")
    assert recorded.loc[frame.iloc[3]["path"], "mtime_ns"] == path.stat().st_mtime_ns


def test_a_missing_image_and_an_added_one_are_named_but_added_non_images_are_not(prepared):
    run, root = prepared
    frame, _ = run.load_split()
    removed = frame.iloc[0]["path"]
    kept_image = root / frame.iloc[1]["path"]
    (root / removed).unlink()
    shutil.copyfile(kept_image, root / "monocyte" / "scanned later.png")
    (root / "monocyte" / "notes.txt").write_text("not an image")
    (root / "monocyte" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "readme.jpg").write_bytes(kept_image.read_bytes())  # outside the class folders
    (root / "extra").mkdir()  # a folder that is no class: the audit never uses it
    (root / "extra" / "spare.jpg").write_bytes(kept_image.read_bytes())
    message = _refusal(run)
    assert "1 image file(s) missing" in message and removed in message
    assert "1 image file(s) added" in message and "monocyte/scanned later.png" in message
    for ignored in ("notes.txt", ".DS_Store", "readme.jpg", "spare.jpg"):
        assert ignored not in message


def test_a_changed_image_is_refused_on_every_load_not_only_the_first(prepared):
    # The record of sizes and times is refreshed only when every differing file hashed the
    # same: a refusal that refreshed it would let the next load pass on a stat alone.
    run, root = prepared
    frame, _ = run.load_split()
    image = frame.iloc[0]
    other = frame[frame["label"] != image["label"]].iloc[0]
    touched = root / frame.iloc[1]["path"]  # same bytes, new time: on its own, accepted
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    shutil.copyfile(root / other["path"], root / image["path"])
    for _ in range(2):
        assert "1 image file(s) changed" in _refusal(run)


def test_a_moved_data_folder_is_named_then_found_again_by_preparing_with_its_new_place(
        prepared, tmp_path):
    run, root = prepared
    split_before = run.split_csv.read_bytes()
    moved = tmp_path / "elsewhere" / "pbc"
    moved.parent.mkdir()
    shutil.move(root, moved)
    with pytest.raises(DataError, match="DATA_DIR") as caught:
        run.load_split()
    assert not isinstance(caught.value, StaleSplitError)
    _, split_result = preparation.prepare("local", run.root, data_dir=moved)
    assert split_result.reused
    assert run.split_csv.read_bytes() == split_before  # the split itself is untouched
    frame, data_root = run.load_split()
    assert data_root == moved.resolve()


def test_a_moved_run_folder_holding_synthetic_images_keeps_working(tmp_path):
    run = RunFolder(tmp_path / "first")
    preparation.prepare("synthetic", run.root, synthetic_images_per_class=3)
    frame, _ = run.load_split()
    moved = RunFolder(tmp_path / "second")
    os.replace(run.root, moved.root)
    moved_frame, data_root = moved.load_split()
    assert data_root == moved.synthetic_data and moved_frame.equals(frame)


def test_the_split_fractions_given_to_prepare_are_the_splits(synthetic_data, tmp_path):
    root, _ = synthetic_data
    run = RunFolder(tmp_path / "halves")
    fractions = {"train": 0.5, "validation": 0.25, "test": 0.25}
    preparation.prepare("local", run.root, data_dir=root, fractions=fractions)
    frame, _ = run.load_split()
    shares = frame["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.5, abs=0.05)
    assert shares["test"] == pytest.approx(0.25, abs=0.05)


def test_a_copied_run_folder_reads_its_own_images_not_the_originals(tmp_path):
    run = RunFolder(tmp_path / "first")
    preparation.prepare("synthetic", run.root, synthetic_images_per_class=3)
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)  # the original stays where it was
    _, data_root = copy.load_split()
    assert data_root == copy.synthetic_data


def test_a_split_without_a_record_of_its_files_hashes_them_once(prepared):
    run, root = prepared
    frame, _ = run.load_split()
    run.split_files.unlink()  # a split written before the record was kept
    run.load_split()
    assert run.split_files.exists()
    (root / frame.iloc[2]["path"]).write_bytes(b"other bytes")
    run.split_files.unlink()
    assert frame.iloc[2]["path"] in _refusal(run)


def test_names_in_a_refusal_cannot_drive_the_terminal(prepared):
    run, root = prepared
    kept_image = root / run.load_split()[0].iloc[0]["path"]
    shutil.copyfile(kept_image, root / "ig" / "x\x1b[2Ky.jpg")
    message = _refusal(run)
    assert "\x1b" not in message and "x\\x1b[2Ky.jpg" in message


def test_a_fifo_in_an_images_place_or_among_them_is_named_without_being_opened(prepared):
    run, root = prepared
    frame, _ = run.load_split()
    replaced = frame.iloc[4]["path"]
    (root / replaced).unlink()
    os.mkfifo(root / replaced)
    os.mkfifo(root / "platelet" / "pipe.jpg")  # opening either would block for ever
    message = _refusal(run)
    assert "1 image file(s) changed" in message and replaced in message
    assert "pipe.jpg" not in message


def test_a_run_folder_that_cannot_be_written_is_still_read(prepared, monkeypatch):
    run, root = prepared
    frame, _ = run.load_split()
    path = root / frame.iloc[3]["path"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    def read_only(*_, **__):  # what a folder of another user, or a read-only mount, gives
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert run.load_split()[0].equals(frame)
