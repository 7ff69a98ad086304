"""Keep the notebooks consistent: Colab links, lint, and the nbval reference copies.

    python -m helpers.tools.notebooks sync      # badges and install cells from helpers.project
    python -m helpers.tools.notebooks lint      # the checks tests/test_notebooks.py runs
    python -m helpers.tools.notebooks refresh   # re-execute the smoke copies nbval checks against

The sources in ``notebooks/`` carry no outputs (strip them with ``nbstripout``, which keeps
cell tags). nbval re-runs the executed copies in ``tests/notebooks/`` (smoke profile) and
compares the cells tagged ``nbval-check-output`` with their stored outputs; a test checks
that the copies' code equals the sources', so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from helpers import project
from helpers.runfolder import RunFolder

if TYPE_CHECKING:  # Keras loads only where a model is built
    import keras

SOURCE_DIR = project.ROOT / "notebooks"
CHECKED_DIR = project.ROOT / "tests" / "notebooks"
# The run folder the nbval copies use, relative to the repository root.
CHECKED_RUN_DIR = "runs/nbval"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\((?P<url>[^)]*)\)")
CLONE_URL = re.compile(r'"https://github\.com/[^"]*"')
CHECKOUT = re.compile(r'Path\("/content/[^"]*"\)')
PARAMETER_LINE = re.compile(r"^[A-Z][A-Z0-9_]*: (str|int|float|bool|list|dict) = .+  # \S.*$")
CHECK_TAG = "nbval-check-output"


def colab_url(notebook: str | os.PathLike) -> str:
    """The "Open in Colab" address of a notebook given by its path in the repository."""
    github_path = project.REPOSITORY_URL.removeprefix("https://github.com/")
    return (f"https://colab.research.google.com/github/{github_path}/blob/{project.BRANCH}/"
            f"{Path(notebook).as_posix()}")


def source_paths() -> list[Path]:
    """The study's notebooks in order."""
    return [SOURCE_DIR / f"{name}.ipynb" for name in project.NOTEBOOKS]


def relative(path: Path) -> str:
    return path.resolve().relative_to(project.ROOT).as_posix()


def sync(path: Path) -> bool:
    """Rewrite the notebook's Colab badge and install cell from ``helpers.project``.

    Returns whether the file changed.
    """
    notebook = nbformat.read(path, as_version=4)
    before = nbformat.writes(notebook)
    title = notebook.cells[0]
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"({colab_url(relative(path))})")
    title.source = BADGE.sub(lambda _: badge, title.source)
    setup = notebook.cells[1]
    setup.source = CLONE_URL.sub(f'"{project.REPOSITORY_URL}"', setup.source)
    setup.source = CHECKOUT.sub(f'Path("{project.COLAB_CHECKOUT}")', setup.source)
    if nbformat.writes(notebook) == before:
        return False
    nbformat.write(notebook, path)
    return True


def _imports(source: str) -> list[ast.stmt]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def lint(path: Path) -> list[str]:
    """What is wrong with a source notebook, as readable problems (empty: all good)."""
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    problems = []
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        problems.append("the first cell must be a markdown title (# ...)")
    badges = BADGE.findall(cells[0].source) if cells else []
    if badges != [colab_url(relative(path))]:
        problems.append(f"the Colab badge must point at {colab_url(relative(path))}, "
                        f"found {badges} (run python -m helpers.tools.notebooks sync)")
    setup = cells[1].source if len(cells) > 1 else ""
    for needed in ('IS_COLAB = "google.colab" in sys.modules', f'"{project.REPOSITORY_URL}"',
                   "colab.prepare_runtime()", "runtime.report_accelerator(IS_COLAB)"):
        if needed not in setup:
            problems.append(f"the setup cell (cell 2) lacks {needed}")
    parameter_cells = [index for index, cell in enumerate(cells)
                       if "parameters" in cell.metadata.get("tags", [])]
    if parameter_cells != [2]:
        problems.append(f"exactly one cell, the third, must be tagged parameters; "
                        f"found {parameter_cells}")
    else:
        for line in cells[2].source.splitlines():
            if line.strip() and not PARAMETER_LINE.match(line):
                problems.append(f"parameter line is not `NAME: type = literal  # comment`: "
                                f"{line!r}")
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"cell {index} has outputs (strip them: nbstripout {relative(path)})")
        for node in _imports(cell.source):
            names = [alias.name for alias in node.names]
            if "*" in names:
                problems.append(f"cell {index}: star import")
            if isinstance(node, ast.ImportFrom) and node.level:
                problems.append(f"cell {index}: relative import")
            if isinstance(node, ast.Import) and any(name.startswith("helpers") for name in names):
                problems.append(f"cell {index}: import helpers modules by name "
                                "(from helpers import module)")
    return problems


