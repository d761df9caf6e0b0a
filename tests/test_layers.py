"""The layers of the design: no module imports one of a higher layer (docs/development.md, "Layout")."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "ptame.errors",
        "ptame.loading",  # how a network gets in; it reads ptame.perturb's normalisation and ptame.head's shape
        "ptame.maps",
        "ptame.checks",
        "ptame.perturb",
        "ptame.head",
        "ptame.loss",
        "ptame.explainer",
        "ptame.training",
        "ptame.class_coverage",
        "ptame.datasets",
        "ptame.efficientnet_lite0",
    ),
    ("ptame.methods",),
    ("ptame.metrics",),
    ("ptame.interop",),  # Quantus and captum adapters: optional, imported by nothing below them
    ("ptame.serving",),
    ("ptame.bench", "ptame.cli", "ptame.__main__", "ptame"),
    ("train",),
    ("app",),
)
LAYER_NAMES = ("core and loading", "methods", "metrics", "interop", "serving", "faces of ptame", "train", "app")


def layer_of(module: str) -> int | None:
    """The layer index of a project module (None: not the project's)."""
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of the file names (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_files() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "ptame").rglob("*.py")), *sorted((ROOT / "train").rglob("*.py"))]


def test_every_project_module_has_a_layer() -> None:
    unplaced = [module_name(path) for path in project_files() if layer_of(module_name(path)) is None]
    assert not unplaced


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in project_files():
        importer = module_name(path)
        for imported in imported_modules(path):
            # "from ptame.methods import p_tame" names ptame.methods.p_tame: its layer is its module's.
            target = layer_of(imported)
            if target is not None and target > layer_of(importer):
                upward.append(
                    f"{importer} ({LAYER_NAMES[layer_of(importer)]}) imports {imported} ({LAYER_NAMES[target]})"
                )
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from ptame.serving.session import ExplainSession\n")
    assert "ptame.serving.session" in imported_modules(probe)
    assert layer_of("ptame.serving.session") > layer_of("ptame.methods.grad_cam") > layer_of("ptame.explainer")


def test_train_helpers_import_no_command() -> None:
    """Inside train/, the commands (train/commands/) sit on the helpers: a helper imports no command."""
    helpers = [path for path in (ROOT / "train").glob("*.py") if path.name != "__main__.py"]
    upward = [
        f"{module_name(path)} imports {imported}"
        for path in helpers
        for imported in imported_modules(path)
        if imported == "train.commands" or imported.startswith("train.commands.")
    ]
    assert helpers and not upward, "\n".join(upward)
