"""Run the whole study headless: the notebooks in order, with papermill, into a run folder.

    python -m helpers.study [--profile cpu] [--data-dir DIR] [--run-dir DIR] [--force]
                            [--set NAME=VALUE ...] [--no-estimate | --estimate-only]

Profiles are ``notebooks/profiles/NAME.yaml``, overrides of the notebooks' defaults (which
are the ``colab`` profile, what "Run all" in Colab runs): ``smoke`` (synthetic data, a minute per
notebook: CI), ``cpu`` (the real data at 64 px on a 2-core machine, about an hour where the
CPU has bfloat16 units; ResNet50 from ImageNet weights, or random init where they cannot be
had, said before the first notebook),
``full`` (224 px on a GPU, ImageNet weights). The default is ``cpu``, which runs anywhere.
``--data-dir`` uses a folder you have instead of downloading from Kaggle. A profile's
``on_float32_cpu`` values replace its own where the notebooks would train in float32 on the
CPU (said before the first notebook). Before the first notebook the runner prints each
one's expected time here (``helpers.tools.estimate``; ``--estimate-only`` stops there).

The executed notebooks go to ``RUN_DIR/notebooks/``. A notebook already completed with the
same parameters and the same source is skipped (``--force`` reruns all), unless a file it wrote
into the run folder is missing (its record, ``notebooks/NAME.done.json``, lists them); once one
runs, the ones after it run too, since their inputs may have changed. The run stops at the
first failing notebook, naming the cell and the error; the notebook as far as it ran is
``notebooks/NAME.failed.ipynb``, and the ``NAME.ipynb`` of an earlier successful run stays.
Ctrl-C stops it the same way (exit status 130); the same command resumes.

Each notebook shows one line, redrawn in place on a terminal: the cell running, the time
since the notebook started beside its expected time, and while a model trains, its run, epoch
of epochs, step, time since its ``fit`` began and an estimate of the time left
(``helpers.liveprogress``), cut to the terminal's width:

    [3/5] 03_train_cnn: cell 26/31, 06:34 of ~39:48 | cnn_seed43: epoch 5/15,
        step 120/187, 02:10 elapsed, ~04:20 left       (one line)

When the notebook ends it leaves "[3/5] 03_train_cnn: 31/31 cells, 32:10 (expected ~39:48)".
Where stdout is not a terminal (a log file, CI) nothing is redrawn: a line per epoch a run
finishes, then that one.

The study holds the run folder's lock (``helpers.runlock``) from start to end and passes it to
the kernels it starts, so their training writes under it; a second study on the same folder,
or one started while a notebook elsewhere trains into it, is refused at once, naming the
holder. At the end the comparison table is printed.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import datetime
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import nbformat
import pandas as pd
import papermill
import yaml
from papermill.engines import NBClientEngine, papermill_engines

from helpers import acquire, files, liveprogress, progressbar, project, runfolder, runlock
from helpers.errors import DataError
from helpers.runfolder import RunFolder, check_root
from helpers.tools import estimate
from helpers.tools import parameters as study_parameters
from helpers.tools import progress as progress_view

NOTEBOOKS = project.NOTEBOOKS
NOTEBOOK_DIR = project.ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"
DEFAULT_PROFILE = "cpu"
# Folders of a run folder that hold no notebook's results: the executed notebooks, the
# kernels' logs and trainings in progress (moved into place when they finish).
NOT_RESULTS = ("notebooks", "logs", "work")
RESUME = "run the same command again to resume"


class StudyError(RuntimeError):
    """A notebook failed, or the profile, an override or the run folder is wrong."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``docker stop``, a closed terminal, a cancelled CI
    job), raised where the study is, so it ends as Ctrl-C does."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _stop(signal_number: int, frame) -> None:
    raise Stopped(signal_number)


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C while the study was at notebook ``notebook`` (still a KeyboardInterrupt)."""

    def __init__(self, notebook: str, signal_number: int | None = None) -> None:
        super().__init__(notebook)
        self.notebook, self.signal_number = notebook, signal_number


# How a value of each type reads in a message: what it is, and what to give instead.
_KINDS: dict[type, tuple[str, str]] = {
    bool: ("true or false", "true or false"),
    int: ("a whole number", "a whole number, such as 10"),
    float: ("a number", "a number, such as 0.001"),
    str: ("text", "text (in quotes where it would read as a number or true/false)"),
    list: ("a list", "a list, such as [a, b]"),
    dict: ("a mapping", "a mapping, such as {a: 1}"),
}


def _what_it_is(value: object) -> str:
    kind = type(value)
    return _KINDS[kind][0] if kind in _KINDS else f"a {kind.__name__}"


def _what_to_give(expected: type) -> str:
    return _KINDS[expected][1] if expected in _KINDS else f"a {expected.__name__}"


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text spans lines)."""
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


# A profile's mapping of values for a machine that trains in float32 on its CPU (no GPU, and
# no bfloat16 units or PRECISION float32): they replace the profile's own there, before --set.
FLOAT32_CPU_SECTION = "on_float32_cpu"


