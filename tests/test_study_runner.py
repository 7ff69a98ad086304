"""The headless runner (helpers/tools/study.py): the run folder's lock, errors as one line,
missing outputs, interrupts, failed reruns and the line a notebook shows.

Each notebook here is a tiny one written in tmp_path (a kernel start costs seconds); where no
notebook needs to run, papermill is replaced by a stand-in that records the call.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import liveprogress, runfolder, runlock
from helpers.runfolder import RunFolder
from helpers.tools import estimate, study
from helpers.tools import progress as progress_view


def _tiny_notebook(path, code, parameters='RUN_DIR: str = "x"  # run folder'):
    notebook = new_notebook(cells=[new_markdown_cell("# tiny"), new_code_cell(parameters)])
    notebook.cells[1].metadata["tags"] = ["parameters"]
    notebook.cells.append(new_code_cell(code))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture()
def sources(tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    return folder


@pytest.fixture()
def no_execution(monkeypatch):
    """papermill replaced: the calls it got (none expected)."""
    calls = []

    def execute_notebook(input_path, output_path, **_):
        calls.append(input_path)
        raise AssertionError(f"{input_path} was executed")

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


@pytest.fixture()
def profiles(tmp_path, monkeypatch):
    """A profile folder of one's own: ``ok`` (no overrides) and whatever a test writes."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "ok.yaml").write_text("# nothing overridden\n")
    monkeypatch.setattr(study, "PROFILE_DIR", folder)
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here asks the network: ImageNet weights are out of reach, as on CI."""
    monkeypatch.setattr(study, "imagenet_weights_reachable", lambda: "offline (a test)")


def _error_line(capsys) -> str:
    """What main wrote on stderr, checked to be one line starting with ``error: ``."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "<class" not in err
    return err


def _hidden(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# -- the lock ----------------------------------------------------------------------------------

def test_a_second_study_on_the_same_run_folder_is_refused_naming_the_holder(
        tmp_path, capsys, no_execution):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "purpose": "another study",
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "token": "0123456789abcdef"}
        runlock.lock_path(run_dir).write_text(json.dumps(lock))
        assert study.main(["--no-estimate", "--profile", "smoke", "--run-dir", str(run_dir)]) == 1
        err = _error_line(capsys)
        assert f"process {holder.pid} on {socket.gethostname()}" in err
        assert "another study" in err
        assert no_execution == []
        assert sorted(path.name for path in run_dir.iterdir()) == [".lock"]  # nothing made
        assert json.loads(runlock.lock_path(run_dir).read_text()) == lock  # still the holder's
    finally:
        holder.kill()
        holder.wait()


def test_the_kernels_hold_the_studys_lock_and_it_is_gone_after(tmp_path, sources, monkeypatch):
    monkeypatch.delenv(runlock.LOCK_VARIABLE, raising=False)
    _tiny_notebook(sources / "a.ipynb", "import json, os\nfrom pathlib import Path\n"
                   "from helpers import runlock\n"
                   "runlock.acquire(RUN_DIR, 'a training notebook')  # the study's: no error\n"
                   "runlock.release(RUN_DIR)\n"
                   "Path(RUN_DIR, 'seen.json').write_text(json.dumps({\n"
                   f"    'variable': os.environ.get({runlock.LOCK_VARIABLE!r}),\n"
                   "    'lock': json.loads(Path(RUN_DIR, '.lock').read_text())}))")
    _tiny_notebook(sources / "b.ipynb", "1 / 0")
    run_dir = tmp_path / "run"
    run = lambda names: study.run_study(  # noqa: E731
        {}, str(run_dir), notebooks=names, notebook_dir=sources, log=lambda message: None)

    assert run(("a",)) == ["a"]
    seen = json.loads((run_dir / "seen.json").read_text())
    assert seen["variable"] == seen["lock"]["token"] and seen["variable"]
    assert seen["lock"]["pid"] == os.getpid()
    assert "python -m helpers.study into" in seen["lock"]["purpose"]
    assert not runlock.lock_path(run_dir).exists()
    assert runlock.LOCK_VARIABLE not in os.environ
    with pytest.raises(study.StudyError):
        run(("a", "b"))
    assert not runlock.lock_path(run_dir).exists()
    assert runlock.LOCK_VARIABLE not in os.environ


# -- errors as one line ------------------------------------------------------------------------

