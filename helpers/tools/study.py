"""Run the whole study headless: the notebooks in order, with papermill, into a run folder.

    python -m helpers.study [--profile cpu] [--data-dir DIR] [--run-dir DIR] [--force]
                            [--set NAME=VALUE ...]

Profiles are ``notebooks/profiles/NAME.yaml``, overrides of the notebooks' defaults (which
are the ``colab`` profile, what "Run all" in Colab runs): ``smoke`` (synthetic data, a minute per
notebook: CI), ``cpu`` (the real data at 64 px on a 2-core machine, about an hour where the
CPU has bfloat16 units; ResNet50 from random init, since such machines are often offline),
``full`` (224 px on a GPU, ImageNet weights). The default is ``cpu``, which runs anywhere.
``--data-dir`` uses a folder you have instead of downloading from Kaggle.

The executed notebooks go to ``RUN_DIR/notebooks/``. A notebook already completed with the
same parameters and the same source is skipped (``--force`` reruns all); once one runs, the
ones after it run too, since their inputs may have changed. The run stops at the first
failing notebook, naming the cell and the error. At the end the comparison table is printed.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import difflib
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import yaml

from helpers import files, progressbar, project
from helpers.runfolder import RunFolder

NOTEBOOKS = ("01_data", "02_explore", "03_train_cnn", "04_train_resnet50", "05_compare")
NOTEBOOK_DIR = project.ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"
DEFAULT_PROFILE = "cpu"


class StudyError(RuntimeError):
    """A notebook failed, or the profile or an override is wrong."""


def load_profile(name: str) -> dict:
    """The parameters of profile ``name`` (``notebooks/profiles/NAME.yaml``)."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise StudyError(f"No profile {name!r} (known: {known})")
    return yaml.safe_load(path.read_text()) or {}


