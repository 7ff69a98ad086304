import json
import os
import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from helpers import audit, data, images, preparation
from helpers.labels import CLASS_NAMES
from helpers.runfolder import RunFolder


def _files_on_disk(root: Path) -> list[str]:
    return sorted(
        (Path(folder) / name).relative_to(root).as_posix()
        for folder, _, names in os.walk(root) for name in names
    )


def test_every_file_is_indexed_with_hash_and_decode_status(synthetic_source, synthetic_audit):
    root, planted = synthetic_source
    index = synthetic_audit.index
    assert sorted(index["path"]) == _files_on_disk(root)
    assert synthetic_audit.summary["n_files"] == len(_files_on_disk(root))
    row = index.set_index("path").loc[planted["rgba"]]
    assert (row["format"], row["mode"], row["decodable"]) == ("PNG", "RGBA", True)
    assert row["bytes"] == (root / planted["rgba"]).stat().st_size
    assert len(row["sha256"]) == 64


def test_each_planted_quirk_is_reported(synthetic_source, synthetic_audit):
    _, planted = synthetic_source
    summary = synthetic_audit.summary
    assert summary["not_images"] == [planted["not_image"]]
    assert summary["corrupt"] == [planted["corrupt"]]
    assert "truncated" in summary["problems"][planted["corrupt"]].lower()
    # The header was readable: the full decode, not the opening, found the damage.
    corrupt = synthetic_audit.index.set_index("path").loc[planted["corrupt"]]
    assert corrupt["is_image"] and (corrupt["width"], corrupt["height"]) == (48, 48)
    assert not corrupt["decodable"]
    assert summary["non_rgb"] == {planted["grayscale"]: "L", planted["rgba"]: "RGBA"}
    assert summary["duplicate_groups"] == [sorted([planted["duplicate"], planted["duplicate_of"]])]
    assert summary["cross_class_conflicts"] == [
        sorted([planted["cross_class"], planted["cross_class_of"]])]
    assert summary["unknown_folders"] == {planted["unknown_folder"]: 0}
    assert summary["missing_classes"] == [] and summary["empty_classes"] == []


def test_usable_counts_leave_out_exactly_the_unusable_files(synthetic_audit):
    summary = synthetic_audit.summary
    unusable = len(summary["not_images"]) + len(summary["corrupt"])
    assert summary["n_images"] == summary["n_files"] - unusable
    assert sum(summary["per_class"].values()) == summary["n_images"]
    assert list(summary["per_class"]) == list(CLASS_NAMES)


def test_missing_empty_unknown_and_unsupported_are_reported(synthetic_data):
    root, _ = synthetic_data
    for path in (root / "monocyte").iterdir():
        path.unlink()
    (root / "monocyte").rmdir()
    for path in (root / "platelet").iterdir():
        path.unlink()
    (root / "platelet" / "notes.txt").write_text("not an image")
    Image.new("RGB", (48, 48)).save(root / "ig" / "scan.gif")
    (root / "extras").mkdir()
    (root / "extras" / "a.jpg").write_bytes((root / "ig" / "ig_0000.jpg").read_bytes())
    (root / "README.txt").write_text("stray")

    summary = audit.audit(root).summary
    assert summary["missing_classes"] == ["monocyte"]
    assert summary["empty_classes"] == ["platelet"]
    assert summary["per_class"]["monocyte"] == 0 and summary["per_class"]["platelet"] == 0
    assert summary["unsupported_format"] == ["ig/scan.gif"]
    assert "GIF" in summary["problems"]["ig/scan.gif"]
    assert summary["unknown_folders"] == {"extras": 1, "unknown_folder": 0}
    assert summary["outside_class_folders"] == ["README.txt", "extras/a.jpg"]
    assert "platelet/notes.txt" in summary["not_images"]