def code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    """The code of a notebook's cells, without papermill's injected parameters."""
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"
            and "injected-parameters" not in cell.metadata.get("tags", [])]


def definitions(name: str, functions: tuple[str, ...], scope: dict | None = None,
                **parameters) -> dict:
    """The functions FUNCTIONS as notebook NAME's cells define them, for the tools and tests
    that need the study's own recipe (the benchmark's CNN is notebook 3's): the notebook is
    the one definition. Its parameters cell runs first, then PARAMETERS override its values,
    then every cell that defines one of FUNCTIONS, with ``keras``, the helpers modules the
    notebooks import and ``scope`` (values the notebook derives in other cells, such as
    notebook 4's WEIGHTS) in scope.

    Raises KeyError naming a function no cell defines.
    """
    import keras

    from helpers import labels, models, training

    notebook = nbformat.read(SOURCE_DIR / f"{name}.ipynb", as_version=4)
    namespace: dict = {"keras": keras, "labels": labels, "models": models,
                       "training": training}
    exec(notebook.cells[2].source, namespace)  # the parameters cell (lint checks its place)
    unknown = set(parameters) - {key for key in namespace if key.isupper()}
    if unknown:
        raise KeyError(f"{name} has no parameter {sorted(unknown)}")
    namespace.update(parameters)
    namespace.update(scope or {})
    found = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        defined = {node.name for node in ast.parse(cell.source).body
                   if isinstance(node, ast.FunctionDef)}
        if defined & set(functions):
            exec(cell.source, namespace)
            found |= defined
    missing = set(functions) - found
    if missing:
        raise KeyError(f"No cell of {name} defines {sorted(missing)}")
    return {function: namespace[function] for function in functions}


def baseline_cnn(image_size: int, widths: tuple[int, ...] = (32, 64, 128, 256),
                 augment: bool = True, seed: int = 0) -> keras.Model:
    """Notebook 3's baseline CNN at ``image_size``, with block ``widths`` (small ones make it
    quick for tests), without its augmentation when ``augment`` is False."""
    import keras

    if augment:
        built = definitions("03_train_cnn", ("augmentation", "build_cnn"),
                            CNN_IMAGE_SIZE=image_size)
    else:  # build_cnn calls augmentation(seed): an identity in its place
        built = definitions("03_train_cnn", ("build_cnn",), CNN_IMAGE_SIZE=image_size,
                            scope={"augmentation": lambda seed: keras.layers.Identity(
                                name="augmentation")})
    return built["build_cnn"](seed=seed, widths=widths)


def refresh() -> None:
    """Run the smoke study in CHECKED_RUN_DIR and store the executed copies for nbval."""
    # Here, not at the top: the runner needs papermill, which Colab lacks, and Colab's
    # notebooks build the CNN through this module (helpers.tools.measure).
    from helpers.tools import study

    run_dir = project.resolve(CHECKED_RUN_DIR)
    shutil.rmtree(run_dir, ignore_errors=True)
    study.run_study(study.load_profile("smoke"), CHECKED_RUN_DIR, force=True)
    CHECKED_DIR.mkdir(parents=True, exist_ok=True)
    for name in study.NOTEBOOKS:
        shutil.copyfile(RunFolder(run_dir).notebooks / f"{name}.ipynb",
                        CHECKED_DIR / f"{name}.ipynb")
    print(f"Stored {len(study.NOTEBOOKS)} executed notebooks in {CHECKED_DIR}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.tools.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "lint", "refresh"])
    args = parser.parse_args(argv)
    if args.command == "sync":
        changed = [relative(path) for path in source_paths() if sync(path)]
        print(f"Updated: {', '.join(changed)}" if changed else "All notebooks up to date")
    elif args.command == "lint":
        problems = {relative(path): lint(path) for path in source_paths()}
        for name, found in problems.items():
            for problem in found:
                print(f"{name}: {problem}")
        if any(problems.values()):
            return 1
        print("All notebooks pass")
    else:
        refresh()
    return 0


if __name__ == "__main__":
    sys.exit(main())
