"""Colab as users have it: the setup cell's install plan, a runtime without TensorFlow, and the
notebooks run in a kernel where ``google.colab`` is a stub (Drive, secrets) and the project is
cloned from a local copy of this repository."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import papermill
import pytest
from packaging.requirements import Requirement

from helpers import colab, project
from tests.conftest import REPOSITORY

# The Colab secret Kaggle issues today (kagglehub reads it; the older KAGGLE_USERNAME and
# KAGGLE_KEY pair it reads only when a KAGGLE_API_TOKEN lookup does not raise, which Colab's does).
SECRETS = {"KAGGLE_API_TOKEN": "KGAT_0123456789abcdef-secret-token"}


def test_the_install_plan_installs_what_is_missing_and_never_colabs_own_builds():
    requirements = [Requirement(text) for text in
                    ("numpy>=1.26,<3", "tensorflow>=2.16,<3", "seaborn>=0.13,<1",
                     "tqdm>=4.66,<5", "kagglehub>=0.3,<2")]
    versions = {"numpy": "3.1.0", "tensorflow": None, "seaborn": None, "tqdm": "4.60.0",
                "kagglehub": "1.0.2"}
    to_install, reports = colab.plan_install(requirements, versions.get)
    # Missing and out of range are installed; what is satisfied is left alone.
    assert to_install == ["seaborn<1,>=0.13", "tqdm<5,>=4.66"]
    # NumPy out of range and TensorFlow missing are reported, never installed.
    assert len(reports) == 2
    assert reports[0].startswith("numpy:") and "3.1.0" in reports[0]
    assert reports[1].startswith("tensorflow:") and "has none" in reports[1]
    assert colab.install_command(to_install)[1:] == ["-m", "pip", "install", "--quiet",
                                                      *to_install]


def test_prepare_runtime_runs_only_the_minimal_install(tmp_path, capsys):
    requirements = tmp_path / "study.txt"
    requirements.write_text("# comment\nnumpy>=99  # Colab's own\npytest>=1\n"
                            "blood-cell-study-absent-package>=1\n")
    commands = []
    installed = colab.prepare_runtime(requirements, run=lambda command, check: commands.append(
        command))
    assert installed == ["blood-cell-study-absent-package>=1"]
    assert commands == [colab.install_command(installed)]
    assert "numpy: the study was tested with numpy>=99" in capsys.readouterr().out


def test_a_runtime_without_tensorflow_stops_with_one_sentence(monkeypatch):
    # Colab's TPU runtimes ship without TensorFlow.
    monkeypatch.setattr(colab.importlib.util, "find_spec",
                        lambda name: None if name == "tensorflow" else object())
    commands = []
    with pytest.raises(colab.ColabRuntimeError, match=r"T4 GPU, then Runtime > Run all"):
        colab.prepare_runtime(run=lambda command, check: commands.append(command))
    assert commands == []


# -- a simulated Colab runtime ------------------------------------------------------------

STARTUP = '''
"""google.colab as a stub, the way Colab's kernel has it imported before any cell runs."""
import json
import os
import sys
import types
import urllib.request
from pathlib import Path

RECORD = Path(os.environ["COLAB_STUB_RECORD"])
SECRETS = json.loads(os.environ.pop("COLAB_STUB_SECRETS"))


def _record(event, **details):
    with RECORD.open("a") as file:
        file.write(json.dumps({"event": event, **details}) + "\\n")


def _mount(mountpoint, force_remount=False):
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    _record("drive.mount", mountpoint=str(mountpoint))


class SecretNotFoundError(Exception):
    pass


def _get(name):
    if name not in SECRETS:
        raise SecretNotFoundError(name)
    return SECRETS[name]


google_colab = types.ModuleType("google.colab")
google_colab.drive = types.ModuleType("google.colab.drive")
google_colab.drive.mount = _mount
google_colab.userdata = types.ModuleType("google.colab.userdata")
google_colab.userdata.get = _get
google_colab.userdata.SecretNotFoundError = SecretNotFoundError
sys.modules.update({"google.colab": google_colab, "google.colab.drive": google_colab.drive,
                    "google.colab.userdata": google_colab.userdata})

# No network here: kaggle.com answers, and the download writes synthetic images, after
# checking that the Colab secrets reached kagglehub.
_urlopen = urllib.request.urlopen


class _Answer:
    def __enter__(self):
        return self

    def __exit__(self, *exception):
        return False


def _fake_urlopen(request, *args, **kwargs):
    url = getattr(request, "full_url", request)
    return _Answer() if url.startswith("https://www.kaggle.com") else _urlopen(request, *args,
                                                                             **kwargs)


urllib.request.urlopen = _fake_urlopen

import kagglehub  # noqa: E402
import kagglehub.env  # noqa: E402

# kagglehub knows Colab by its IPython shell, google.colab._shell.Shell, which this kernel lacks.
kagglehub.env._is_google_colab = True


def _dataset_download(handle, *args, **kwargs):
    from kagglehub.config import get_kaggle_credentials

    from helpers import synthetic

    credentials = get_kaggle_credentials()
    _record("kagglehub.dataset_download", handle=handle,
            credentials_from_secrets=getattr(credentials, "api_key", None)
            == SECRETS["KAGGLE_API_TOKEN"])
    folder = Path(os.environ["KAGGLEHUB_CACHE"]) / "datasets" / handle / "versions" / "1"
    if not folder.exists():
        synthetic.make_synthetic_dataset(folder / "PBC_dataset_normal_DIB", images_per_class=12)
    return str(folder)


