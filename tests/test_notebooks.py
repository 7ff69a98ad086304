"""The notebooks' shape (lint), their nbval copies, the Colab links and the batch runner.

The notebooks themselves run under nbval: tests/notebooks/*.ipynb (see helpers/tools/notebooks.py).
"""

import ast
import json
import shutil

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import progressbar, project
from helpers.runfolder import RunFolder
from helpers.tools import notebooks, study

SOURCES = notebooks.source_paths()


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.stem)
def test_source_notebook_passes_lint(path):
    assert notebooks.lint(path) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.stem)
def test_checked_copy_runs_the_same_code_with_the_smoke_profile(path):
    copy = nbformat.read(notebooks.CHECKED_DIR / path.name, as_version=4)
    assert notebooks.code_cells(copy) == notebooks.code_cells(
        nbformat.read(path, as_version=4)), "run `python -m helpers.tools.notebooks refresh`"
    injected = [cell for cell in copy.cells
                if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    # What papermill injected is the smoke profile, as the notebook declares it.
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(injected[0].source).body}
    declared = study.notebook_parameters(path)
    smoke = {key: value for key, value in study.load_profile("smoke").items() if key in declared}
    assert values == {**smoke, "RUN_DIR": notebooks.CHECKED_RUN_DIR}, (
        "the smoke profile changed: run `python -m helpers.tools.notebooks refresh`")
    checked = [cell for cell in copy.cells
               if notebooks.CHECK_TAG in cell.metadata.get("tags", [])]
    assert all(cell.outputs for cell in checked)
    # Library start-up lines on stderr come and go between runs: never part of a checked output.
    assert not [output for cell in checked for output in cell.outputs
                if output.get("name") == "stderr"]
    # Exact outputs (counts, sizes, parameter totals) are checked in notebooks 1-4; trained
    # results are checked with tolerances in test_smoke_study.py.
    assert checked or path.stem == "05_compare"


def test_lint_finds_each_kind_of_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(project, "ROOT", tmp_path)
    path = tmp_path / "notebooks" / "01_data.ipynb"
    path.parent.mkdir()
    shutil.copyfile(SOURCES[0], path)
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].source = notebook.cells[0].source.replace("01_data", "02_explore")
    notebook.cells[2].source += "\nlowercase = 1"
    notebook.cells[3].metadata["tags"] = ["parameters"]
    notebook.cells[3].outputs = [nbformat.v4.new_output("stream", text="hi")]
    notebook.cells.append(new_code_cell("from helpers.plots import *\nimport helpers.plots"))
    nbformat.write(notebook, path)
    problems = "\n".join(notebooks.lint(path))
    for expected in ("Colab badge must point at", "exactly one cell", "has outputs",
                     "star import", "import helpers modules by name"):
        assert expected in problems
    notebook.cells[3].metadata["tags"] = []
    nbformat.write(notebook, path)
    assert "parameter line is not `NAME: type = literal  # comment`: 'lowercase = 1'" in (
        notebooks.lint(path))


def test_badges_and_install_cells_derive_from_the_one_repository_url(tmp_path, monkeypatch):
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    path = notebook_dir / SOURCES[0].name
    shutil.copyfile(SOURCES[0], path)
    monkeypatch.setattr(project, "ROOT", tmp_path)
    monkeypatch.setattr(project, "REPOSITORY_URL", "https://github.com/someone/blood-cells")
    assert any("badge must point at" in problem for problem in notebooks.lint(path))
    assert notebooks.sync(path) is True
    assert notebooks.lint(path) == []
    notebook = nbformat.read(path, as_version=4)
    assert ("https://colab.research.google.com/github/someone/blood-cells/blob/main/"
            "notebooks/01_data.ipynb") in notebook.cells[0].source
    assert '"https://github.com/someone/blood-cells"' in notebook.cells[1].source
    assert notebooks.sync(path) is False


PROFILES = sorted(path.stem for path in study.PROFILE_DIR.glob("*.yaml"))


def test_notebook_defaults_are_the_colab_profile():
    """The parameters cells are the one configuration: colab.yaml says what they hold."""
    defaults = {}
    for path in SOURCES:
        for name, (_, value) in study.declared_parameters(path).items():
            assert defaults.setdefault(name, value) == value, f"{name} differs in {path.name}"
    del defaults["RUN_DIR"]  # where to write, not how to run the study
    colab = study.load_profile("colab")
    assert colab == defaults
    assert {name: type(value) for name, value in colab.items()} == {
        name: type(value) for name, value in defaults.items()}


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_only_override_declared_parameters_with_their_types(profile):
    assert {"colab", "cpu", "full", "smoke"} <= set(PROFILES)
    declared = study.all_declared_parameters()
    study.check_parameters(study.load_profile(profile), declared)
    study.check_parameters(study.float32_cpu_values(profile), declared)


