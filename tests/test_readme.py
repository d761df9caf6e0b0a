"""The README: its install and test commands are CI's, its header the Space's settings (its code blocks
run in tests/test_docs_snippets.py)."""

from tests.conftest import ROOT

README = ROOT / "README.md"


def test_readme_install_and_test_commands_are_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/pip install -r requirements.txt -e . &&" in README.read_text()
    assert "\n.venv/bin/python -m pip install --quiet -r requirements.txt -e .\n" in ci
    assert ".venv/bin/python -m pytest" in README.read_text()
    assert "\n.venv/bin/python -m pytest\n" in ci


def space_header() -> dict[str, str | list[str]]:
    """The README's YAML front matter (the Hugging Face Space's settings), flat keys and lists."""
    text = README.read_text()
    assert text.startswith("---\n"), "README.md must start with the Space's YAML header"
    header: dict[str, str | list[str]] = {}
    key = ""
    for line in text.split("\n---\n", 1)[0].splitlines()[1:]:
        if line.startswith("  - "):
            header[key].append(line[4:])
        else:
            key, value = (part.strip() for part in line.split(":", 1))
            header[key] = value.strip('"') if value else []
    return header


def test_space_header_matches_requirements_and_manifest() -> None:
    from ptame.serving.manifest import load_manifest

    header = space_header()
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    requirements = (README.parent / "requirements.txt").read_text()
    assert f"\ngradio=={header['sdk_version']}\n" in requirements
    assert header["python_version"] == "3.11"
    hub_explainers = [entry.explainer for entry in load_manifest() if entry.explainer_revision is not None]
    assert hub_explainers and set(hub_explainers) <= set(header["models"])
