"""Where outputs may land: regular files or new names only, never a run folder's own files or
an input, checked before any work, through temporary files of unique names that never stay."""

import errno
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from helpers import data, evaluate, files, predict


@pytest.fixture()
def run_folder(tmp_path):
    """A run folder after a study: its data, a history and metrics."""
    root = tmp_path / "run"
    for relative, text in [("data/split.json", '{"seed": 42}'), ("data/split.csv", "x"),
                           ("data/audit.json", "{}"), (".blood-cell-study-run", ""),
                           ("history/cnn.csv", "epoch\n0\n"),
                           ("metrics/cnn_validation.json", "{}")]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def _contents(root: Path) -> dict:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_an_output_through_a_link_writes_the_file_it_points_to(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    files.write_text_atomically("new", link)
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.csv", "real.csv"]


@pytest.mark.parametrize("kind", ["folder", "FIFO", "device", "link to a device",
                                  "link to nothing"])
def test_an_output_is_never_written_onto_what_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "out.csv"
    if kind == "folder":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "device":
        path = Path(os.devnull)
    elif kind == "link to a device":
        path.symlink_to(os.devnull)
    else:
        path.symlink_to(tmp_path / "nowhere.csv")
    before = files.file_kind(path)
    with pytest.raises(files.OutputError, match=f"is a.* {kind.split()[-1]}"):
        files.write_text_atomically("text", path)
    assert files.file_kind(path) == before != "regular file"  # still there, as it was
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
    if kind == "device":
        assert Path(os.devnull).is_char_device()


def test_commands_refuse_run_folder_files_inputs_and_odd_outputs_before_any_work(
        run_folder, synthetic_data, tmp_path, capsys, monkeypatch):
    root, _ = synthetic_data
    image = next(root.glob("basophil/*.jpg"))
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    under_a_file = notes / "report.json"
    elsewhere = tmp_path / "BA_other.jpg"
    elsewhere.write_bytes(image.read_bytes())
    before = _contents(run_folder), image.read_bytes()
    # Any work would be a load or an audit: fail loudly if one starts.
    monkeypatch.setattr("helpers.inference.load_model", lambda *_: pytest.fail("did work"))
    monkeypatch.setattr("helpers.tools.evaluate.evaluate_folder",
                        lambda *_, **__: pytest.fail("work"))
    monkeypatch.setattr("helpers.audit.audit", lambda *_, **__: pytest.fail("did work"))
    model = str(tmp_path / "cnn.keras")
    cases = [
        predict.main([model, str(root), "--out", str(run_folder / "history" / "cnn.csv")]),
        predict.main([model, str(root), "--out", str(fifo)]),
        predict.main([model, str(root), "--out", str(under_a_file)]),
        evaluate.main([model, str(root), "--out",
                       str(run_folder / "metrics" / "cnn_validation.json")]),
        evaluate.main([model, str(root), "--out", str(run_folder / "metrics" / "new.json")]),
        data.main(["audit", str(root), "--json", str(image)]),
        data.main(["audit", str(root), "--index-csv", str(run_folder / "data" / "split.csv")]),
        data.main(["audit", str(root), "--json", str(under_a_file)]),
        data.main(["split", str(root), "--out", str(run_folder / "data" / "split.csv")]),
        data.main(["synthetic", str(run_folder / "models")]),
        # An existing file of another kind than the output's, outside every input.
        data.main(["audit", str(root), "--json", str(elsewhere)]),
        predict.main([model, str(root), "--out", str(notes)]),
        evaluate.main([model, str(root), "--out", str(elsewhere)]),
    ]
    assert cases == [1] * len(cases)
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == len(cases) and all(line.startswith("error: ") for line in errors)
    assert "run folder" in errors[0] and "FIFO" in errors[1] and "not a folder" in errors[2]
    assert "input" in errors[5]
    assert all("exists and is not a" in line for line in errors[-3:])
    assert (_contents(run_folder), image.read_bytes()) == before
    assert elsewhere.read_bytes() == image.read_bytes() and notes.read_text() == "notes"


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path,
                                                                            monkeypatch):
    out = tmp_path / "report.json"
    out.write_text('{"old": true}')

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(files.OutputError, match="No space left on device"):
        files.write_json({"new": True}, out)
    monkeypatch.undo()
    assert json.loads(out.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["report.json"]


def test_each_write_has_a_temporary_file_of_its_own(tmp_path, monkeypatch):
    """Two writers of one file (two processes, two threads) never share a temporary file, so
    neither can move the other's half-written file into place."""
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (
        replaced.append(Path(source)), real_replace(source, target)))
    out = tmp_path / "a.json"
    files.write_json({"n": 1}, out)
    files.write_json({"n": 2}, out)
    image = tmp_path / "image.png"
    Image.new("RGB", (4, 4)).save(image)
    files.copy_atomically(image, tmp_path / "copy.png")
    assert len(set(replaced)) == 3 and all(path.parent == tmp_path for path in replaced)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "copy.png", "image.png"]
    # Written files get the usual permissions, not a temporary file's 0600.
    assert (out.stat().st_mode & 0o777) == (0o666 & ~files._UMASK)
    # A file written again keeps the permissions its owner gave it.
    out.chmod(0o600)
    files.write_json({"n": 3}, out)
    assert (out.stat().st_mode & 0o777) == 0o600 and files.read_json(out) == {"n": 3}


def test_reading_a_missing_json_file_fails_unless_a_default_is_given(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.read_json(tmp_path / "gone.json")
    assert files.read_json(tmp_path / "gone.json", default=None) is None


def test_a_command_may_write_its_own_output_again(synthetic_source, tmp_path):
    """The audit's own report and a split beside no run folder, written twice: the second
    time is not mistaken for a run folder's files."""
    root, _ = synthetic_source
    for _ in range(2):
        assert data.main(["audit", str(root), "--json", str(tmp_path / "data" / "audit.json"),
                          "--index-csv", str(tmp_path / "data" / "audit_index.csv")]) == 0
        assert data.main(["split", str(root), "--out", str(tmp_path / "data" / "split.csv"),
                          "--force"]) == 0


def test_a_read_only_place_is_found_before_the_work(tmp_path, monkeypatch, capsys):
    """A read-only file system (root may write anywhere else, so it is simulated where the
    probe file is made)."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    monkeypatch.setattr("helpers.audit.audit", lambda *_, **__: pytest.fail("did work"))
    (tmp_path / "data").mkdir()
    out = tmp_path / "reports" / "new" / "a.json"
    assert data.main(["audit", str(tmp_path / "data"), "--json", str(out)]) == 1
    assert "cannot write in" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["data"]
