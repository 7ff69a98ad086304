"""The repository's set-up files agree with each other and with the README and docs/."""

import ast
import re

import yaml

from helpers import colab
from helpers.tools import study
from tests.conftest import REPOSITORY


def _requirement_names(path: str) -> set[str]:
    lines = (REPOSITORY / path).read_text().splitlines()
    return {re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.startswith(("#", "-r"))}


def test_requirements_txt_is_the_study_dask_and_the_tools():
    lines = [line for line in (REPOSITORY / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["-r requirements/study.txt", "-r requirements/cluster.txt",
                     "-r requirements/dev.txt"]


def test_colab_installs_no_development_tools_and_keeps_its_own_builds():
    study = _requirement_names("requirements/study.txt")
    assert not study & {"pytest", "nbval", "ruff", "nbstripout", "papermill"}
    # The packages the setup cell never touches are named in the file it reads.
    assert set(colab.PREINSTALLED) <= study


def test_requirements_are_ranges_that_admit_colabs_versions():
    # Exact pins would make an install replace Colab's own TensorFlow and Keras.
    for path in ("requirements.txt", "requirements/study.txt", "requirements/dev.txt"):
        assert "==" not in (REPOSITORY / path).read_text()
    ranges = {requirement.name.lower(): requirement
              for requirement in colab.read_requirements(REPOSITORY / "requirements/study.txt")}
    constraints = colab.read_requirements(REPOSITORY / ".ci" / "colab-constraints.txt")
    assert constraints
    for pinned in constraints:
        version = str(next(iter(pinned.specifier)).version)
        assert ranges[pinned.name.lower()].specifier.contains(version), pinned


def test_the_lowest_versions_tested_are_the_requirements_lower_bounds():
    """.ci/lowest-constraints.txt pins every requirement at its lower bound (or the bound's
    first release, 2.16 -> 2.16.1), so a raised bound is tested at once."""
    requirements = {requirement.name.lower(): requirement
                    for path in ("study", "cluster", "dev")
                    for requirement in colab.read_requirements(
                        REPOSITORY / "requirements" / f"{path}.txt")}
    pinned = {requirement.name.lower(): str(next(iter(requirement.specifier)).version)
              for requirement in colab.read_requirements(
                  REPOSITORY / ".ci" / "lowest-constraints.txt")}
    assert pinned.keys() == requirements.keys()
    for name, requirement in requirements.items():
        floor = next(str(bound.version) for bound in requirement.specifier
                     if bound.operator == ">=")
        assert requirement.specifier.contains(pinned[name]), name
        assert (pinned[name] + ".").startswith(floor + "."), (name, floor, pinned[name])


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


# Upper-case names in strings that are not notebook parameters: environment variables, a
# file name, words of usage lines, the setup cell's variable the lint looks for.
NOT_PARAMETERS = {"KAGGLE_USERNAME", "KAGGLE_KEY", "TF_ENABLE_ONEDNN_OPTS",
                  "TF_CPP_MIN_LOG_LEVEL", "BLOOD_CELLS_HEADLESS", "BLOOD_CELL_STUDY_LOCK",
                  "BLOOD_CELLS_PROGRESS_FILE", "KERAS_HOME",
                  "DS_000001", "UPPER_CASE", "IMAGE_OR_DIR", "OUT_DIR", "IS_COLAB",
                  # Environment variables of a local cluster's workers (helpers/cluster.py).
                  "CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_NUM_INTEROP_THREADS",
                  "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"}


def _message_texts(path) -> list[str]:
    """Every string of a module but its docstrings: its messages, in the end."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and ast.get_docstring(node) is not None}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_every_parameter_a_message_names_exists():
    """A refusal that tells the user to set a parameter names one a notebook declares (an
    earlier message named FORCE_NEW_SPLIT, which none did)."""
    declared = set(study.all_declared_parameters())
    named = set()
    for path in (REPOSITORY / "helpers").rglob("*.py"):
        for text in _message_texts(path):
            named |= set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))
            named |= set(re.findall(r"\b([A-Z][A-Z0-9_]+) = ", text))
    assert {"NEW_SPLIT", "PRECISION"} <= named  # the scan sees the messages that name them
    assert named - NOT_PARAMETERS <= declared


README_MAX_LINES = 200


def test_readme_is_a_front_page():
    """The README stays a front page; the details live in docs/ (issue 21)."""
    lines = (REPOSITORY / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def _markdown_pages() -> list:
    return [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _link_targets(text: str) -> list[str]:
    """The target of every markdown link and image, `[text](target)` or `[text](target "t")`,
    outside code blocks and inline code."""
    text = re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces to
    hyphens (markup characters such as backticks and asterisks are punctuation too)."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(path) -> set[str]:
    """Every heading's anchor in a markdown file, with GitHub's -1, -2... for repeats."""
    anchors, seen = set(), {}
    for line in _without_code_blocks(path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _broken_links(page) -> list[str]:
    broken = []
    for target in _link_targets(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
            continue  # https:, mailto: ...: not a file of this repository
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_slugs_follow_githubs_rule():
    assert _slug("BatchNorm's moving averages, and the fix") == (
        "batchnorms-moving-averages-and-the-fix")
    assert _slug("`PRECISION: auto` on the CPUs, measured") == (
        "precision-auto-on-the-cpus-measured")
    assert _slug("Against the goal of 99.3%") == "against-the-goal-of-993"
    assert _slug("The run_folder and **run-dir**") == "the-run_folder-and-run-dir"


def test_every_relative_link_of_the_docs_resolves(tmp_path):
    pages = _markdown_pages()
    assert len(pages) > 1, "docs/*.md is missing"
    broken = {str(page.relative_to(REPOSITORY)): _broken_links(page) for page in pages}
    assert {page: links for page, links in broken.items() if links} == {}
    # The check itself catches a missing file and a missing heading.
    (tmp_path / "page.md").write_text(
        "# A page\n\n## Some heading\n\n[ok](#some-heading) [ok](page.md#a-page) "
        "[gone](missing.md) [gone](page.md#no-such-heading) `[code](not-a-link.md)`\n")
    assert _broken_links(tmp_path / "page.md") == [
        "missing.md: no such file", "page.md#no-such-heading: no heading with that anchor"]


def test_license_and_citation_are_there():
    assert "MIT License" in (REPOSITORY / "LICENSE").read_text()
    citation = yaml.safe_load((REPOSITORY / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT"
    assert citation["references"], "the PBC dataset's article is cited"