def _read_profile(name: str) -> dict:
    """Profile ``name`` as written (``notebooks/profiles/NAME.yaml``); StudyError naming the
    file when it is not a YAML mapping of names."""
    known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):  # never a path out of the folder
        raise StudyError(f"--profile takes the name of a profile in {PROFILE_DIR} (known: "
                         f"{known}), not {files.terminal_text(repr(name))}")
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        raise StudyError(f"No profile {name!r} (known: {known})")
    try:
        profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise StudyError(f"{path} is not valid YAML: {_yaml_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise StudyError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})"
                         ) from None
    if profile is None:  # an empty profile: the notebooks' defaults
        return {}
    if not isinstance(profile, dict) or not all(isinstance(key, str) for key in profile):
        got = "names that are not text" if isinstance(profile, dict) else _what_it_is(profile)
        raise StudyError(f"{path} must be lines of NAME: value (a YAML mapping), not {got}")
    section = profile.setdefault(FLOAT32_CPU_SECTION, {})
    if section is None:  # written with nothing under it
        section = profile[FLOAT32_CPU_SECTION] = {}
    if not isinstance(section, dict) or not all(isinstance(key, str) for key in section):
        raise StudyError(f"{path}: {FLOAT32_CPU_SECTION} must be lines of NAME: value "
                         f"(a YAML mapping), not {_what_it_is(section)}")
    return profile


def load_profile(name: str) -> dict:
    """The parameters of profile ``name`` (``notebooks/profiles/NAME.yaml``) on any machine;
    StudyError naming the file when it is not a YAML mapping of parameter names."""
    return {key: value for key, value in _read_profile(name).items()
            if key != FLOAT32_CPU_SECTION}


def float32_cpu_values(name: str) -> dict:
    """The values profile ``name`` sets where the notebooks train in float32 on a CPU
    (its ``on_float32_cpu`` mapping; empty where it has none)."""
    return dict(_read_profile(name).get(FLOAT32_CPU_SECTION, {}))


def trains_in_float32_on_cpu(precision: str) -> bool:
    """Whether the notebooks here would train in float32 on the CPU under PRECISION
    ``precision``: asked of a Python that imports TensorFlow and chooses as they do
    (``devices.precision_here``), a few seconds; StudyError when it cannot answer. A
    mixed precision asked for on a CPU without its units is not float32: what was asked for
    runs, section or not."""
    code = ("import sys\nimport tensorflow as tf\nfrom helpers import devices\n"
            "print(devices.precision_here(sys.argv[1]) == 'float32' "
            "and not tf.config.list_physical_devices('GPU'))")
    try:
        done = subprocess.run([sys.executable, "-c", code, precision], capture_output=True,
                              text=True, cwd=project.ROOT, timeout=300)
    except subprocess.TimeoutExpired:
        raise StudyError("Could not tell whether this machine trains in float32 on its CPU: "
                         "starting TensorFlow took over 300 s") from None
    answer = done.stdout.strip().splitlines()[-1:] if not done.returncode else []
    if answer not in (["True"], ["False"]):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise StudyError(f"Could not tell whether this machine trains in float32 on its CPU "
                         f"(PRECISION {precision}): {last}")
    return answer == ["True"]