def test_broken_profiles_and_overrides_are_one_line_errors(profiles, capsys, no_execution):
    (profiles / "list.yaml").write_text("- CNN_EPOCHS\n- 3\n")
    (profiles / "scalar.yaml").write_text("just some text\n")
    (profiles / "broken.yaml").write_text("CNN_EPOCHS: [1,\n")
    (profiles / "numbers.yaml").write_text("1: 2\n")
    for name in ("list", "scalar", "broken", "numbers"):
        assert study.main(["--profile", name]) == 1
        assert str(profiles / f"{name}.yaml") in _error_line(capsys)
        with pytest.raises(study.StudyError, match=f"{name}.yaml"):
            study.load_profile(name)
    assert study.main(["--profile", "ok", "--set", "CNN_EPOCHS=[1,"]) == 1
    assert "--set CNN_EPOCHS=[1," in _error_line(capsys)
    with pytest.raises(study.StudyError, match=r"CNN_EPOCHS=\[1,"):
        study.parse_override("CNN_EPOCHS=[1,")
    assert no_execution == []


def test_a_value_of_the_wrong_type_is_said_in_words(profiles, capsys, no_execution):
    assert study.main(["--profile", "ok", "--set", "CNN_EPOCHS=ten"]) == 1
    err = _error_line(capsys)
    assert "CNN_EPOCHS" in err and "'ten'" in err and "a whole number" in err
    declared = study.all_declared_parameters()
    for name, (kind, _) in declared.items():  # every declared type reads as words
        wrong = ["a"] if kind is dict else {"a": 1}
        with pytest.raises(study.StudyError) as failure:
            study.check_parameters({name: wrong}, declared)
        assert name in str(failure.value) and "<class" not in str(failure.value)
    assert no_execution == []


def test_a_run_folder_that_is_a_file_is_refused_before_anything_runs(
        tmp_path, profiles, capsys, no_execution):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for run_dir in (a_file, a_file / "run"):
        assert study.main(["--no-estimate", "--profile", "ok", "--run-dir", str(run_dir)]) == 1
        assert str(a_file) in _error_line(capsys)
    assert a_file.read_text() == "not a folder"
    assert no_execution == []


# -- missing outputs ---------------------------------------------------------------------------

def test_a_notebook_whose_output_file_is_missing_runs_again(tmp_path, sources):
    _tiny_notebook(sources / "a.ipynb", "from pathlib import Path\n"
                   "Path(RUN_DIR, 'out').mkdir(exist_ok=True)\n"
                   "Path(RUN_DIR, 'out', 'a.txt').write_text('made by a')\n"
                   "Path(RUN_DIR, '.hidden').write_text('not an output')")
    _tiny_notebook(sources / "b.ipynb", "1 + 1")
    run_dir = tmp_path / "run"
    messages = []
    run = lambda: study.run_study(  # noqa: E731
        {}, str(run_dir), notebooks=("a", "b"), notebook_dir=sources, log=messages.append)

    assert run() == ["a", "b"]
    record_path = run_dir / "notebooks" / "a.done.json"
    assert json.loads(record_path.read_text())["files"] == ["out/a.txt"]
    assert json.loads((run_dir / "notebooks" / "b.done.json").read_text())["files"] == []
    (run_dir / "out" / "a.txt").unlink()
    messages.clear()
    assert run() == ["a", "b"]  # and b after it
    assert messages[0] == "[1/2] a: out/a.txt is missing, run again"
    assert (run_dir / "out" / "a.txt").read_text() == "made by a"
    # A record written before the file list: accepted as before.
    for name in ("a", "b"):
        path = run_dir / "notebooks" / f"{name}.done.json"
        record = json.loads(path.read_text())
        del record["files"]
        path.write_text(json.dumps(record))
    assert run() == []


def test_a_moved_run_folder_is_done_as_it_was_but_other_parameters_run_again(tmp_path,
                                                                              sources):
    _tiny_notebook(sources / "a.ipynb", "from pathlib import Path\n"
                   "Path(RUN_DIR, 'a.txt').write_text('made by a')",
                   parameters='RUN_DIR: str = "x"  # run folder\nSEED: int = 1  # a seed')
    first, second = tmp_path / "first", tmp_path / "second"
    assert study.run_study({}, str(first), notebooks=("a",), notebook_dir=sources,
                           log=lambda message: None) == ["a"]
    os.replace(first, second)
    messages = []
    assert study.run_study({}, str(second), notebooks=("a",), notebook_dir=sources,
                           log=messages.append) == []
    assert "done before" in messages[0]
    assert study.run_study({"SEED": 2}, str(second), notebooks=("a",), notebook_dir=sources,
                           log=lambda message: None) == ["a"]


# -- interrupts --------------------------------------------------------------------------------

def test_an_interrupted_cell_reads_as_an_interrupt(tmp_path, sources):
    _tiny_notebook(sources / "a.ipynb", "raise KeyboardInterrupt")
    with pytest.raises(study.StudyError) as failure:
        study.run_study({}, str(tmp_path / "run"), notebooks=("a",), notebook_dir=sources,
                        log=lambda message: None)
    lines = str(failure.value).splitlines()
    assert lines[0] == ("interrupted in a, in the cell run as In [3]; run the same command "
                        "again to resume")
    assert str(tmp_path / "run" / "notebooks" / "a.failed.ipynb") in str(failure.value)


