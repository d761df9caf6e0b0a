"""The documentation site builds in strict mode, and strict mode fails on a broken reference (.ci/run
builds the real site; these build a copy). Skipped where mkdocs is not installed
(``pip install -r requirements-docs.txt``)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

SOURCES = ("mkdocs.yml", "docs", "ptame", "checkpoints", "notebooks", "CITATION.cff")  # what the site reads


def build(folder: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder / "site")]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy_of_the_docs(tmp_path: Path) -> Path:
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