def parse_override(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE read as YAML (numbers, true/false, lists, strings); an
    empty VALUE is the empty text (``--set CLUSTER=``), since no parameter takes None."""
    name, separator, value = text.partition("=")
    if not separator or not name.isupper():
        raise StudyError(f"--set takes NAME=VALUE with an UPPER_CASE name, got {text!r}")
    if name == "RUN_DIR":
        raise StudyError("The run folder is given with --run-dir, not --set RUN_DIR.")
    if not value.strip():
        return name, ""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise StudyError(f"The value in --set {text} is not valid YAML "
                         f"({_yaml_problem(error)}): write text in quotes, lists as [a, b]"
                         ) from None
    # YAML 1.1 reads 5e-5 (no dot) as text; the notebooks write floats that way.
    if isinstance(parsed, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", parsed):
        parsed = float(parsed)
    return name, parsed


def declared_parameters(path: Path) -> dict[str, tuple[type, object]]:
    """The parameters cell of a notebook: each name's declared type and default value.

    The cell holds only ``NAME: type = literal  # comment`` lines (the lint test checks it).
    """
    notebook = nbformat.read(path, as_version=4)
    cell = next(cell for cell in notebook.cells
                if "parameters" in cell.metadata.get("tags", []))
    declared = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared[node.target.id] = (getattr(builtins, ast.unparse(node.annotation)),
                                        ast.literal_eval(node.value))
    return declared


def notebook_parameters(path: Path) -> set[str]:
    """The names declared in a notebook's ``parameters`` cell."""
    return set(declared_parameters(path))


def all_declared_parameters(notebook_dir: Path = NOTEBOOK_DIR,
                            notebooks: tuple[str, ...] = NOTEBOOKS,
                            ) -> dict[str, tuple[type, object]]:
    """The parameters of every notebook of the study (a name shared by several notebooks
    is one parameter: the test suite checks that its type and default agree)."""
    declared: dict[str, tuple[type, object]] = {}
    for name in notebooks:
        declared.update(declared_parameters(notebook_dir / f"{name}.ipynb"))
    return declared


def check_parameters(parameters: dict, declared: dict[str, tuple[type, object]]) -> None:
    """Raise StudyError for a name no notebook declares (naming the closest declared one)
    or a value of another type than declared (an int is a valid float)."""
    for name, value in parameters.items():
        if name not in declared:
            closest = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"; did you mean {closest[0]}?" if closest else ""
            raise StudyError(f"No notebook declares the parameter {name}{hint}")
        expected = declared[name][0]
        valid = (isinstance(value, expected) and not (expected is int and isinstance(value, bool))
                 or expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not valid:
            got = "no value" if value is None else f"{value!r}, which is {_what_it_is(value)}"
            raise StudyError(f"{name} must be of type {expected.__name__}, got {got}: "
                             f"give {_what_to_give(expected)}")


# What libraries print on stderr while they start (TensorFlow's C++ logging before absl is set
# up, CUDA probing on a machine without a GPU, oneDNN and graph-optimizer notices), tqdm's
# fallback warning, and the decoder's complaints about files the audit reports anyway: not
# part of the study's report.
START_UP_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|cudart_stub|"
    r"cuda_platform|cuInit|cuda drivers|node_def_util|loop_optimizer|IProgress not found|"
    r"Kernel is running over TCP|cpu_feature_guard|rebuild TensorFlow with the appropriate|"
    # TensorFlow's decoder logging each file it refuses: the audit reports them, with reasons.
    r"jpeg_mem\.cc|local_rendezvous\.cc|Invalid PNG data|Premature end of JPEG")


def remove_start_up_noise(path: Path) -> int:
    """Remove START_UP_NOISE lines from the stderr outputs of an executed notebook (an output
    left empty goes); returns how many lines went."""
    notebook = nbformat.read(path, as_version=4)
    removed = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept_outputs = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output["text"].splitlines(keepends=True)
                clean = [line for line in lines if not START_UP_NOISE.search(line)]
                removed += len(lines) - len(clean)
                output["text"] = "".join(clean)
                if not output["text"].strip():
                    continue
            kept_outputs.append(output)
        cell["outputs"] = kept_outputs
    files.write_text_atomically(nbformat.writes(notebook), path)
    return removed


def completion_record(source: Path, parameters: dict, written: Iterable[str] = ()) -> dict:
    """What makes a finished notebook reusable: its source's hash and its parameters; and
    the run folder's files it wrote (``written``), which must still be there."""
    return {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "parameters": parameters, "files": sorted(written)}


def read_record(path: Path) -> dict | None:
    """A stored completion record, or None (none, or damaged: the notebook runs again)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def same_run(stored: dict | None, record: dict) -> bool:
    """Whether a stored record is of the same source and parameters (its files aside).

    RUN_DIR aside too: the record lies in the run folder, so a folder that was moved (and is
    given with its new name) holds the same results."""
    if stored is None or stored.get("source_sha256") != record["source_sha256"]:
        return False
    parameters = stored.get("parameters")
    return isinstance(parameters, dict) and _without_run_dir(parameters) == _without_run_dir(
        record["parameters"])


def _without_run_dir(parameters: dict) -> dict:
    return {key: value for key, value in parameters.items() if key != "RUN_DIR"}


def recorded_files(stored: dict | None) -> list[str]:
    """The files a stored record lists (none in records written before the list was kept)."""
    listed = (stored or {}).get("files", [])
    return [path for path in listed if isinstance(path, str)] if isinstance(listed, list) else []


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """The run folder's result files, by path relative to ``root``: (size, mtime_ns). Leaves
    out NOT_RESULTS and names starting with a dot (the lock, files being written)."""
    found = {}
    for path in files.list_files(root, skip_hidden=True):
        relative = path.relative_to(root)
        if relative.parts[0] in NOT_RESULTS:
            continue
        try:
            status = path.stat()
        except OSError:  # a link to nothing, or a file removed while we looked
            continue
        found[relative.as_posix()] = (status.st_size, status.st_mtime_ns)
    return found


def failure_message(name: str, error: papermill.PapermillExecutionError, output: Path,
                    log_file: Path) -> str:
    """Which notebook and cell failed (or were interrupted), with the error, the cell's code,
    and where to look."""
    code = "\n".join("    " + line for line in error.source.splitlines()[:12])
    log = f"What its kernel wrote to stderr: {log_file}"
    if error.ename == "KeyboardInterrupt":
        return (f"interrupted in {name}, in the cell run as In [{error.exec_count}]; {RESUME}\n"
                f"{code}\nThe notebook as far as it ran: {output}\n{log}")
    evalue = f": {error.evalue}" if str(error.evalue).strip() else ""
    return (f"{name} failed in the cell run as In [{error.exec_count}]:\n"
            f"  {error.ename}{evalue}\n{code}\n"
            f"The executed notebook with the full traceback: {output}\n{log}")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block (the kernels started there inherit
    them), as it was after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send this process's stderr, and so that of the kernels it starts, to the file ``path``
    (TensorFlow's C++ start-up lines, kernel warnings): the terminal keeps the progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("wb") as log_file:
            os.dup2(log_file.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# -- the notebook's line on the terminal ---------------------------------------------------------

def fit_width(line: str, width: int | None) -> str:
    """``line`` cut to ``width`` characters (ending in "..."), or as it is (None: no limit)."""
    if width is None or len(line) <= width:
        return line
    return line[:width - 3] + "..." if width > 3 else line[:max(0, width)]


def notebook_line(counter: str, done: int, total: int, elapsed: float,
                  progress: dict | None = None, now: float | None = None,
                  width: int | None = None, expected: float | None = None) -> str:
    """The line of a notebook that runs: the cell running (``done`` cells of ``total`` are
    done), the time since it started and the seconds the runner's estimate ``expected`` of
    it, then what its training run does (``progress``, as ``progress_view.read`` gives it,
    as of ``now``), within ``width`` characters:

        [3/5] 03_train_cnn: cell 26/31, 06:34 of ~39:48 | cnn_seed43: epoch 5/15,
        step 120/187, 02:10 elapsed, ~04:20 left

    (one line). Where it is too wide the step and elapsed time go first, then its end."""
    if done >= total:  # the kernel shuts down
        return fit_width(final_line(counter, done, total, elapsed, expected), width)
    line = f"{counter}: cell {done + 1}/{total}, {progress_view.clock(elapsed)}"
    if expected is not None:
        line += f" of {_about(expected)}"
    if progress is None:
        return fit_width(line, width)
    now = time.time() if now is None else now
    full = f"{line} | {progress_view.describe(progress, now)}"
    if width is None or len(full) <= width:
        return full
    return fit_width(f"{line} | {progress_view.describe(progress, now, short=True)}", width)


def final_line(counter: str, done: int, total: int, elapsed: float,
               expected: float | None = None) -> str:
    """The line a notebook leaves: "[3/5] 03_train_cnn: 31/31 cells, 32:10", and with the
    estimate's seconds ``expected``, " (expected ~39:48)"."""
    line = f"{counter}: {done}/{total} cells, {progress_view.clock(elapsed)}"
    return line if expected is None else f"{line} (expected {_about(expected)})"


def _about(seconds: float) -> str:
    """The estimate's seconds as "~MM:SS", rounded as the estimate printed them ("12 s")."""
    return f"~{progress_view.clock(round(seconds))}"


def _terminal_width() -> int:
    """Columns for a redrawn line: one less than the terminal's, so it never wraps."""
    return max(20, shutil.get_terminal_size().columns - 1)


class NotebookLine:
    """The one line a notebook shows on ``stream`` (stdout) while it runs (``start``) and
    after (``stop``: ``final_line``).

    On a terminal it is redrawn in place every ``interval`` seconds from the cells done
    (``cells``) and the progress file the kernel's training writes (``progress_file``,
    ``liveprogress``): ``notebook_line``, cut to the terminal's width. Progress written before
    the running cell started, or by a ``fit`` that ended, is not shown; a missing or garbled
    file shows nothing. Elsewhere (a log file, CI) nothing is redrawn: one line per epoch a
    training run finishes, then the final line.
    """

    def __init__(self, counter: str, progress_file: Path, stream=None, interval: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 width: Callable[[], int] = _terminal_width,
                 expected: float | None = None) -> None:
        self.counter, self.progress_file, self.expected = counter, Path(progress_file), expected
        self.stream = stream
        self.interval, self.clock, self.width = interval, clock, width
        self._cells: Callable[[], tuple[int, int, float | None]] = lambda: (0, 0, None)
        self._done = self._total = 0
        self._drawn = 0  # characters of the line drawn last
        self._logged: tuple | None = None  # the epochs done said last (not a terminal)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    def _is_terminal(self) -> bool:
        try:
            return bool(self._out().isatty())
        except (AttributeError, ValueError):  # no isatty, or closed
            return False

    def start(self, cells: Callable[[], tuple[int, int, float | None]],
              background: bool = True) -> None:
        """Start showing the line: ``cells()`` gives (cells done, cells in all, when the
        running cell started or None); with ``background``, a thread redraws it."""
        self._cells, self._started = cells, self.clock()
        self.tick()
        if background:
            self._thread = threading.Thread(target=self._run, name="notebook line",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """Draw the line once (or, not on a terminal, say an epoch done). Never raises: the
        line must not stop the study."""
        try:
            with self._lock:
                self._tick()
        except Exception:  # a notebook changed under us, a stream closed: skip this one
            pass

    def _tick(self) -> None:
        now = self.clock()
        self._done, self._total, since = self._cells()
        progress = progress_view.read(self.progress_file)
        elapsed = now - self._started
        if self._is_terminal():
            shown = progress if progress_view.is_current(progress, since, now) else None
            self._draw(notebook_line(self.counter, self._done, self._total, elapsed, shown,
                                     now, self.width(), self.expected))
        # Not a terminal: every epoch a run finished in this notebook (the file is the
        # notebook's own), even where its cell ended before this tick looked.
        elif (progress_view.is_current(progress, self._started, now, include_ended=True)
              and progress_view.epochs_done_in_fit(progress) > 0):
            said = (progress["run"], progress.get("phase"), progress.get("initial"),
                    progress.get("completed"))
            if said != self._logged:
                self._logged = said
                line = notebook_line(self.counter, self._done, self._total, elapsed,
                                     expected=self.expected)
                self._out().write(
                    f"{line} | {progress_view.describe_epochs_done(progress, now)}\n")
                self._out().flush()

    def _draw(self, line: str, end: str = "") -> None:
        padding = " " * max(0, min(self._drawn, self.width()) - len(line))
        self._out().write(f"\r{line}{padding}{end}")
        self._out().flush()
        self._drawn = 0 if end else len(line)

    def stop(self) -> None:
        """Stop redrawing and leave the final line."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self._done, self._total, _ = self._cells()
        with self._lock:
            line = final_line(self.counter, self._done, self._total,
                              self.clock() - self._started, self.expected)
            if self._is_terminal():
                self._draw(line, end="\n")
            else:
                self._out().write(line + "\n")
                self._out().flush()


def _started_at(text: object) -> float | None:
    """A papermill time stamp (ISO 8601) as seconds since the epoch, or None."""
    try:
        return datetime.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def cell_state(notebook: nbformat.NotebookNode) -> tuple[int, int, float | None]:
    """(cells done, cells in all, when the running cell started) of a notebook papermill
    executes, from the status it keeps in each cell's metadata."""
    done, since = 0, None
    for cell in notebook.cells:
        state = cell.get("metadata", {}).get("papermill", {})
        status = state.get("status")
        if status in ("completed", "failed"):
            done += 1
        elif status == "running":
            since = _started_at(state.get("start_time"))
    return done, len(notebook.cells), since


class StudyEngine(NBClientEngine):
    """papermill's engine (nbclient), showing a ``NotebookLine`` while the notebook runs."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, study_line=None, **kwargs):
        if study_line is None:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        study_line.start(lambda: cell_state(nb_man.nb))
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        finally:
            study_line.stop()


ENGINE = "blood-cell-study"
papermill_engines.register(ENGINE, StudyEngine)


def run_study(parameters: dict, run_dir: str, force: bool = False,
              notebooks: tuple[str, ...] = NOTEBOOKS, notebook_dir: Path = NOTEBOOK_DIR,
              log=print, expected: dict[str, float] | None = None) -> list[str]:
    """Execute ``notebooks`` in order into ``RUN_DIR/notebooks``; returns those executed.

    Each notebook gets the profile's parameters it declares, with RUN_DIR set to
    ``run_dir`` (a relative one is relative to the repository root, in the notebooks too).
    Each shows one line on stdout (``NotebookLine``: its cells, its time beside the seconds
    ``expected`` of it by name, and what a training run in it does); its kernel's stderr
    goes to
    ``RUN_DIR/logs/NAME.log``. The run folder's lock is held throughout (RunFolderBusyError
    when another process holds it). Raises StudyError at the first failure, and
    StudyInterrupted (a KeyboardInterrupt naming the notebook) on Ctrl-C.
    """
    run = RunFolder(project.resolve(run_dir))
    check_root(run.root)
    with runlock.held(run.root, f"python -m helpers.study into {run.root}"):
        runfolder.mark(run.root)
        run.notebooks.mkdir(parents=True, exist_ok=True)
        # Left by a study that was killed: under the lock, no other study writes here.
        for leftover in [*run.notebooks.glob(".*.running-*"), *run.notebooks.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)
        executed, rerun_rest = [], force
        for number, name in enumerate(notebooks, start=1):
            counter = f"[{number}/{len(notebooks)}] {name}"
            try:
                if _run_notebook(run, run_dir, notebook_dir / f"{name}.ipynb", parameters,
                                 counter, rerun_rest, log, (expected or {}).get(name)):
                    executed.append(name)
                    rerun_rest = True
            except KeyboardInterrupt as interrupt:
                raise StudyInterrupted(name, getattr(interrupt, "signal_number", None)) from None
    return executed


def _run_notebook(run: RunFolder, run_dir: str, source: Path, parameters: dict, counter: str,
                  rerun: bool, log, expected: float | None = None) -> bool:
    """Execute one notebook of the study unless it is done (and ``rerun`` is false); whether
    it ran."""
    name = source.stem
    declared = notebook_parameters(source)
    given = {key: value for key, value in {**parameters, "RUN_DIR": run_dir}.items()
             if key in declared}
    output = run.notebooks / f"{name}.ipynb"
    record_path = run.notebooks / f"{name}.done.json"
    stored = read_record(record_path)
    if not rerun and same_run(stored, completion_record(source, given)):
        missing = next((path for path in recorded_files(stored)
                        if not (run.root / path).exists()), None)
        if missing is None and output.exists():
            log(f"{counter}: done before with the same parameters, skipped (--force reruns it)")
            return False
        missing = missing or output.relative_to(run.root).as_posix()
        log(f"{counter}: {missing} is missing, run again")
    # A rerun that resumes may leave some of its files as they were: still its files. Until
    # it succeeds its record holds only them (no source or parameters: not done).
    earlier = {path for path in recorded_files(stored) if (run.root / path).exists()}
    files.write_json({"files": sorted(earlier)}, record_path)
    before = snapshot(run.root)
    _execute(run, source, given, counter, expected)
    written = {path for path, status in snapshot(run.root).items()
               if before.get(path) != status}
    files.write_json(completion_record(source, given, written | earlier), record_path)
    return True


def _execute(run: RunFolder, source: Path, given: dict, counter: str,
             expected: float | None = None) -> None:
    """Execute ``source`` into ``notebooks/NAME.ipynb`` through a temporary file, so that a
    failed run leaves the completed notebook of an earlier one: the failed one goes to
    ``NAME.failed.ipynb``."""
    name = source.stem
    output = run.notebooks / f"{name}.ipynb"
    failed = run.notebooks / f"{name}.failed.ipynb"
    running = run.notebooks / f".{name}.running-{os.getpid()}.ipynb"
    # Kernels launched from here print progress bars as one final line (helpers.progressbar),
    # hold the study's lock (their training code acquires it on the same folder) and write
    # their training's progress to a file of a folder of this notebook's own, which its line
    # shows (helpers.liveprogress).
    variables = {progressbar.HEADLESS_VARIABLE: "1"}
    token = runlock.token(run.root)
    if token is not None:  # None: this process writes under an inherited lock, passed on as is
        variables[runlock.LOCK_VARIABLE] = token
    try:
        try:
            with tempfile.TemporaryDirectory(prefix="blood-cell-study-progress-") as folder:
                progress_file = Path(folder) / "progress.json"
                variables[liveprogress.PROGRESS_VARIABLE] = str(progress_file)
                with environment(variables), stderr_to(run.log(name)):
                    papermill.execute_notebook(str(source), str(running), parameters=given,
                                               cwd=str(project.ROOT), kernel_name="python3",
                                               progress_bar=False, engine_name=ENGINE,
                                               study_line=NotebookLine(counter, progress_file,
                                                                       expected=expected))
            remove_start_up_noise(running)
            os.replace(running, output)
        except BaseException:  # Ctrl-C included: no temporary file stays behind
            if running.exists():
                os.replace(running, failed)
            raise
    except papermill.PapermillExecutionError as error:
        raise StudyError(failure_message(name, error, failed, run.log(name))) from None
    except Exception as error:  # the kernel died (out of memory, killed) or would not start
        raise StudyError(
            f"{name} stopped: {type(error).__name__}: {error}. Its kernel died or could not "
            f"start (out of memory?). The notebook as far as it ran: {failed}\n"
            f"What its kernel wrote to stderr: {run.log(name)}") from None
    failed.unlink(missing_ok=True)


LIMITS_HEADING = "## Limits of this study"


def report_front(run: RunFolder, notebooks: tuple[str, ...] = NOTEBOOKS) -> list:
    """The cells the report opens with: the conclusion (``metrics/conclusion.md``), the
    comparison table (``metrics/comparison.csv``) and the study's limits (the cell of the
    last notebook headed LIMITS_HEADING), each where the run wrote it; then a line saying
    the notebooks follow."""
    cells = [nbformat.v4.new_markdown_cell(
        f"# The blood cell study in {run.root.name}: the answer first\n\n"
        "The conclusion, the comparison on the test split and the study's limits, as the "
        "last notebook wrote them; then the notebooks as they ran, in order.")]
    if run.conclusion.exists():
        cells.append(nbformat.v4.new_markdown_cell(
            "## Conclusion\n\n" + run.conclusion.read_text(encoding="utf-8")))
    if run.comparison_table.exists():
        table = pd.read_csv(run.comparison_table, index_col="model").T
        cells.append(nbformat.v4.new_markdown_cell(
            "## The comparison on the test split\n\n"
            + table.to_html(float_format=lambda value: f"{value:.4f}", na_rep="")))
    last = nbformat.read(run.notebooks / f"{notebooks[-1]}.ipynb", as_version=4)
    cells += [cell for cell in last.cells if cell.cell_type == "markdown"
              and cell.source.startswith(LIMITS_HEADING)]
    cells.append(nbformat.v4.new_markdown_cell(
        "---\n\n*The notebooks follow: " + ", ".join(notebooks) + ".*"))
    return cells


# -- ImageNet weights, before the first notebook ------------------------------------------------

# Where keras.applications.ResNet50(weights="imagenet", include_top=False) downloads from, and
# the file it keeps in Keras's cache (tests/test_models.py checks both against Keras).
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_FILE}"


def imagenet_weights_reachable(timeout: float = 10.0) -> str | None:
    """None where ResNet50's ImageNet weights can be had (in Keras's cache, or the download
    answers), else why not, in a few words."""
    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    if (cache / IMAGENET_FILE).is_file():
        return None
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(IMAGENET_URL, method="HEAD"),
                                    timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        return f"the download answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"the download failed: {reason}"


def _imagenet_resnet50_in(run: RunFolder) -> Path | None:
    """The record of a ResNet50 trained (or training) from ImageNet weights in ``run``, or
    None: what a fall-back to random init would train over."""
    for record in (run.run_record("resnet50"), run.work("resnet50") / "record.json"):
        try:
            weights = json.loads(record.read_text(encoding="utf-8"))["parameters"].get(
                "RESNET_WEIGHTS")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if weights == "imagenet":
            return record
    return None


def settle_weights(parameters: dict, declared: dict[str, tuple[type, object]],
                   run: RunFolder | None = None,
                   unreachable: Callable[[], str | None] | None = None, log=print) -> dict:
    """The parameters with RESNET_WEIGHTS settled before any notebook runs.

    Where ImageNet weights are meant but cannot be had, they become "none" and one line
    says so and how to have them: the study then runs to its end (an offline machine with
    a local data folder is the common case), its ResNet50 labelled "ResNet50, random init"
    in every result and its conclusion saying the run cannot answer the transfer question.
    Refusing instead would stop a student's whole study for one model; the label, not the
    parameter asked for, is what every result carries (notebook 4 labels by what it gets).
    Where ``run`` already holds a ResNet50 from ImageNet weights, falling back would train
    over it: StudyError, naming the ways out."""
    weights = parameters.get("RESNET_WEIGHTS", declared.get("RESNET_WEIGHTS", (str, None))[1])
    if weights != "imagenet":
        return parameters
    why = (unreachable or imagenet_weights_reachable)()
    if why is None:
        return parameters
    earlier = _imagenet_resnet50_in(run) if run is not None else None
    if earlier is not None:
        raise StudyError(
            f"ImageNet weights cannot be had here ({why}), and {run.root} holds a ResNet50 "
            f"trained from them ({earlier}): random init would train over it. Put "
            f"{IMAGENET_FILE} in Keras's cache (~/.keras/models/) or give --set "
            "RESNET_WEIGHTS=PATH to a copy, or use another --run-dir.")
    log(f"ImageNet weights cannot be had here ({why}): ResNet50 trains from random init, "
        "labelled so everywhere, and this run cannot say what transfer learning gives. "
        f"With internet they download; offline, --set RESNET_WEIGHTS=PATH uses a copy of "
        f"{IMAGENET_FILE}.")
    return {**parameters, "RESNET_WEIGHTS": "none"}


def write_report(run: RunFolder, notebooks: tuple[str, ...] = NOTEBOOKS) -> Path:
    """The executed notebooks as one self-contained HTML page (figures embedded), to send to
    someone without Jupyter: ``RUN_DIR/report.html``. It opens with ``report_front``: the
    answer and its limits before any setup code."""
    from nbconvert import HTMLExporter  # a tool of the headless runner, not of the notebooks

    combined = nbformat.v4.new_notebook()
    for cell in report_front(run, notebooks):
        cell.id = f"front-{len(combined.cells)}"
        combined.cells.append(cell)
    for name in notebooks:
        notebook = nbformat.read(run.notebooks / f"{name}.ipynb", as_version=4)
        combined.metadata = combined.metadata or notebook.metadata
        for cell in notebook.cells:
            cell.id = f"{name}-{len(combined.cells)}"  # ids must be unique across notebooks
            combined.cells.append(cell)
    html, _ = HTMLExporter().from_notebook_node(combined)
    files.write_text_atomically(html, run.report)
    return run.report


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status: 1 on an error (one line, or the failing
    cell), 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m helpers.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"parameter profile (default {DEFAULT_PROFILE})")
    parser.add_argument("--data-dir", help="use this folder of images instead of downloading")
    parser.add_argument("--run-dir", help="run folder (default: runs/PROFILE)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter of the profile (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun every notebook")
    estimating = parser.add_mutually_exclusive_group()
    estimating.add_argument("--no-estimate", action="store_true",
                            help="start without measuring the expected time of each notebook")
    estimating.add_argument("--estimate-only", action="store_true",
                            help="print the expected time of each notebook here, and stop")
    args = parser.parse_args(argv)
    handled = (signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
    before = {number: signal.signal(number, _stop) for number in handled}
    try:
        _study(args)
    except (StudyError, DataError) as error:  # DataError: the run folder's lock is held
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM or SIGHUP: the same way out
        # The kernel's cell, interrupted with it, ends a task nbclient no longer awaits:
        # asyncio would print its traceback at exit, after the one line said here.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        number = getattr(interrupt, "signal_number", None)
        how = f"stopped by {signal.Signals(number).name}" if number else "interrupted"
        where = f" in {interrupt.notebook}" if isinstance(interrupt, StudyInterrupted) else ""
        print(f"error: {how}{where}; {RESUME}", file=sys.stderr)
        return 128 + number if number else 130
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
    return 0


class Configuration(NamedTuple):
    """What ``configured_parameters`` settles: the parameters the notebooks are given, every
    declared parameter's value, and the values this machine's section of the profile set."""
    parameters: dict
    configured: dict
    for_this_machine: dict


# What a profile's on_float32_cpu section may not set: the precision that decides whether it
# applies, and where the data are.
NOT_BY_MACHINE = ("PRECISION", "DATA_SOURCE", "DATA_DIR")


def _refuse(problems: list[str], where: str = "") -> None:
    if problems:
        raise StudyError(f"Parameters the study would refuse later, refused now{where}:\n  "
                         + "\n  ".join(problems))


def configured_parameters(profile: str, data_dir: str | None, overrides: list[str]
                          ) -> Configuration:
    """The profile's parameters with, in this order, its ``on_float32_cpu`` values where the
    notebooks would train in float32 on this CPU, ``--data-dir`` and ``--set``; judged now
    rather than hours in, and before any TensorFlow starts: StudyError names each value the
    study would refuse, the section's included on every machine."""
    parameters = _read_profile(profile)  # read once: the parameters, then the section
    section = dict(parameters.pop(FLOAT32_CPU_SECTION, {}))
    location = ({"DATA_SOURCE": "local", "DATA_DIR": str(Path(data_dir).expanduser().resolve())}
                if data_dir else {})
    given = dict(parse_override(text) for text in overrides)
    # The module's NOTEBOOKS and NOTEBOOK_DIR as they are now, not when the defaults were made.
    declared = all_declared_parameters(NOTEBOOK_DIR, NOTEBOOKS)
    where = f"{PROFILE_DIR / f'{profile}.yaml'}, {FLOAT32_CPU_SECTION}"
    fixed = sorted(set(section) & set(NOT_BY_MACHINE))
    if fixed:
        raise StudyError(f"{where}: sets {', '.join(fixed)}, which it may not (the section "
                         "applies by precision, and the data are the same on every machine)")
    try:
        check_parameters(section, declared)
    except StudyError as error:
        raise StudyError(f"{where}: {error}") from None
    check_parameters(parameters | location | given, declared)
    defaults = {name: default for name, (_, default) in declared.items()}
    # What --set gives is final: a section's value it replaces was never chosen.
    section = {name: value for name, value in section.items() if name not in given}
    _refuse(study_parameters.problems(defaults | parameters | location | given))
    if section:
        _refuse(study_parameters.problems(defaults | parameters | section | location | given),
                f" (with {where}, as on a machine that trains in float32 on its CPU)")
        precision = (defaults | parameters | given).get("PRECISION", "auto")
        if trains_in_float32_on_cpu(precision):
            parameters.update(section)
        else:
            section = {}
    parameters.update(location)
    parameters.update(given)
    return Configuration(parameters, defaults | parameters, section)