def test_an_error_without_a_message_has_no_dangling_colon(tmp_path):
    error = papermill.PapermillExecutionError(2, 3, "raise ValueError()", "ValueError", "", [])
    message = study.failure_message("a", error, tmp_path / "a.ipynb", tmp_path / "a.log")
    assert "  ValueError\n" in message and "ValueError:" not in message
    error = papermill.PapermillExecutionError(2, 3, "1 / 0", "ZeroDivisionError",
                                              "division by zero", [])
    message = study.failure_message("a", error, tmp_path / "a.ipynb", tmp_path / "a.log")
    assert "  ZeroDivisionError: division by zero\n" in message


def _study_whose_notebook_raises(sources, monkeypatch, error: BaseException) -> None:
    """A study of one notebook, "a", whose run leaves a half-done copy, then raises ERROR."""
    _tiny_notebook(sources / "a.ipynb", "1 + 1")
    monkeypatch.setattr(study, "NOTEBOOKS", ("a",))
    monkeypatch.setattr(study, "NOTEBOOK_DIR", sources)

    def execute(input_path, output_path, **_):
        nbformat.write(nbformat.read(input_path, as_version=4), output_path)  # half done
        raise error

    monkeypatch.setattr(papermill, "execute_notebook", execute)


def test_ctrl_c_in_the_study_is_one_line_and_exit_code_130(
        tmp_path, sources, profiles, monkeypatch, capsys):
    _study_whose_notebook_raises(sources, monkeypatch, KeyboardInterrupt())
    run_dir = tmp_path / "run"
    try:
        code = study.main(["--no-estimate", "--profile", "ok", "--run-dir", str(run_dir)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt went through main")
    assert code == 130
    assert _error_line(capsys) == (
        "error: interrupted in a; run the same command again to resume\n")
    assert not runlock.lock_path(run_dir).exists()
    assert (run_dir / "notebooks" / "a.failed.ipynb").exists()
    assert _hidden(run_dir / "notebooks") == []


def test_a_kernel_that_dies_is_one_error_naming_the_notebook(
        tmp_path, sources, profiles, monkeypatch, capsys):
    """nbclient raises DeadKernelError when the kernel is killed (out of memory)."""
    # What nbclient's DeadKernelError is.
    _study_whose_notebook_raises(sources, monkeypatch, RuntimeError("Kernel died"))
    run_dir = tmp_path / "run"
    assert study.main(["--no-estimate", "--profile", "ok", "--run-dir", str(run_dir)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: a stopped: RuntimeError: Kernel died")
    assert "Traceback" not in error
    assert (run_dir / "notebooks" / "a.failed.ipynb").exists()
    assert not runlock.lock_path(run_dir).exists()


# -- a failed rerun ----------------------------------------------------------------------------

def test_a_failed_rerun_keeps_the_completed_notebook(tmp_path, sources):
    _tiny_notebook(sources / "a.ipynb", "assert not FAIL, 'asked to fail'",
                   parameters='RUN_DIR: str = "x"  # run folder\nFAIL: bool = False  # fail')
    run_dir = tmp_path / "run"
    notebooks = run_dir / "notebooks"
    run = lambda fail: study.run_study(  # noqa: E731
        {"FAIL": fail}, str(run_dir), notebooks=("a",), notebook_dir=sources,
        log=lambda message: None)

    assert run(False) == ["a"]
    completed = (notebooks / "a.ipynb").read_bytes()
    assert _hidden(notebooks) == []
    with pytest.raises(study.StudyError) as failure:
        run(True)
    assert (notebooks / "a.ipynb").read_bytes() == completed
    failed = notebooks / "a.failed.ipynb"
    assert str(failed) in str(failure.value) and "asked to fail" in failed.read_text()
    assert _hidden(notebooks) == []
    # Not done: the record keeps only the files written before, no source or parameters.
    assert set(json.loads((notebooks / "a.done.json").read_text())) == {"files"}
    # A rerun that succeeds replaces the completed notebook and removes the failed one.
    assert run(False) == ["a"]
    assert not failed.exists() and _hidden(notebooks) == []
    assert (notebooks / "a.done.json").exists()


def test_a_leftover_temporary_notebook_is_removed(tmp_path, no_execution):
    """One left by a study that was killed (the lock says no other study writes here)."""
    run_dir = tmp_path / "run"
    (run_dir / "notebooks").mkdir(parents=True)
    leftover = run_dir / "notebooks" / f".a.running-{os.getpid() + 1}.ipynb"
    leftover.write_text("{}")
    assert study.run_study({}, str(run_dir), notebooks=(), log=lambda message: None) == []
    assert not leftover.exists()



# -- the notebook's line -------------------------------------------------------------------------

def _progress(**changes) -> dict:
    """Progress as callbacks.LiveProgress writes it: run cnn_seed43, epoch 5 of 15."""
    return {"run": "cnn_seed43", "phase": None, "epoch": 5, "epochs": 15, "step": 120,
            "steps": 187, "stage": "training", "completed": 4, "initial": 0, "elapsed": 130.0,
            "eta": 260.0, "updated": 1000.0, **changes}


def test_the_line_shows_the_cell_and_what_the_training_run_does():
    line = lambda progress, now=1000.0, width=None: study.notebook_line(  # noqa: E731
        "[3/5] 03_train_cnn", 16, 21, 394, progress, now, width)
    assert line(None) == "[3/5] 03_train_cnn: cell 17/21, 06:34"
    assert line(_progress()) == ("[3/5] 03_train_cnn: cell 17/21, 06:34 | cnn_seed43: epoch "
                                 "5/15, step 120/187, 02:10 elapsed, ~04:20 left")
    # Written 3 s ago: the run went on since.
    assert line(_progress(), now=1003.0).endswith("02:13 elapsed, ~04:17 left")
    # Phase 2 of ResNet50 continues the count; validation; no estimate yet; over an hour.
    assert line(_progress(run="resnet50", phase="phase 2", epoch=7, epochs=9,
                          stage="validating", eta=None, elapsed=3725.0)).endswith(
        "| resnet50 (phase 2): epoch 7/9, validating, 1:02:05 elapsed")
    assert study.final_line("[3/5] 03_train_cnn", 21, 21, 1930) == (
        "[3/5] 03_train_cnn: 21/21 cells, 32:10")
    assert study.notebook_line("[3/5] 03_train_cnn", 21, 21, 1930) == (  # shutting down
        "[3/5] 03_train_cnn: 21/21 cells, 32:10")
    # With the runner's estimate of the notebook: beside its time, and left at its end.
    assert study.notebook_line("[3/5] 03_train_cnn", 16, 21, 394, expected=2388.4) == (
        "[3/5] 03_train_cnn: cell 17/21, 06:34 of ~39:48")
    assert study.final_line("[3/5] 03_train_cnn", 21, 21, 1930, expected=2388.4) == (
        "[3/5] 03_train_cnn: 21/21 cells, 32:10 (expected ~39:48)")
    # The expected time rounded, as the estimate printed before the first notebook ("12 s").
    assert study.final_line("[1/5] 01_data", 12, 12, 10.2, expected=11.6) == (
        "[1/5] 01_data: 12/12 cells, 00:10 (expected ~00:12)")
    assert study.notebook_line("[1/5] 01_data", 3, 12, 4.9, expected=11.6).endswith("of ~00:12")
    # Too wide: the step and elapsed time go first, then the end is cut.
    assert line(_progress(), width=80) == (
        "[3/5] 03_train_cnn: cell 17/21, 06:34 | cnn_seed43: epoch 5/15, ~04:20 left")
    for width in range(4, 120):
        shown = line(_progress(run="a_rather_long_run_name_seed43", phase="frozen"),
                     width=width)
        assert len(shown) <= width, (width, shown)
    assert line(_progress(), width=50) == "[3/5] 03_train_cnn: cell 17/21, 06:34 | cnn_see..."


def test_each_notebook_line_shows_the_estimate_printed_before_the_first(
        tmp_path, sources, profiles, monkeypatch, capsys):
    _tiny_notebook(sources / "a.ipynb", "print('ran')")
    monkeypatch.setattr(study, "NOTEBOOKS", ("a",))
    monkeypatch.setattr(study, "NOTEBOOK_DIR", sources)
    monkeypatch.setattr(estimate, "in_subprocess",
                        lambda configured: ("Expected time here: a 72 s", {"a": 72.0}))
    assert study.main(["--profile", "ok", "--run-dir", str(tmp_path / "run"),
                       "--estimate-only"]) == 0
    assert capsys.readouterr().out.endswith("Expected time here: a 72 s\n")  # and no more
    assert not (tmp_path / "run").exists()
    assert study.main(["--profile", "ok", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    final = re.search(r"\[1/1\] a: (\d+)/\1 cells, \d\d:\d\d \(expected ~01:12\)\n", out)
    assert final and out.index("Expected time here: a 72 s") < final.start(), out


def test_progress_missing_garbled_or_stale_is_not_shown(tmp_path):
    path = tmp_path / "progress.json"
    assert progress_view.read(path) is None  # no file yet
    for garbled in ['{"run": "cnn_seed43", "epoch": 5, "ep', "[1, 2]", "null", "\xff\xfe",
                    json.dumps(_progress(epoch="5")), json.dumps(_progress(stage="resting")),
                    json.dumps(_progress(elapsed=float("nan"))), json.dumps(_progress(run="")),
                    json.dumps(_progress(epochs=True)), json.dumps({"run": "cnn_seed43"})]:
        path.write_text(garbled, encoding="latin-1")
        assert progress_view.read(path) is None, garbled
    path.write_text(json.dumps(_progress()))
    progress = progress_view.read(path)
    assert progress == _progress()
    assert progress_view.is_current(progress, since=999.0, now=1001.0)
    # Written before the running cell started: of a cell that finished.
    assert not progress_view.is_current(progress, since=1000.5, now=1001.0)
    assert not progress_view.is_current(progress, since=None, now=1000.0 + 3600)  # silent
    ended = _progress(stage="ended")
    assert not progress_view.is_current(ended, since=999.0, now=1001.0)
    assert progress_view.is_current(ended, since=999.0, now=1001.0, include_ended=True)
    assert not progress_view.is_current(None, since=None, now=1001.0)


class _Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def _line_for(tmp_path, terminal, cells):
    """A NotebookLine on a fake stream and clock, ticked by hand; (line, stream, clock)."""
    stream, now = _Stream(terminal), [1000.0]
    line = study.NotebookLine("[1/1] a", tmp_path / "progress.json", stream=stream,
                              clock=lambda: now[0], width=lambda: 100)
    line.start(lambda: cells[0], background=False)
    return line, stream, now


def test_on_a_terminal_the_line_is_redrawn_with_current_progress_only(tmp_path):
    cells = [(2, 5, 1000.0)]  # cell 3 of 5 runs, since 1000
    line, stream, now = _line_for(tmp_path, True, cells)
    path = tmp_path / "progress.json"
    assert stream.getvalue() == "\r[1/1] a: cell 3/5, 00:00"
    for content, shown in [(json.dumps(_progress(updated=1001.0)), True),
                           ('{"run": "cnn_seed43", "ep', False),  # cut short
                           (json.dumps(_progress(updated=999.0)), False),  # an earlier cell's
                           (json.dumps(_progress(updated=1001.0, stage="ended")), False)]:
        path.write_text(content)
        now[0] += 1
        before = len(stream.getvalue())
        line.tick()
        drawn = stream.getvalue()[before:]
        assert drawn.startswith("\r[1/1] a: cell 3/5, ") and "\n" not in drawn
        assert ("| cnn_seed43: epoch 5/15" in drawn) == shown, content
        assert len(drawn.rstrip(" ")) <= 101
    cells[0] = (5, 5, None)
    line.stop()
    assert re.search(r"\r\[1/1\] a: 5/5 cells, 00:04 *\n\Z", stream.getvalue())


def test_in_a_log_the_line_says_each_epoch_done_once(tmp_path):
    cells = [(2, 5, 1000.0)]
    line, stream, now = _line_for(tmp_path, False, cells)
    path = tmp_path / "progress.json"
    for completed, stage in [(0, "training"), (1, "training"), (1, "validating"),
                             (2, "training"), (2, "ended")]:
        path.write_text(json.dumps(_progress(completed=completed, stage=stage, epochs=2,
                                             updated=now[0])))
        line.tick()
        now[0] += 1
    cells[0] = (5, 5, None)
    line.stop()
    assert stream.getvalue() == (
        "[1/1] a: cell 3/5, 00:01 | cnn_seed43: 1/2 epochs done, 02:10 elapsed, ~04:20 left\n"
        "[1/1] a: cell 3/5, 00:03 | cnn_seed43: 2/2 epochs done, 02:10 elapsed, ~04:20 left\n"
        "[1/1] a: 5/5 cells, 00:05\n")


def test_in_a_log_an_epoch_is_said_even_when_its_cell_ended_before_the_line_looked(tmp_path):
    """A one-epoch phase whose cell ends within the second between two looks: its epoch
    was still done in this notebook, and the log says so."""
    cells = [(2, 5, 1000.0)]
    line, stream, now = _line_for(tmp_path, False, cells)
    (tmp_path / "progress.json").write_text(json.dumps(_progress(
        run="resnet50", phase="frozen", completed=1, epochs=1, stage="ended", updated=1000.5)))
    cells[0] = (3, 5, 1001.0)  # the next cell started after the fit ended
    now[0] = 1001.2
    line.tick()
    assert " | resnet50 (frozen): 1/1 epochs done" in stream.getvalue()


def test_the_kernels_write_progress_to_a_file_the_line_shows(tmp_path, sources, capsys,
                                                            monkeypatch):
    monkeypatch.delenv(liveprogress.PROGRESS_VARIABLE, raising=False)
    _tiny_notebook(sources / "a.ipynb", "import time\nfrom pathlib import Path\n"
                   "from helpers import liveprogress\n"
                   "path = liveprogress.path_from_environment()\n"
                   "Path(RUN_DIR, 'progress_file.txt').write_text(str(path))\n"
                   "liveprogress.ProgressWriter(path).write({'run': 'fake', 'phase': None,\n"
                   "    'epoch': 2, 'epochs': 2, 'step': 0, 'steps': 3, 'stage': 'training',\n"
                   "    'completed': 1, 'initial': 0, 'elapsed': 1.0, 'eta': 1.0})\n"
                   "time.sleep(2.5)  # the runner looks every second")
    run_dir = tmp_path / "run"
    assert study.run_study({}, str(run_dir), notebooks=("a",), notebook_dir=sources,
                           log=lambda message: None) == ["a"]
    out = capsys.readouterr().out  # not a terminal: a line per epoch done, and the last
    lines = out.splitlines()
    assert len(lines) == 2 and "\r" not in out, out
    assert lines[0].startswith("[1/1] a: cell 4/4, 00:0")  # papermill injects a cell
    assert " | fake: 1/2 epochs done, " in lines[0]
    assert re.fullmatch(r"\[1/1\] a: 4/4 cells, 00:\d\d", lines[1])
    progress_file = Path((run_dir / "progress_file.txt").read_text())
    assert progress_file.name == "progress.json" and not progress_file.parent.exists()
    assert liveprogress.PROGRESS_VARIABLE not in os.environ


# -- ImageNet weights, settled before the first notebook --------------------------------------

DECLARED = {"RESNET_WEIGHTS": (str, "imagenet"), "CNN_EPOCHS": (int, 14)}


def test_offline_imagenet_becomes_random_init_said_in_one_line():
    said = []
    settled = study.settle_weights({"CNN_EPOCHS": 3}, DECLARED,
                                   log=said.append)  # the notebooks' default: ImageNet
    assert settled == {"CNN_EPOCHS": 3, "RESNET_WEIGHTS": "none"}
    assert len(said) == 1 and "\n" not in said[0]
    assert "offline (a test)" in said[0] and "random init" in said[0]
    assert "cannot say what transfer learning gives" in said[0]
    assert "--set RESNET_WEIGHTS=PATH" in said[0] and study.IMAGENET_FILE in said[0]


def test_weights_that_can_be_had_or_are_not_imagenets_are_left_as_they_are():
    def never():
        raise AssertionError("asked about ImageNet for weights that are not ImageNet's")
    for weights in ("none", "weights/resnet50.h5"):
        parameters = {"RESNET_WEIGHTS": weights}
        assert study.settle_weights(parameters, DECLARED, unreachable=never) == parameters
    assert study.settle_weights({}, DECLARED, unreachable=lambda: None) == {}


def test_offline_a_resnet50_from_imagenet_in_the_run_folder_is_never_trained_over(tmp_path):
    run = RunFolder(tmp_path / "run")
    for record in (run.run_record("resnet50"), run.work("resnet50") / "record.json"):
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"parameters": {"RESNET_WEIGHTS": "imagenet"}}))
        with pytest.raises(study.StudyError) as refusal:
            study.settle_weights({}, DECLARED, run)
        assert str(record) in str(refusal.value) and "--run-dir" in str(refusal.value)
        record.write_text(json.dumps({"parameters": {"RESNET_WEIGHTS": "none"}}))
    # Random init before, or nothing yet: the fall-back trains over nothing of ImageNet's.
    said = []
    assert study.settle_weights({}, DECLARED, run, log=said.append) == {
        "RESNET_WEIGHTS": "none"}
    assert len(said) == 1


def test_weights_in_keras_cache_need_no_network(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real check, with a cache of its own
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / study.IMAGENET_FILE).write_bytes(b"weights")
    assert study.imagenet_weights_reachable(timeout=0.001) is None


def test_the_study_passes_the_settled_weights_to_the_notebooks(profiles, tmp_path,
                                                               monkeypatch, capsys):
    (profiles / "online.yaml").write_text("RESNET_WEIGHTS: imagenet\n")
    given = []
    monkeypatch.setattr(study, "run_study",
                        lambda parameters, *args, **kwargs: given.append(parameters))
    for extra in ([], ["--set", "RESNET_WEIGHTS=imagenet"]):  # from the profile or --set
        assert study.main(["--no-estimate", "--profile", "online",
                           "--run-dir", str(tmp_path / "run"), *extra]) == 0
        assert given.pop() == {"RESNET_WEIGHTS": "none"}
        out = capsys.readouterr().out
        assert out.index("Profile online") < out.index("ImageNet weights cannot be had here")


# -- what a profile sets where training runs in float32 on the CPU ------------------------------

FLOAT32_PROFILE = """CNN_EPOCHS: 15
CNN_SEEDS: 3
on_float32_cpu:
  CNN_SEEDS: 2
  CNN_DEMO_MAX_IMAGES: 3000
"""


@pytest.mark.parametrize("float32_cpu", [True, False])
def test_a_profiles_float32_section_applies_only_where_training_runs_in_float32_on_the_cpu(
        profiles, tmp_path, monkeypatch, capsys, float32_cpu):
    (profiles / "machine.yaml").write_text(FLOAT32_PROFILE)
    asked, given = [], []
    monkeypatch.setattr(study, "trains_in_float32_on_cpu",
                        lambda precision: asked.append(precision) or float32_cpu)
    monkeypatch.setattr(study, "run_study",
                        lambda parameters, *args, **kwargs: given.append(parameters))
    assert study.main(["--no-estimate", "--profile", "machine", "--run-dir",
                       str(tmp_path / "run"), "--set", "PRECISION=float32"]) == 0
    assert asked == ["float32"]  # the precision --set gives, not the profile's default
    expected = {"CNN_EPOCHS": 15, "CNN_SEEDS": 2 if float32_cpu else 3,
                "PRECISION": "float32", "RESNET_WEIGHTS": "none"}
    if float32_cpu:
        expected["CNN_DEMO_MAX_IMAGES"] = 3000
    assert given == [expected]
    out = capsys.readouterr().out
    said = "This machine trains in float32 on its CPU: profile machine sets CNN_SEEDS=2"
    assert (said in out) is float32_cpu


def test_set_overrides_a_float32_section_and_the_section_is_checked_as_parameters(
        profiles, tmp_path, monkeypatch, capsys, no_execution):
    (profiles / "machine.yaml").write_text(FLOAT32_PROFILE)
    monkeypatch.setattr(study, "trains_in_float32_on_cpu", lambda precision: True)
    configuration = study.configured_parameters("machine", None, ["CNN_SEEDS=4"])
    assert configuration.parameters["CNN_SEEDS"] == 4
    assert configuration.for_this_machine == {"CNN_DEMO_MAX_IMAGES": 3000}  # what it set
    assert configuration.configured["CNN_DEMO_MAX_IMAGES"] == 3000
    # A profile without the section never asks (a TensorFlow start saved).
    monkeypatch.setattr(study, "trains_in_float32_on_cpu", lambda precision: 1 / 0)
    assert study.configured_parameters("ok", None, []).for_this_machine == {}
    assert "on_float32_cpu" not in study.load_profile("machine")
    for section, problem in (("  CNN_SEEDS: two\n", "CNN_SEEDS must be of type int"),
                             (" [CNN_SEEDS]\n", "on_float32_cpu must be lines of NAME: value")):
        (profiles / "bad.yaml").write_text(f"on_float32_cpu:\n{section}")
        assert study.main(["--no-estimate", "--profile", "bad",
                           "--run-dir", str(tmp_path / "run")]) == 1
        assert problem in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_float32_section_is_checked_on_every_machine_before_tensorflow_starts(
        profiles, tmp_path, monkeypatch, capsys, no_execution):
    monkeypatch.setattr(study, "trains_in_float32_on_cpu", lambda precision: 1 / 0)
    cases = (("  CNN_SEEDS: 0\n", "CNN_SEEDS must be 1 or more"),  # though unused here
             ("  DATA_DIR: /elsewhere\n", "sets DATA_DIR, which it may not"),
             ("  PRECISION: float32\n", "sets PRECISION, which it may not"),
             ("  CNN_SEEDZ: 2\n", "did you mean CNN_SEEDS?"))
    for section, problem in cases:
        (profiles / "bad.yaml").write_text(f"on_float32_cpu:\n{section}")
        assert study.main(["--no-estimate", "--profile", "bad",
                           "--run-dir", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert problem in err and f"{profiles / 'bad.yaml'}, on_float32_cpu" in err, err
    # A value the study refuses anyway is refused before the machine is asked.
    (profiles / "machine.yaml").write_text(FLOAT32_PROFILE)
    assert study.main(["--no-estimate", "--profile", "machine", "--set", "CNN_EPOCHS=0",
                       "--run-dir", str(tmp_path / "run")]) == 1
    assert "CNN_EPOCHS" in capsys.readouterr().err


def test_the_data_folder_given_wins_over_nothing_in_a_section_and_set_wins_over_all(
        profiles, tmp_path, monkeypatch):
    (profiles / "machine.yaml").write_text(FLOAT32_PROFILE)
    monkeypatch.setattr(study, "trains_in_float32_on_cpu", lambda precision: True)
    configuration = study.configured_parameters(
        "machine", str(tmp_path), ["CNN_SEEDS=5", "CNN_DEMO_MAX_IMAGES=7"])
    assert configuration.for_this_machine == {}  # every value of it overridden: none used
    assert configuration.parameters == {"CNN_EPOCHS": 15, "CNN_SEEDS": 5,
                                        "CNN_DEMO_MAX_IMAGES": 7, "DATA_SOURCE": "local",
                                        "DATA_DIR": str(tmp_path.resolve())}
    (profiles / "empty.yaml").write_text("CNN_SEEDS: 3\non_float32_cpu:\n")
    assert study.configured_parameters("empty", None, []).parameters == {"CNN_SEEDS": 3}


def test_estimate_only_prints_the_estimate_or_fails_without_one(
        profiles, tmp_path, monkeypatch, capsys, no_execution):
    monkeypatch.setattr(estimate, "in_subprocess",
                        lambda configured: ("No time estimate: no TensorFlow here", None))
    assert study.main(["--profile", "ok", "--estimate-only", "--run-dir", str(tmp_path)]) == 1
    assert "No time estimate: no TensorFlow here" in _error_line(capsys)
    with pytest.raises(SystemExit):  # one or the other
        study.main(["--profile", "ok", "--estimate-only", "--no-estimate"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_whether_training_runs_in_float32_on_the_cpu_is_asked_as_the_notebooks_choose():
    import tensorflow as tf

    from helpers import devices

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU here: the notebooks train on it")
    assert study.trains_in_float32_on_cpu("auto") is not devices.cpu_supports_bfloat16()
    assert study.trains_in_float32_on_cpu("float32") is True
    assert study.trains_in_float32_on_cpu("mixed_bfloat16") is False
    with pytest.raises(study.StudyError, match="PRECISION float64.*ValueError"):
        study.trains_in_float32_on_cpu("float64")


# -- where a run folder may be ------------------------------------------------------------------

def test_a_run_folder_inside_the_data_or_another_run_folder_is_refused_before_any_work(
        tmp_path, profiles, capsys, no_execution, monkeypatch):
    data = tmp_path / "images"
    (data / "basophil").mkdir(parents=True)
    for run_dir in (data / "basophil" / "myrun", data):
        assert study.main(["--no-estimate", "--profile", "ok", "--data-dir", str(data),
                           "--run-dir", str(run_dir)]) == 1
        assert "lies inside the data folder" in _error_line(capsys)
    assert sorted(path.name for path in data.rglob("*")) == ["basophil"]  # nothing made
    # Kaggle's download is refused before it comes, where kagglehub will put it.
    kaggle = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(kaggle))
    run_dir = kaggle / "datasets" / "unclesamulus" / "blood-cells-image-dataset" / "run"
    assert study.main(["--no-estimate", "--profile", "ok", "--set", "DATA_SOURCE=kaggle",
                       "--run-dir", str(run_dir)]) == 1
    assert "lies inside the data folder" in _error_line(capsys) and not kaggle.exists()
    outer = RunFolder(tmp_path / "outer")
    runfolder.mark(outer.root)
    for inner in (outer.root / "figures" / "run", outer.root / "run"):
        assert study.main(["--profile", "ok", "--run-dir", str(inner)]) == 1
        assert f"inside the run folder {outer.root}" in _error_line(capsys)
    # Data inside the run folder is how synthetic data lives: allowed.
    runfolder.check_placement(outer.root, outer.root / "synthetic")


def test_a_profile_is_a_name_never_a_path(profiles, capsys, no_execution, tmp_path):
    (tmp_path / "outside.yaml").write_text("CNN_EPOCHS: 1\n")
    for name in ("../outside", "/etc/passwd", "ok/../ok", "ok.yaml", ".hidden", "o\x1b[2Jk"):
        assert study.main(["--profile", name]) == 1
        error = _error_line(capsys)
        assert "takes the name of a profile" in error and "known: ok" in error
        assert "\x1b" not in error  # escaped, never sent to the terminal as is
    assert not (tmp_path / "runs").exists()


# -- signals -------------------------------------------------------------------------------------

STUDY_OF = """
import sys
from pathlib import Path
from helpers.tools import study
study.NOTEBOOKS, study.NOTEBOOK_DIR = ("a",), Path(sys.argv[1])
study.PROFILE_DIR = Path(sys.argv[2])
sys.exit(study.main(["--no-estimate", "--profile", "ok", "--run-dir", sys.argv[3]]))
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_the_study_as_ctrl_c_does(tmp_path, sources, profiles,
                                                         signal_name):
    import signal
    import time

    started = tmp_path / "started"
    _tiny_notebook(sources / "a.ipynb", f"import time\nopen({str(started)!r}, 'w').close()\n"
                   "time.sleep(120)")
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", STUDY_OF, str(sources), str(profiles),
                                str(run_dir)], cwd=Path(study.__file__).parents[2],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), process.communicate(timeout=30)
    process.send_signal(getattr(signal, signal_name))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + getattr(signal, signal_name), err
    assert err.splitlines()[-1] == (f"error: stopped by {signal_name} in a; run the same "
                                    "command again to resume")
    assert (run_dir / "notebooks" / "a.failed.ipynb").exists()
    assert _hidden(run_dir / "notebooks") == []
    assert not runlock.lock_path(run_dir).exists()
