"""The repository's set-up files agree with each other and with the README."""

import re

import yaml

from tests.conftest import REPOSITORY

REQUIRED = ["tensorflow", "keras", "numpy", "pandas", "matplotlib", "seaborn", "scikit-learn",
            "kagglehub", "kaggle", "papermill", "nbval", "pytest", "ipykernel", "pillow"]


def _requirement_names() -> set[str]:
    lines = (REPOSITORY / "requirements.txt").read_text().splitlines()
    return {re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.startswith("#")}


def test_requirements_name_every_package_the_study_uses():
    assert set(REQUIRED) <= _requirement_names()


def test_requirements_are_ranges_not_pins():
    # Exact pins would make Colab's %pip install replace its own TensorFlow and Keras.
    text = (REPOSITORY / "requirements.txt").read_text()
    assert "==" not in text


def test_conda_environment_installs_the_same_requirements():
    environment = yaml.safe_load((REPOSITORY / "environment.yml").read_text())
    pip_entries = [entry for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert pip_entries == [{"pip": ["-r requirements.txt"]}]


def test_ci_runs_the_readme_test_command():
    readme = (REPOSITORY / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    assert commands[:2] == ["make study", "make test"]
    ci_lines = [line for line in (REPOSITORY / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith("#")]
    assert ci_lines[-1] == "make test"
    workflow = (REPOSITORY / ".github" / "workflows" / "ci.yml").read_text()
    assert "bash .ci/run" in workflow