def for_this_machine_line(profile: str, machine: dict) -> str:
    """One sentence on the values the profile sets for a float32 CPU, where they apply."""
    values = ", ".join(f"{name}={json.dumps(value)}" for name, value in machine.items())
    return (f"This machine trains in float32 on its CPU: profile {profile} sets {values} here "
            f"(its {FLOAT32_CPU_SECTION} section says why; --set NAME=VALUE overrides).")


def _study(args: argparse.Namespace) -> None:
    """The study as the command line asks: run, then the comparison table and the report."""
    parameters, configured, machine = configured_parameters(args.profile, args.data_dir,
                                                            args.set)
    declared = all_declared_parameters(NOTEBOOK_DIR, NOTEBOOKS)
    # A folder given here is relative to where you are; the default to the repository.
    run_dir = (str(Path(args.run_dir).expanduser().resolve()) if args.run_dir
               else f"runs/{args.profile}")
    check_root(project.resolve(run_dir))
    # Where notebook 01 will read the images from (its cache_dir is the repository's data/).
    data = {name: parameters.get(name, declared.get(name, (None, None))[1])
            for name in ("DATA_SOURCE", "DATA_DIR", "MEDMNIST_SIZE")}
    runfolder.check_placement(project.resolve(run_dir), acquire.destination(
        data["DATA_SOURCE"], project.resolve(data["DATA_DIR"]) if data["DATA_DIR"] else None,
        project.resolve("data"), data["MEDMNIST_SIZE"]))
    print(f"Profile {args.profile}, run folder {project.resolve(run_dir)}")
    if machine:
        print(for_this_machine_line(args.profile, machine))
    expected = None
    if args.estimate_only or not args.no_estimate:
        text, expected = estimate.in_subprocess(configured)
        if args.estimate_only:
            if expected is None:
                raise StudyError(text)
            print(text, flush=True)
            return
        print(text, flush=True)
    parameters = settle_weights(parameters, declared, RunFolder(project.resolve(run_dir)))
    run = RunFolder(project.resolve(run_dir))
    # The report too is written under the lock (run_study takes it again: a count).
    with runlock.held(run.root, f"python -m helpers.study into {run.root}"):
        run_study(parameters, run_dir, force=args.force, notebooks=NOTEBOOKS,
                  notebook_dir=NOTEBOOK_DIR, expected=expected)
        if run.comparison_table.exists():
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print("\n" + pd.read_csv(run.comparison_table, index_col="model").T.to_string())
        if all((run.notebooks / f"{name}.ipynb").exists() for name in NOTEBOOKS):
            print(f"\nThe executed notebooks as one page: {write_report(run, NOTEBOOKS)}")


if __name__ == "__main__":
    sys.exit(main())
