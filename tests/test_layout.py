"""How the code is laid out (docs/layout.md): imports point one way, the command lines sit in
helpers/tools/ and answer --help without TensorFlow, every import is declared, and no module
of the notebook-facing package grows past what a reader takes in."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPOSITORY

HELPERS = REPOSITORY / "helpers"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 250
# The entry points ``python -m helpers.X``: each only calls helpers/tools/X.py.
SHIMS = ("data", "evaluate", "predict", "resolution", "study")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(HELPERS.rglob("*.py"))}


def _imported(path: Path, known: set[str]) -> set[str]:
    """The helpers modules ``path`` imports, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in candidates if name in known and name != "helpers"}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(path, set(modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order), or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else [target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_the_helpers_function_level_imports_included():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_notebook_facing_package_never_imports_the_tools():
    for module, targets in _graph().items():
        if module.startswith("helpers.tools") or module.split(".")[-1] in SHIMS:
            continue
        assert not {target for target in targets if target.startswith("helpers.tools")}, module


@pytest.mark.parametrize("command", SHIMS)
def test_each_command_is_a_shim_that_answers_help_without_tensorflow(command):
    shim = HELPERS / f"{command}.py"
    assert _imported(shim, set(_modules())) == {f"helpers.tools.{command}"}
    probe = ("import runpy, sys\n"
             f"sys.argv = ['helpers.{command}', '--help']\n"
             "try:\n"
             f"    runpy.run_module('helpers.{command}', run_name='__main__')\n"
             "except SystemExit as exit:\n"
             "    code = exit.code\n"
             "heavy = [name for name in ('tensorflow', 'keras') if name in sys.modules]\n"
             "print('RESULT', code, heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=REPOSITORY, timeout=120)
    assert result.stdout.splitlines()[-1] == "RESULT 0 []", result.stdout + result.stderr
    assert "usage:" in result.stdout and result.stderr == ""


def _third_party_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return {name for name in names
            if name not in sys.stdlib_module_names and name not in ("helpers", "tests")}


def _declared() -> set[str]:
    names = set()
    for path in ("requirements/study.txt", "requirements/cluster.txt", "requirements/dev.txt"):
        for line in (REPOSITORY / path).read_text().splitlines():
            if line.strip() and not line.startswith(("#", "-r")):
                names.add(re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0].lower())
    return names


def test_every_package_imported_is_declared_in_requirements():
    distributions = importlib.metadata.packages_distributions()
    sources = [path.read_text(encoding="utf-8")
               for folder in ("helpers", "tests") for path in (REPOSITORY / folder).rglob("*.py")]
    for notebook in sorted((REPOSITORY / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        sources += ["\n".join(line for line in "".join(cell["source"]).splitlines()
                              if not line.lstrip().startswith(("!", "%")))
                    for cell in cells if cell["cell_type"] == "code"]
    local = {path.stem for path in (REPOSITORY / "tests").rglob("*.py")}  # scripts run there
    imported = set().union(*map(_third_party_imports, sources)) - local
    declared = _declared()
    undeclared = {}
    for name in sorted(imported):
        if name == "google":  # google.colab: only inside Colab, which provides it
            continue
        owners = {owner.lower() for owner in distributions.get(name, [name])}
        if not owners & declared:
            undeclared[name] = sorted(owners)
    assert not undeclared, f"imported but not in requirements/: {undeclared}"
def _long_parts(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found = [f"{path.name}: {len(lines)} lines"] if len(lines) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
            found.append(f"{path.name}: class {node.name}, "
                         f"{node.end_lineno - node.lineno + 1} lines")
    return found


def test_no_module_of_the_notebook_facing_package_is_too_long_to_read():
    too_long = [part for path in sorted(HELPERS.glob("*.py")) for part in _long_parts(path)]
    assert not too_long, too_long


def _layers_of_the_docs() -> dict[str, int]:
    """Each module's layer, by the order of the rows of docs/layout.md's table of layers."""
    text = (REPOSITORY / "docs" / "layout.md").read_text(encoding="utf-8")
    rows = [line for line in text.split("## The layers", 1)[1].splitlines()
            if line.startswith("| ") and not line.startswith(("| layer", "|---"))]
    return {module: number for number, row in enumerate(rows)
            for module in re.findall(r"`(\w+)`", row.split(" | ")[1])}


def test_every_module_is_in_a_layer_of_the_docs_and_imports_only_from_layers_above():
    layers = _layers_of_the_docs()
    graph = _graph()
    for module, targets in graph.items():
        short = module.removeprefix("helpers.")
        if module.startswith("helpers.tools") or short in SHIMS or module == "helpers":
            continue
        assert short in layers, f"{short} is in no layer of docs/layout.md"
        upward = [target for target in targets
                  if layers.get(target.removeprefix("helpers."), -1) > layers[short]]
        assert not upward, f"{short} imports {upward} from a layer below it"
