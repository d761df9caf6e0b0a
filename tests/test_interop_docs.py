"""The documentation: two examples with more than their runs checked (the own-classifier training in 2
steps, the registry example's method), the site builds in strict mode, and strict mode fails on a
broken reference (.ci/run builds the real site; these build a copy). The builds are skipped where
mkdocs is not installed (``pip install -r requirements-docs.txt``). Every block runs as written, as a
user runs it, in tests/test_docs_snippets.py."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptame.methods import METHODS, unregister_method
from tests.conftest import ROOT

DOCS = ROOT / "docs"
SOURCES = ("mkdocs.yml", "docs", "ptame", "checkpoints", "notebooks", "CITATION.cff")  # what the site reads


def python_blocks(page: str, section: str | None = None) -> list[str]:
    """The ```python blocks of a docs page (of one ``## section`` of it)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run_example(code: str, page: str) -> dict[str, object]:
    """Run an example in a new namespace; returns the namespace."""
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    return namespace


def test_the_own_classifier_example_trains_and_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptame import PTAME

    example = python_blocks("own-classifier.md")[0]
    assert "steps = 800\n" in example and '"runs/my-explainer"' in example
    example = example.replace("steps = 800\n", "steps = 2\n").replace('"runs/my-explainer"', repr(str(tmp_path)))
    monkeypatch.chdir(ROOT)
    run_example(example, "own-classifier.md")
    explainer = PTAME.from_pretrained(tmp_path)
    assert explainer.num_classes == 6 and explainer.class_names[0] == "circle"
    assert explainer.auxiliary_mean == (0.447, 0.448, 0.448)  # the shapes auxiliary's, not ImageNet's


def test_the_registry_example_adds_a_method() -> None:
    example = python_blocks("methods.md", "Adding a method")[0]
    try:
        namespace = run_example(example, "methods.md")
        assert list(METHODS)[-1] == "center" and METHODS["center"].compute is namespace["center_prior"]
    finally:
        unregister_method("center")


def build(folder: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder / "site")]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy_of_the_docs(tmp_path: Path) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    for name in SOURCES:
        if name == "docs":
            shutil.copytree(ROOT / name, tmp_path / name)
        else:
            (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_the_site_builds_strictly_with_its_api_pages(copy_of_the_docs: Path) -> None:
    done = build(copy_of_the_docs)
    assert done.returncode == 0, done.stderr
    api = (copy_of_the_docs / "site" / "api" / "interop" / "index.html").read_text(encoding="utf-8")
    assert "ptame.interop.quantus.explain_func" in api and "PixelClassifier" in api
    assert "def explain_func" not in api  # signatures, not source


def test_a_broken_reference_fails_the_build(copy_of_the_docs: Path) -> None:
    page = copy_of_the_docs / "docs" / "methods.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [`nothing`][ptame.methods.no_such_thing].\n")
    done = build(copy_of_the_docs)
    assert done.returncode != 0
    assert "ptame.methods.no_such_thing" in done.stderr