def parse_override(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE read as YAML (numbers, true/false, lists, strings)."""
    name, separator, value = text.partition("=")
    if not separator or not name.isupper():
        raise StudyError(f"--set takes NAME=VALUE with an UPPER_CASE name, got {text!r}")
    if name == "RUN_DIR":
        raise StudyError("The run folder is given with --run-dir, not --set RUN_DIR.")
    parsed = yaml.safe_load(value)
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
            raise StudyError(f"{name} must be of type {expected.__name__}, got {value!r}")


# What libraries print on stderr while they start (TensorFlow's C++ logging before absl is set
# up, CUDA probing on a machine without a GPU, oneDNN and graph-optimizer notices) and tqdm's
# fallback warning: not part of the study's report.
START_UP_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|cudart_stub|"
    r"cuda_platform|cuInit|cuda drivers|node_def_util|loop_optimizer|IProgress not found|"
    r"Kernel is running over TCP|cpu_feature_guard|rebuild TensorFlow with the appropriate")


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
    nbformat.write(notebook, path)
    return removed


def completion_record(source: Path, parameters: dict) -> dict:
    """What makes a finished notebook reusable: its source's hash and its parameters."""
    return {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "parameters": parameters}


def failure_message(name: str, error: papermill.PapermillExecutionError, output: Path,
                    log_file: Path) -> str:
    """Which notebook and cell failed, with the error, the cell's code, and where to look."""
    code = "\n".join("    " + line for line in error.source.splitlines()[:12])
    return (f"{name} failed in the cell run as In [{error.exec_count}]:\n"
            f"  {error.ename}: {error.evalue}\n{code}\n"
            f"The executed notebook with the full traceback: {output}\n"
            f"What its kernel wrote to stderr: {log_file}")


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


def run_study(parameters: dict, run_dir: str, force: bool = False,
              notebooks: tuple[str, ...] = NOTEBOOKS, notebook_dir: Path = NOTEBOOK_DIR,
              log=print) -> list[str]:
    """Execute ``notebooks`` in order into ``RUN_DIR/notebooks``; returns those executed.

    Each notebook gets the profile's parameters it declares, with RUN_DIR set to
    ``run_dir`` (a relative one is relative to the repository root, in the notebooks too).
    Each shows one line on stdout (its progress in cells); its kernel's stderr goes to
    ``RUN_DIR/logs/NAME.log``. Raises StudyError at the first failure.
    """
    run = RunFolder(project.resolve(run_dir))
    run.notebooks.mkdir(parents=True, exist_ok=True)
    executed, rerun_rest = [], force
    for number, name in enumerate(notebooks, start=1):
        source = notebook_dir / f"{name}.ipynb"
        declared = notebook_parameters(source)
        given = {key: value for key, value in {**parameters, "RUN_DIR": run_dir}.items()
                 if key in declared}
        output = run.notebooks / f"{name}.ipynb"
        record_path = run.notebooks / f"{name}.done.json"
        record = completion_record(source, given)
        counter = f"[{number}/{len(notebooks)}] {name}"
        if (not rerun_rest and output.exists() and record_path.exists()
                and json.loads(record_path.read_text()) == record):
            log(f"{counter}: done before with the same parameters, skipped (--force reruns it)")
            continue
        rerun_rest = True
        record_path.unlink(missing_ok=True)
        progress = {"file": sys.stdout, "desc": counter, "mininterval": 1.0,
                    "bar_format": "{desc}: {n_fmt}/{total_fmt} cells, {elapsed}"}
        # Kernels launched from here print progress bars as one final line (helpers.progressbar).
        headless_before = os.environ.get(progressbar.HEADLESS_VARIABLE)
        os.environ[progressbar.HEADLESS_VARIABLE] = "1"
        try:
            with stderr_to(run.log(name)):
                papermill.execute_notebook(str(source), str(output), parameters=given,
                                           cwd=str(project.ROOT), kernel_name="python3",
                                           progress_bar=progress)
        except papermill.PapermillExecutionError as error:
            raise StudyError(failure_message(name, error, output, run.log(name))) from None
        finally:
            if headless_before is None:
                del os.environ[progressbar.HEADLESS_VARIABLE]
            else:
                os.environ[progressbar.HEADLESS_VARIABLE] = headless_before
        remove_start_up_noise(output)
        files.write_json(record, record_path)
        executed.append(name)
    return executed


def write_report(run: RunFolder, notebooks: tuple[str, ...] = NOTEBOOKS) -> Path:
    """The executed notebooks as one self-contained HTML page (figures embedded), to send to
    someone without Jupyter: ``RUN_DIR/report.html``."""
    from nbconvert import HTMLExporter  # a tool of the headless runner, not of the notebooks

    combined = nbformat.v4.new_notebook()
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
    parser = argparse.ArgumentParser(prog="python -m helpers.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help=f"parameter profile (default {DEFAULT_PROFILE})")
    parser.add_argument("--data-dir", help="use this folder of images instead of downloading")
    parser.add_argument("--run-dir", help="run folder (default: runs/PROFILE)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter of the profile (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun every notebook")
    args = parser.parse_args(argv)
    try:
        parameters = load_profile(args.profile)
        if args.data_dir:
            parameters.update(DATA_SOURCE="local",
                              DATA_DIR=str(Path(args.data_dir).expanduser().resolve()))
        parameters.update(parse_override(text) for text in args.set)
        check_parameters(parameters, all_declared_parameters())
        # A folder given here is relative to where you are; the default to the repository.
        run_dir = (str(Path(args.run_dir).expanduser().resolve()) if args.run_dir
                   else f"runs/{args.profile}")
        print(f"Profile {args.profile}, run folder {project.resolve(run_dir)}")
        run_study(parameters, run_dir, force=args.force)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    run = RunFolder(project.resolve(run_dir))
    if run.comparison_table.exists():
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print("\n" + pd.read_csv(run.comparison_table, index_col="model").T.to_string())
    if all((run.notebooks / f"{name}.ipynb").exists() for name in NOTEBOOKS):
        print(f"\nThe executed notebooks as one page: {write_report(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
