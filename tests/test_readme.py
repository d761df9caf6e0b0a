import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys) -> None:
    text = README.read_text()
    section = text.split("## Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(example, str(README), "exec"), {})
    assert capsys.readouterr().out.strip().endswith("(1, 224, 224) (1, 1000, 56, 56)")


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in README.read_text()
    assert "\n.venv/bin/python -m pytest\n" in ci