def test_rare_sizes_are_listed_as_unusual(synthetic_data):
    root, _ = synthetic_data
    odd = root / "ig" / "ig_0001.jpg"
    Image.open(odd).resize((50, 47)).save(odd)
    summary = audit.audit(root).summary
    assert summary["sizes"]["50x47"] == 1
    assert "ig/ig_0001.jpg" not in summary["unusual_sizes"]  # 1 of 96 images is over 1 %
    # With 100 images of the common size, one odd image is under 1 % and is listed.
    for number in range(12, 112):
        Image.new("RGB", (48, 48), (200, 100, 100)).save(root / "ig" / f"extra_{number}.png")
    summary = audit.audit(root).summary
    assert summary["unusual_sizes"] == {"ig/ig_0001.jpg": "50x47"}


def test_empty_file_is_not_an_image(synthetic_data):
    root, _ = synthetic_data
    (root / "basophil" / "empty.jpg").write_bytes(b"")
    summary = audit.audit(root).summary
    assert summary["problems"]["basophil/empty.jpg"] == "not an image: empty file"


def test_audit_command_prints_and_writes_json(synthetic_source, tmp_path, capsys):
    root, planted = synthetic_source
    report = tmp_path / "audit.json"
    index_csv = tmp_path / "index.csv"
    assert data.main(["audit", str(root.parent), "--json", str(report),
                      "--index-csv", str(index_csv)]) == 0
    printed = capsys.readouterr().out
    assert planted["not_image"] in printed and "Duplicate groups" in printed
    summary = json.loads(report.read_text())
    for key in ["n_files", "n_images", "per_class", "not_images", "corrupt",
                "duplicate_groups", "cross_class_conflicts"]:
        assert key in summary
    assert summary["not_images"] == [planted["not_image"]]
    assert list(pd.read_csv(index_csv).columns) == audit.INDEX_COLUMNS


def test_audit_command_fails_clearly_on_a_missing_folder(tmp_path, capsys):
    assert data.main(["audit", str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().err


def test_linked_class_folders_are_followed_once_and_bad_links_reported(synthetic_data,
                                                                       tmp_path):
    root, _ = synthetic_data
    before = audit.audit(root).summary["per_class"]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / "basophil", elsewhere)
    (root / "basophil").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root, target_is_directory=True)  # a link back up
    (root / "eosinophil" / "gone.jpg").symlink_to(tmp_path / "no_such_file.jpg")
    result = audit.audit(root)
    assert result.summary["per_class"] == before  # the linked class is whole, nothing twice
    assert result.summary["unreadable"] == ["eosinophil/gone.jpg"]
    assert "does not exist" in result.summary["problems"]["eosinophil/gone.jpg"]
    assert "Unreadable files (not used): 1" in audit.format_summary(result.summary)


def test_a_class_folder_linked_into_another_keeps_its_own_class(synthetic_data, tmp_path):
    # A link inside one class folder to another class's folder would relabel its images.
    root, _ = synthetic_data
    before = audit.audit(root).index
    (root / "basophil" / "more").symlink_to(root / "monocyte", target_is_directory=True)
    (root / "basophil" / "back").symlink_to(root, target_is_directory=True)
    after = audit.audit(root).index
    pd.testing.assert_frame_equal(after.drop(columns="mtime_ns"),
                                  before.drop(columns="mtime_ns"))
    run = RunFolder(tmp_path / "run")
    preparation.prepare("local", run.root, data_dir=root)
    assert (run.load_split()[0]["label"] == "monocyte").sum() > 0


def test_a_name_with_a_carriage_return_is_left_out_with_its_reason(synthetic_data, tmp_path):
    root, _ = synthetic_data
    image = next((root / "basophil").glob("*.jpg"))
    image.rename(image.with_name("two\rlines.jpg"))
    run = RunFolder(tmp_path / "run")
    result, _ = preparation.prepare("local", run.root, data_dir=root)
    assert "carriage return" in result.summary["problems"]["basophil/two\rlines.jpg"]
    split_frame, _ = run.load_split()  # the CSV reads back whole
    assert "basophil/two\rlines.jpg" not in set(split_frame["path"])
    assert len(split_frame) == len(pd.read_csv(run.split_csv)) > 0
    index = pd.read_csv(run.audit_index, keep_default_na=False)  # it lists every file
    assert len(index) == len(result.index) and "basophil/two\rlines.jpg" in set(index["path"])