kagglehub.dataset_download = _dataset_download
'''


def _local_origin(tmp_path: Path, content: Path) -> Path:
    """A git repository holding this working tree (committed or not), with Colab's /content
    paths pointed at ``content``: what the setup cell clones instead of GitHub."""
    origin = tmp_path / "origin"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                            cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = REPOSITORY / name
        if source.is_file() and not name.startswith("tests/notebooks/"):
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, origin / name)
    for name in ("helpers/project.py", "helpers/runtime.py"):
        path = origin / name
        path.write_text(path.read_text().replace('"/content/', f'"{content}/'))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run([*git, "init", "--quiet", str(origin)], check=True)
    subprocess.run([*git, "add", "."], cwd=origin, check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "copy"], cwd=origin, check=True)
    return origin


def _as_in_colab(notebook_name: str, origin: Path, content: Path, destination: Path) -> Path:
    """The source notebook with its setup cell cloning ``origin`` into ``content``."""
    notebook = nbformat.read(REPOSITORY / "notebooks" / f"{notebook_name}.ipynb", as_version=4)
    setup = notebook.cells[1]
    assert f'"{project.REPOSITORY_URL}"' in setup.source
    setup.source = (setup.source.replace(f'"{project.REPOSITORY_URL}"', f'"file://{origin}"')
                    .replace(f'Path("{project.COLAB_CHECKOUT}")',
                             f'Path("{content}/blood-cell-study")'))
    nbformat.write(notebook, destination)
    return destination


def _outputs(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "".join(json.dumps(cell.get("outputs", [])) for cell in notebook.cells
                   if cell.cell_type == "code")


def test_the_notebooks_in_a_simulated_colab_runtime(tmp_path, monkeypatch):
    content = tmp_path / "content"  # Colab's /content
    content.mkdir()
    origin = _local_origin(tmp_path, content)
    # IPython runs the startup file in each kernel; a failure in it is kept for the report.
    stub, stub_error = tmp_path / "google_colab_stub.py", tmp_path / "stub-error.txt"
    stub.write_text(STARTUP)
    startup = tmp_path / "ipython" / "profile_default" / "startup" / "00-google-colab.py"
    startup.parent.mkdir(parents=True)
    startup.write_text(f"import traceback\ntry:\n    exec(open({str(stub)!r}).read(), {{}})\n"
                       f"except BaseException:\n    open({str(stub_error)!r}, 'a').write("
                       "traceback.format_exc())\n    raise\n")
    record = tmp_path / "stub-record.jsonl"
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("COLAB_STUB_RECORD", str(record))
    monkeypatch.setenv("COLAB_STUB_SECRETS", json.dumps(SECRETS))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/kaggle.json
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)

    def execute(source: Path, output: Path, **parameters) -> Path:
        try:
            papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                       cwd=str(content), kernel_name="python3",
                                       progress_bar=False)
        finally:
            assert not stub_error.exists(), stub_error.read_text()
        return output

    def execute_in_colab(name: str, **parameters) -> Path:
        source = _as_in_colab(name, origin, content, tmp_path / f"{name}.ipynb")
        return execute(source, tmp_path / f"{name}.executed.ipynb", **parameters)

    # Notebook 1 as a student runs it: Kaggle data, run folder on Drive.
    first = execute_in_colab("01_data", USE_GOOGLE_DRIVE=True, RUN_DIR="runs/colab")
    checkout = content / "blood-cell-study"
    assert (checkout / "helpers" / "colab.py").is_file()
    first_outputs = _outputs(first)
    assert "nothing installed" in first_outputs  # the minimal install: nothing is missing here
    drive_run = content / "drive" / "MyDrive" / "blood-cell-study" / "colab"
    split_csv = drive_run / "data" / "split.csv"
    assert split_csv.is_file()
    assert not (checkout / "runs").exists()  # nothing of the run outside Drive
    events = [json.loads(line) for line in record.read_text().splitlines()]
    downloads = [event for event in events if event["event"] == "kagglehub.dataset_download"]
    assert [event["credentials_from_secrets"] for event in downloads] == [True]
    assert {event["mountpoint"] for event in events if event["event"] == "drive.mount"} == {
        str(content / "drive")}

    # The next notebook reuses the clone (a marker left in it survives) and finds the run on
    # Drive: a rerun in a new session resumes there.
    (checkout / "clone-marker").write_text("first clone")
    split_before = split_csv.read_bytes()
    second = execute_in_colab("02_explore", USE_GOOGLE_DRIVE=True, RUN_DIR="runs/colab")
    assert (checkout / "clone-marker").read_text() == "first clone"
    assert split_csv.read_bytes() == split_before
    assert (drive_run / "notebooks").exists() or (drive_run / "figures").exists()

    # The other notebooks' setup cells, one after another in one kernel: same clone, nothing
    # installed, the accelerator reported with the way to a GPU runtime.
    setups = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        nbformat.read(_as_in_colab(name, origin, content, tmp_path / f"{name}.ipynb"),
                      as_version=4).cells[1].source)
        for name in ("03_train_cnn", "04_train_resnet50", "05_compare")])
    nbformat.write(setups, tmp_path / "setups.ipynb")
    third = execute(tmp_path / "setups.ipynb", tmp_path / "setups.executed.ipynb")
    assert _outputs(third).count("nothing installed") == 3
    assert _outputs(third).count("Runtime > Change runtime type") == 3
    assert (checkout / "clone-marker").read_text() == "first clone"

    # The secret never shows: not in any cell output, nor in any file of the run folder.
    for path in (first, second, third):
        text = path.read_text()
        assert SECRETS["KAGGLE_API_TOKEN"] not in text
    for path in drive_run.rglob("*"):
        if path.is_file():
            assert SECRETS["KAGGLE_API_TOKEN"].encode() not in path.read_bytes(), path