def test_profile_choices():
    assert study.load_profile("smoke")["DATA_SOURCE"] == "synthetic"
    assert study.load_profile("cpu")["RESNET_WEIGHTS"] == "imagenet"  # offline: random init, said
    assert study.load_profile("full")["RESNET_WEIGHTS"] == "imagenet"


def _tiny_notebook(path, code):
    notebook = new_notebook(cells=[new_markdown_cell("# tiny"),
                                   new_code_cell('RUN_DIR: str = "x"  # run folder\n'
                                                 "VALUE: int = 1  # a number")])
    notebook.cells[1].metadata["tags"] = ["parameters"]
    notebook.cells.append(new_code_cell(code))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


def test_study_skips_completed_notebooks_and_names_the_failing_cell(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    _tiny_notebook(sources / "a.ipynb", "from pathlib import Path\n"
                   "Path(RUN_DIR, 'a.txt').write_text(str(VALUE))")
    _tiny_notebook(sources / "b.ipynb", "VALUE / 0")
    run_dir = str(tmp_path / "run")
    messages = []
    run = lambda parameters, names: study.run_study(  # noqa: E731
        parameters, run_dir, notebooks=names, notebook_dir=sources, log=messages.append)

    assert run({"VALUE": 2}, ("a",)) == ["a"]
    assert (tmp_path / "run" / "a.txt").read_text() == "2"
    assert run({"VALUE": 2}, ("a",)) == []
    assert "skipped" in messages[-1]
    assert run({"VALUE": 3}, ("a",)) == ["a"]  # other parameters: run again
    with pytest.raises(study.StudyError) as failure:
        run({"VALUE": 3}, ("a", "b"))
    message = str(failure.value)
    assert "b failed in the cell run as In [3]" in message and "ZeroDivisionError" in message
    assert "VALUE / 0" in message
    assert str(tmp_path / "run" / "logs" / "b.log") in message
    # b is not done: its record holds no source or parameters (only files written before).
    assert "parameters" not in json.loads(
        (tmp_path / "run" / "notebooks" / "b.done.json").read_text())
    record = json.loads((tmp_path / "run" / "notebooks" / "a.done.json").read_text())
    assert record["parameters"] == {"RUN_DIR": run_dir, "VALUE": 3}


def test_executed_notebooks_keep_their_output_but_not_library_start_up_noise(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    _tiny_notebook(sources / "a.ipynb", "import sys\n"
                   "print('WARNING: All log messages before absl::InitializeLog() is called',"
                   " file=sys.stderr)\n"
                   "print('E0000 cuda_platform.cc:52] failed call to cuInit', file=sys.stderr)\n"
                   "print('a real warning', file=sys.stderr)\nprint('the result')")
    study.run_study({}, str(tmp_path / "run"), notebooks=("a",), notebook_dir=sources,
                    log=lambda message: None)
    executed = nbformat.read(tmp_path / "run" / "notebooks" / "a.ipynb", as_version=4)
    text = "".join(output.get("text", "") for output in executed.cells[-1].outputs)
    assert "the result" in text and "a real warning" in text
    assert "absl" not in text and "cuInit" not in text
    for copy in notebooks.CHECKED_DIR.glob("*.ipynb"):  # the nbval copies are clean too
        assert not study.START_UP_NOISE.search(copy.read_text()), copy.name
        streams = [output.text for cell in nbformat.read(copy, as_version=4).cells
                   for output in cell.get("outputs", []) if output.output_type == "stream"]
        assert not [text for text in streams if "\r" in text or "%|" in text], copy.name
        assert "triggered tf.function retracing" not in "".join(streams), copy.name


def test_study_shows_one_line_per_notebook_and_logs_the_kernels_stderr(tmp_path, capfd):
    sources = tmp_path / "sources"
    sources.mkdir()
    _tiny_notebook(sources / "a.ipynb", "import os\nfrom helpers import progressbar\n"
                   "print(progressbar.display_kind())\n"
                   "list(progressbar.track(range(300), 300, 'count', 'item'))")
    _tiny_notebook(sources / "b.ipynb", "1 + 1")
    run_dir = tmp_path / "run"
    study.run_study({}, str(run_dir), notebooks=("a", "b"), notebook_dir=sources)
    shown = capfd.readouterr()
    # One line per notebook, however often its bar was redrawn; nothing from the kernels.
    lines = [line.split("\r")[-1] for line in shown.out.split("\n") if line]
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] a: 4/4 cells") and lines[1].startswith("[2/2] b: 4/4")
    assert shown.err == ""
    assert "Kernel is running over TCP" not in shown.out
    assert (run_dir / "logs" / "a.log").exists() and (run_dir / "logs" / "b.log").exists()
    # In the saved notebook: no bar, one final line.
    executed = nbformat.read(run_dir / "notebooks" / "a.ipynb", as_version=4)
    text = "".join(output.get("text", "") for output in executed.cells[-1].outputs)
    assert text.startswith("final line\ncount: 300 of 300 items in ")
    assert text.count("\n") == 2 and "\r" not in text and "%|" not in text
    # The report: one page with both notebooks' cells and outputs.
    report = study.write_report(RunFolder(run_dir), notebooks=("a", "b")).read_text()
    assert "count: 300 of 300 items" in report and "<pre>2</pre>" in report


def test_the_report_opens_with_the_conclusion_the_table_and_the_limits(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    _tiny_notebook(sources / "a.ipynb", "print('setup code')")
    _tiny_notebook(sources / "b.ipynb", "1 + 1")
    limits = nbformat.read(sources / "b.ipynb", as_version=4)
    limits.cells.append(nbformat.v4.new_markdown_cell(
        study.LIMITS_HEADING + "\n\nOne hospital, an image-level split."))
    nbformat.write(limits, sources / "b.ipynb")
    run = RunFolder(tmp_path / "run")
    study.run_study({}, str(run.root), notebooks=("a", "b"), notebook_dir=sources)
    run.conclusion.parent.mkdir(exist_ok=True)
    run.conclusion.write_text("Compared: model A (random weights) and model B.\n")
    run.comparison_table.write_text("model,caveats,test accuracy\nA,not converged,0.91236\n")
    report = study.write_report(run, notebooks=("a", "b")).read_text()
    order = [report.index(text) for text in (
        "Compared: model A (random weights)", "not converged", "0.9124",
        "One hospital, an image-level split", "setup code")]
    assert order == sorted(order)  # the answer and its limits before any notebook's code


def test_progress_shows_as_the_place_it_runs_in_can_show_it(monkeypatch, capsys):
    monkeypatch.delenv(progressbar.HEADLESS_VARIABLE, raising=False)
    assert progressbar.display_kind() == "terminal"  # pytest is no kernel
    monkeypatch.setenv(progressbar.HEADLESS_VARIABLE, "1")
    assert progressbar.display_kind() == "final line"
    with progressbar.Progress(10, "work", "step") as bar:
        bar.update(4)
        bar.update(6)
    assert capsys.readouterr().out.startswith("work: 10 of 10 steps in ")


def test_study_command_rejects_unknown_profiles_and_bad_overrides(capsys):
    assert study.main(["--profile", "nope"]) == 1
    assert "No profile 'nope'" in capsys.readouterr().err
    assert study.main(["--profile", "smoke", "--set", "lower=1"]) == 1
    assert "UPPER_CASE" in capsys.readouterr().err
    assert study.main(["--profile", "smoke", "--set", "SPLIT_SEEED=7"]) == 1
    assert "No notebook declares the parameter SPLIT_SEEED; did you mean SPLIT_SEED?" in (
        capsys.readouterr().err)
    assert study.main(["--profile", "smoke", "--set", "CNN_EPOCHS=many"]) == 1
    assert "CNN_EPOCHS must be of type int, got 'many'" in capsys.readouterr().err
    assert study.main(["--profile", "smoke", "--set", "DETERMINISTIC=1"]) == 1
    assert "DETERMINISTIC must be of type bool" in capsys.readouterr().err
    study.check_parameters({"CNN_LEARNING_RATE": 1}, study.all_declared_parameters())
    assert study.parse_override("CNN_EPOCHS=3") == ("CNN_EPOCHS", 3)
    assert study.parse_override("RESNET_FINE_TUNE_LEARNING_RATE=5e-5")[1] == 5e-5
    assert study.main(["--profile", "smoke", "--set", "RUN_DIR=elsewhere"]) == 1
    assert "--run-dir" in capsys.readouterr().err
    assert yaml.safe_load("[a, b]") == study.parse_override("X=[a, b]")[1]
    # An empty value is the empty text (CLUSTER="" trains in the kernel), never None.
    assert study.parse_override("CLUSTER=") == ("CLUSTER", "")
    study.check_parameters({"CLUSTER": ""}, study.all_declared_parameters())
    assert study.main(["--profile", "smoke", "--set", "CNN_EPOCHS="]) == 1
    assert "CNN_EPOCHS must be of type int, got ''" in capsys.readouterr().err


# Figures the notebooks' text may state: facts of the published dataset and the literature,
# conventions and the study's fixed design, never a number a run computes (those are printed
# by code beside the text, so words and figures cannot disagree). Each with why it may stay.
ALLOWED_FIGURES = {
    r"^#+ \d\. ": "the notebook's number in its title",
    r"\bnotebooks? \d\b": "a notebook's number",
    r"(?i)\bphases? \d\b|\bphase-\d\b": "training phase 1 or 2",
    r"`[a-z_]+=\d+`": "an argument written as code",
    r"\bKeras \d\b": "a Keras version",
    r"\b0-255\b|\b0-1\b": "pixel value ranges",
    r"\bSHA-256\b": "a hash's name",
    r"Acevedo et al\., 2020": "the dataset's citation",
    r"17,092 JPEGs of 360x363 px": "the published dataset",
    r"\bin 8 classes\b": "the published dataset",
    r"\b70/15/15\b": "the split's fixed fractions (helpers.split)",
    r"\b3x3\b": "the CNN's kernel size, written in the cell below",
    r"\breach\s98\.4-99\.0%\son\sBloodMNIST\s\(these\simages\sat\s224\spx\)\sand\s99\.5%":
        "published results on this data (helpers.published)",
    r"\b66%": "the earlier study's result",
    r"\b95% bootstrap\b": "the intervals' confidence level",
    r"says 90%, is it right 90%": "an example",
    r"\(0: ": "what 0 means for a parameter",
    r"\b1 - m\^n\b": "a formula",
    r"`SEED \+ 1`": "the seeds' rule",
    r"\bclose to 1\b": "a limit",
    r"\bJPEG quality 90\b": "how the development copy of the data was made",
}


def figures_in_markdown(text: str) -> list[str]:
    """The numbers in a markdown cell's text that no ALLOWED_FIGURES pattern covers (link
    targets and URLs, which hold version numbers and paths, are left out)."""
    import re

    text = re.sub(r"\]\([^)]*\)|https?://\S+", "", text)
    for pattern in ALLOWED_FIGURES:
        text = re.sub(pattern, " ", text, flags=re.MULTILINE)
    return re.findall(r"(?<![\w.])\d[\d,.]*%?", text)


def test_the_figure_check_finds_typed_results():
    assert figures_in_markdown("The CNN scored 0.985 on test, 12 points above.") == [
        "0.985", "12"]
    assert figures_in_markdown("Up to 99.2% here, 3 seeds.") == ["99.2%", "3"]
    assert figures_in_markdown("# 3. Train the CNN, see notebook 5 and phase 2's model") == []
    assert figures_in_markdown("[docs](../docs/results.md#v2-0) and ResNet50, conv1") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.stem)
def test_markdown_states_no_figure_a_run_computes(path):
    notebook = nbformat.read(path, as_version=4)
    found = {index: figures_in_markdown(cell.source)
             for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"}
    assert not {index: figures for index, figures in found.items() if figures}, (
        "print such figures from code beside the text, or phrase the text without them "
        "(ALLOWED_FIGURES lists what may stay)")


def test_notebooks_3_and_4_augment_alike():
    """Notebook 4 writes notebook 3's augmentation again, so each stands alone in Colab."""
    def augmentation_cell(name: str) -> str:
        cells = nbformat.read(notebooks.SOURCE_DIR / f"{name}.ipynb", as_version=4).cells
        return next(cell.source for cell in cells if cell.source.startswith("def augmentation"))

    assert augmentation_cell("03_train_cnn") == augmentation_cell("04_train_resnet50")


def test_definitions_run_a_notebooks_own_cells():
    built = notebooks.definitions("03_train_cnn", ("build_cnn", "augmentation"),
                                  CNN_IMAGE_SIZE=16)
    model = built["build_cnn"](seed=0, widths=(4,))
    assert model.input_shape == (None, 16, 16, 3)
    assert [layer.name for layer in model.layers[:3]] == ["image", "augmentation", "rescale"]
    with pytest.raises(KeyError, match="no parameter"):
        notebooks.definitions("03_train_cnn", ("build_cnn",), NOT_A_PARAMETER=1)
    with pytest.raises(KeyError, match="defines"):
        notebooks.definitions("03_train_cnn", ("no_such_function",))