def test_one_image_saved_in_two_formats_is_one_content(synthetic_data, tmp_path):
    # A PNG of a JPEG's pixels is another file but the same image to train and score on: as
    # two files it could sit in train and in test.
    root, _ = synthetic_data
    jpegs = sorted((root / "basophil").glob("basophil_00*.jpg"))[1:3]  # no planted copy
    for jpeg, copy in [(jpegs[0], root / "basophil" / "again.png"),
                       (jpegs[1], root / "monocyte" / "from_basophil.png")]:
        Image.fromarray(images.decode_rgb(jpeg.read_bytes()).numpy()).save(copy)
    result = audit.audit(root)
    relative = [jpeg.relative_to(root).as_posix() for jpeg in jpegs]
    assert sorted([relative[0], "basophil/again.png"]) in result.summary["duplicate_groups"]
    assert sorted([relative[1], "monocyte/from_basophil.png"]) in (
        result.summary["cross_class_conflicts"])
    run = RunFolder(tmp_path / "run")
    preparation.prepare("local", run.root, data_dir=root)
    paths = set(run.load_split()[0]["path"])
    assert len({relative[0], "basophil/again.png"} & paths) == 1  # one of the two kept
    assert not {relative[1], "monocyte/from_basophil.png"} & paths  # label unknown: both out


def test_images_outside_the_class_folders_or_under_a_non_utf8_folder_are_left_out(
        synthetic_data, tmp_path):
    root, _ = synthetic_data
    before = audit.audit(root).summary["n_images"]
    image = next((root / "ig").glob("ig_00*.jpg"))
    Image.open(image).rotate(90).save(root / "stray.jpg")  # at the top: no class
    odd = root / os.fsdecode(b"lymphocyte/caf\xe9")  # a folder named in Latin-1
    odd.mkdir()
    Image.open(image).rotate(180).save(odd / "cell.jpg")
    result = audit.audit(root)
    assert "stray.jpg" in result.summary["outside_class_folders"]
    odd_name = "lymphocyte/caf\\xe9/cell.jpg"
    assert "not valid UTF-8" in result.summary["problems"][odd_name]
    assert before == result.summary["n_images"] == int(audit.usable_mask(result.index).sum())
    run = RunFolder(tmp_path / "run")
    _, made = preparation.prepare("local", run.root, data_dir=root)
    reasons = dict(zip(made.excluded["path"], made.excluded["reason"], strict=True))
    assert reasons["stray.jpg"] == "outside the class folders" and odd_name in reasons
    assert not {"stray.jpg", odd_name} & set(made.split["path"])


def test_a_decompression_bomb_is_reported_not_raised(synthetic_data, monkeypatch):
    root, _ = synthetic_data
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 24 // 2)  # 48 px images: 4x over
    summary = audit.audit(root).summary
    assert summary["n_images"] == 0 and summary["corrupt"]
    assert all("too large to decode safely" in summary["problems"][path]
               for path in summary["corrupt"] if path.endswith(".jpg"))


def test_the_published_comparison_names_count_and_size_and_flags_another_size():
    published = {"n_images": 17_092, "sizes": {"360x363": 17_000, "359x360": 92}}
    text = audit.compared_with_published(published)
    assert text == ("This run was given 17,092 usable images, most of them 360x363 px; the "
                    "published dataset has 17,092 of 360x363 px.")
    half = audit.compared_with_published({"n_images": 14_533, "sizes": {"180x182": 14_533}})
    assert "most of them 180x182 px" in half and "resolution check" in half
    assert "resolution check" not in audit.compared_with_published({"n_images": 0, "sizes": {}})
