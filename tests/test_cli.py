"""`python -m ptame explain`: the app's explanations written to a folder (on the shapes demo's
networks with seeded random weights, given as a model folder)."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptame.cli import image_paths, main, output_stems, parse_methods
from tests.conftest import ROOT, random_shapes_demo, shapes_file


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(random_shapes_demo(tmp_path_factory.mktemp("models") / "shapes"))


@pytest.fixture(scope="module")
def classifier_only(model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's folder without explainer/ (classifier/ and auxiliary/ only)."""
    folder = tmp_path_factory.mktemp("models") / "only"
    for part in ("classifier", "auxiliary"):
        shutil.copytree(Path(model) / part, folder / part)
    return str(folder)


def test_image_paths_expand_folders_and_drop_repeats(tmp_path: Path) -> None:
    first = shapes_file(tmp_path / "a", 0, "one.png")
    second = shapes_file(tmp_path / "a" / "deeper", 1, "two.JPG")
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    assert image_paths([tmp_path / "a", first]) == [second, first]  # sorted: "deeper/" < "one.png"
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        image_paths([tmp_path / "missing.png"])


def test_output_stems_are_distinct() -> None:
    assert output_stems([Path("a/x.png"), Path("b/x.jpg"), Path("y.png"), Path("c/x.png")]) == ["x", "x-2", "y", "x-3"]


def test_parse_methods() -> None:
    assert parse_methods("ptame, GradCAM,ptame") == ["ptame", "gradcam"]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated subset"):
        parse_methods("ptame,lime")


def test_explain_writes_a_figure_and_the_maps_per_image(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = [shapes_file(tmp_path / "in", i, f"shape-{i}.png") for i in range(2)]
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:500])
    out = tmp_path / "out"
    status = main(["explain", str(tmp_path / "in"), "--model", model, "--methods", "ptame,gradcam", "--out", str(out)])
    assert status == 1  # the broken file is skipped and reported
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["shape-0.npz", "shape-0.png", "shape-1.npz", "shape-1.png"]
    figure = np.asarray(Image.open(out / "shape-0.png"))
    assert figure.shape[0] > 256 and figure.shape[1] > 3 * 256  # input + 2 overlays, enlarged
    with np.load(out / "shape-0.npz") as saved:
        assert {"ptame", "gradcam", "image", "class_index", "class_name", "model"} <= set(saved.files)
        assert "scorecam" not in saved.files
        assert saved["ptame"].shape == saved["image"].shape[:2]
        assert str(saved["model"]) == "shapes"


def test_explain_a_chosen_class(model: str, tmp_path: Path) -> None:
    image = shapes_file(tmp_path, 3, "star.png")
    out = tmp_path / "o"
    assert (
        main(["explain", str(image), "--model", model, "--methods", "ptame", "--class-index", "1", "--out", str(out)])
        == 0
    )
    with np.load(out / "star.npz") as saved:
        assert int(saved["class_index"]) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "vgg99"], "unknown model 'vgg99'"),
        (["--class-index", "99"], "--class-index must be in"),
        (["--opacity", "2"], "--opacity must be in"),
        (["--model", "/no/such/folder"], "unknown model '/no/such/folder'"),
    ],
)
def test_bad_arguments_exit_with_a_message(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture, arguments, message
) -> None:
    image = shapes_file(tmp_path, 0, "x.png")
    assert main(["explain", str(image), "--out", str(tmp_path / "o"), "--model", model, *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_classifier_only_model_writes_the_baselines_and_warns_once(
    classifier_only: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for index in range(2):
        shapes_file(tmp_path / "in", index, f"shape-{index}.png")
    out = tmp_path / "out"
    arguments = ["explain", str(tmp_path / "in"), "--model", classifier_only, "--methods", "ptame,gradcam"]
    assert main([*arguments, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: No P-TAME map for only: ") == 1
    assert "no explainer is configured for it" in captured.err
    assert "python -m train explainer --classifier" in captured.err
    assert "wrote 2 of 2 images" in captured.out
    for index in range(2):
        with np.load(out / f"shape-{index}.npz") as saved:
            assert "gradcam" in saved.files and "ptame" not in saved.files and "seconds_ptame" not in saved.files
            assert str(saved["model"]) == "only"
            assert saved["gradcam"].shape == saved["image"].shape[:2]


def test_only_p_tame_on_a_classifier_only_model_is_an_error(
    classifier_only: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = shapes_file(tmp_path, 0, "x.png")
    assert main(["explain", str(image), "--model", classifier_only, "--methods", "ptame", "--out", str(tmp_path)]) == 2
    assert "error: No P-TAME map for only: " in capsys.readouterr().err


def test_classifier_and_explainer_arguments(model: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = shapes_file(tmp_path, 2, "x.png")
    classifier = f"local-dir:{model}/classifier"
    key = "local-dir-" + f"{model}/classifier".strip("/").replace("/", "-")
    out = tmp_path / "plain"
    assert (
        main(["explain", str(image), "--classifier", classifier, "--methods", "ptame,gradcam", "--out", str(out)]) == 0
    )
    assert "warning: No P-TAME map for " in capsys.readouterr().err
    with np.load(out / "x.npz") as saved:
        assert "gradcam" in saved.files and "ptame" not in saved.files and str(saved["model"]) == key
    out = tmp_path / "with-explainer"
    arguments = ["--classifier", classifier, "--explainer", f"{model}/explainer", "--methods", "ptame,gradcam"]
    assert main(["explain", str(image), *arguments, "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    with np.load(out / "x.npz") as saved:
        assert {"ptame", "gradcam"} <= set(saved.files)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--explainer", "./somewhere"], "--explainer and --target-layer need --classifier"),
        (["--classifier", " "], "the classifier must be a timm name"),
        (["--classifier", "resnet50", "--explainer", "not-a-repo"], "neither an existing folder nor a Hub repo id"),
        (["--classifier", "local-dir:/no/such/folder"], "cannot load the classifier local-dir:…/folder: "),
    ],
)
def test_bad_classifier_arguments_exit_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list[str], message: str
) -> None:
    image = shapes_file(tmp_path, 0, "x.png")
    assert main(["explain", str(image), "--out", str(tmp_path / "o"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_model_folder_without_a_classifier_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = shapes_file(tmp_path, 0, "x.png")
    (tmp_path / "empty").mkdir()
    assert main(["explain", str(image), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "has no classifier/ folder" in capsys.readouterr().err


def test_python_dash_m_ptame_runs(model: str, tmp_path: Path) -> None:
    image = shapes_file(tmp_path, 5, "x.png")
    result = subprocess.run(
        [sys.executable, "-m", "ptame", "explain", str(image), "--model", model, "--methods", "ptame"]
        + ["--threads", "1", "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 of 1 images" in result.stdout
    assert (tmp_path / "o" / "x.png").is_file()
