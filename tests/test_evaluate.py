"""python -m train evaluate on a tiny checkpoint: every method x every metric, written as CSV and Markdown."""

import argparse
import csv
import shutil
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from ptame import PTAME
from ptame.datasets.shapes import SHAPE_CLASSES
from tests.conftest import randomise_head, save_timm_checkpoint
from train import evaluate

SIZE = 32


def tiny_resnet(num_classes: int) -> torch.nn.Module:
    """A random-initialised quarter-width ResNet-10-T whose preprocessing is a 32x32 crop."""
    model = timm.create_model("resnet10t", num_classes=num_classes, channels=(8, 16, 32, 64))
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, SIZE, SIZE),
        "crop_pct": 1.0,
        "label_names": list(SHAPE_CLASSES),
    }
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with classifier/ and explainer/ (on a saved auxiliary network), all random-initialised."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    save_timm_checkpoint(tiny_resnet(len(SHAPE_CLASSES)), folder / "classifier")
    auxiliary = save_timm_checkpoint(tiny_resnet(len(SHAPE_CLASSES)), folder / "auxiliary")
    explainer = PTAME(num_classes=len(SHAPE_CLASSES), auxiliary=f"local-dir:{auxiliary}", class_names=SHAPE_CLASSES)
    randomise_head(explainer).save_pretrained(folder / "explainer")
    return folder


def run_evaluate(*options: str) -> None:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    evaluate.run(parser.parse_args(list(options)))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_every_method_and_metric_on_shapes(checkpoint: Path, tmp_path: Path) -> None:
    options = ["--checkpoint", str(checkpoint), "--data", "shapes", "--images", "2", "--batch-size", "2"]
    run_evaluate(*options, "--rise-masks", "8", "--deletion-steps", "2", "--out", str(tmp_path))
    rows = read_rows(tmp_path / "evaluation.csv")
    assert [row["method"] for row in rows] == ["ptame", "gradcam", "gradcam++", "scorecam", "ablationcam", "rise"]
    for row in rows:
        values = {key: float(value) for key, value in row.items() if key != "method"}
        assert values["images"] == 2 and values["seconds_per_image"] > 0
        for key in ("ad_100", "ad_50", "ad_15", "ic_100", "ic_50", "ic_15", "pointing_game", "pointing_game_tolerant"):
            assert 0 <= values[key] <= 100, key
        assert values["pointing_game_tolerant"] >= values["pointing_game"]
        for key in ("road_morf_auc", "road_lerf_auc", "deletion_auc", "insertion_auc", "energy_pointing_game"):
            assert 0 <= values[key] <= 1, key
        for key in ("road_morf_10", "road_morf_70", "road_lerf_30", "road_lerf_50"):
            assert 0 <= values[key] <= 1, key
    markdown = (tmp_path / "evaluation.md").read_text(encoding="utf-8")
    assert "| Method | s / image | AD 100% ↓ |" in markdown and "Energy PG ↑ |" in markdown
    for name in ("P-TAME", "Grad-CAM", "Grad-CAM++", "Score-CAM", "Ablation-CAM", "RISE"):
        assert f"\n| {name} | " in markdown
    assert "top-1 accuracy" in markdown and "first 2 images" in markdown and "RISE: 8 masks" in markdown
    protocol = next(line for line in markdown.splitlines() if line.startswith("- Protocol:"))
    assert "except: the shapes world's test split, not ImageNet; RISE with 8 masks (paper 8000)." in protocol
    assert "telea imputation" in markdown
    assert sorted(path.name for path in tmp_path.iterdir()) == ["evaluation.csv", "evaluation.md"]


def test_a_folder_of_images_without_masks(checkpoint: Path, tmp_path: Path) -> None:
    images = tmp_path / "images" / "some_class"
    images.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (40, 36), (60 * index, 100, 200)).save(images / f"image_{index}.png")
    out = tmp_path / "out"
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "folder", "--images-root", str(tmp_path / "images")),
        *("--subset", "all", "--images", "2", "--methods", "ptame", "gradcam", "--metrics", "ad_ic"),
        *("--out", str(out)),
    )
    rows = read_rows(out / "evaluation.csv")
    assert [row["method"] for row in rows] == ["ptame", "gradcam"]
    assert all(row["images"] == "2" for row in rows)
    assert "pointing_game" not in rows[0] and "road_morf_auc" not in rows[0]
    markdown = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "except: every image (paper: its test subset)." in markdown
    setup = "\n".join(line for line in markdown.splitlines() if not line.startswith("- Protocol:"))
    for absent in ("Pointing", "pointing", "top-1 accuracy", "ROAD", "RISE", "Deletion"):
        assert absent not in setup, absent


def parse(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(list(options))


def test_defaults_are_the_papers_protocol() -> None:
    args = parse("--model", "resnet50", "--data", "folder", "--images-root", "val", "--out", "out")
    assert args.subset == "test" and args.images is None and args.labels is None  # all 2000 test images
    assert args.ad_ic_percents == [100, 50, 15] and args.road_percents == [10, 30, 50, 70]
    assert args.road_imputation == "telea" and args.rise_masks == 8000
    assert "ablationcam" in args.methods and "rise" in args.methods
    settings = evaluate.EvaluationSettings()
    assert settings.ad_ic_fractions == (1.0, 0.5, 0.15) and settings.road_fractions == (0.1, 0.3, 0.5, 0.7)
    assert (settings.road_imputation, settings.rise_masks) == ("telea", 8000)
    assert settings.differences_from_the_paper() == []
    line = evaluate.setup_description(settings, None, with_masks=False)[0]
    assert line.startswith(
        "Protocol: the P-TAME paper's (ImageNet val's test subset of 2000 images, AD/IC at 100/50/15%"
    )
    assert "except" not in line


def test_every_protocol_choice_is_a_flag_and_the_report_says_which(checkpoint: Path, tmp_path: Path) -> None:
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "2", "--batch-size", "2"),
        *("--methods", "gradcam", "--metrics", "ad_ic", "road", "--ad-ic-percents", "100", "25"),
        *("--road-percents", "20", "60", "--road-imputation", "linear", "--out", str(tmp_path)),
    )
    row = read_rows(tmp_path / "evaluation.csv")[0]
    assert {"ad_25", "ic_25", "road_morf_20", "road_lerf_60"} <= set(row) and "ad_50" not in row
    markdown = (tmp_path / "evaluation.md").read_text(encoding="utf-8")
    assert "| AD 100% ↓ | IC 100% ↑ | AD 25% ↓ | IC 25% ↑ |" in markdown
    assert "AD/IC at 100/25% (paper 100/50/15%); ROAD at 20/60% (paper 10/30/50/70%); " in markdown
    assert "ROAD with linear imputation (paper telea)." in markdown
    assert "RISE" not in markdown.split(" except: ")[1]  # RISE did not run: no difference to report


def test_a_classifier_without_explainer_is_evaluated_with_the_baselines_only(checkpoint: Path, tmp_path: Path) -> None:
    only = tmp_path / "only"
    shutil.copytree(checkpoint / "classifier", only / "classifier")
    options = ["--checkpoint", str(only), "--data", "shapes", "--images", "2", "--batch-size", "2"]
    with pytest.raises(SystemExit, match="cannot evaluate P-TAME: .*leave it out with --methods"):
        run_evaluate(*options, "--out", str(tmp_path / "out"))
    run_evaluate(*options, "--methods", "gradcam", "--metrics", "ad_ic", "--out", str(tmp_path / "out"))
    assert [row["method"] for row in read_rows(tmp_path / "out" / "evaluation.csv")] == ["gradcam"]
    assert "explainer `none`" in (tmp_path / "out" / "evaluation.md").read_text(encoding="utf-8")


def test_bad_options_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--images-root"):
        run_evaluate("--checkpoint", str(checkpoint), "--data", "folder", "--out", str(tmp_path))
    with pytest.raises(SystemExit, match=">= 1"):
        run_evaluate("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "0", "--out", str(tmp_path))
    with pytest.raises(SystemExit):  # argparse: not a method
        run_evaluate("--checkpoint", str(checkpoint), "--data", "shapes", "--methods", "lime", "--out", str(tmp_path))
    with pytest.raises(SystemExit, match="--road-percents must increase"):
        run_evaluate(
            "--checkpoint", str(checkpoint), "--data", "shapes", "--road-percents", "50", "10", "--out", str(tmp_path)
        )
    with pytest.raises(SystemExit, match="--ad-ic-percents"):
        run_evaluate(
            "--checkpoint", str(checkpoint), "--data", "shapes", "--ad-ic-percents", "0", "--out", str(tmp_path)
        )
    images = tmp_path / "val" / "n01440764"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 36)).save(images / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(SystemExit, match="not ImageNet val's 50000"):  # the paper's subsets need the whole val
        run_evaluate(
            "--checkpoint",
            str(checkpoint),
            "--data",
            "folder",
            "--images-root",
            str(tmp_path / "val"),
            "--out",
            str(tmp_path),
        )
    with pytest.raises(SystemExit, match="--labels"):
        run_evaluate("--checkpoint", str(checkpoint), "--data", "shapes", "--labels", "x.csv", "--out", str(tmp_path))
    assert not (tmp_path / "evaluation.csv").exists()


def test_markdown_shows_only_the_figures_present() -> None:
    rows = [{"method": "ptame", "images": 2.0, "seconds_per_image": 0.01234, "ad_100": 12.3456}]
    markdown = evaluate.markdown_text(rows, ["setup line"])
    assert "- setup line" in markdown
    assert "| Method | s / image | AD 100% ↓ |" in markdown
    assert "| P-TAME | 0.012 | 12.35 |" in markdown
    assert "IC" not in markdown.split("| Method")[1]


def test_reports_name_folders_relative_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert evaluate.relative_to_cwd(f"local-dir:{tmp_path}/shapes/classifier") == "local-dir:shapes/classifier"
    assert evaluate.relative_to_cwd("org/repo@0123abc") == "org/repo@0123abc"


def test_the_table_is_the_mean_of_per_image_figures_over_unequal_batches(checkpoint: Path) -> None:
    """Batches of 3 and 1 images: each row must be the mean over the 4 images (not of the batch
    means), with AD in percent as computed and IC the percentage of images whose probability rises."""
    from ptame.datasets.shapes import shapes_sample
    from ptame.methods.grad_cam import grad_cam
    from ptame.metrics import ad_ic, deletion_insertion
    from ptame.serving.manifest import ModelEntry, load_model

    model = load_model(ModelEntry.from_folder(checkpoint))
    pixels = torch.stack([shapes_sample(index, "test", SIZE).pixels for index in range(4)])
    settings = evaluate.EvaluationSettings(methods=("gradcam",), metrics=("ad_ic", "deletion_insertion"))
    batches = [(pixels[:3], None, None), (pixels[3:], None, None)]
    rows, accuracy = evaluate.evaluate(model, iter(batches), settings, torch.device("cpu"))
    assert accuracy is None and len(rows) == 1 and rows[0]["images"] == 4
    per_image: dict[str, list[float]] = {}
    for image in range(4):
        one = pixels[image : image + 1]
        with torch.no_grad():
            top1 = model.backbone.logits(one).argmax(dim=1)
        maps = grad_cam(model.backbone, one, top1)
        figures = ad_ic(model.backbone, one, maps, top1, (1.0, 0.5, 0.15))
        curves = deletion_insertion(model.backbone, one, maps, top1, steps=50)
        for name, value in figures.items():
            per_image.setdefault(name, []).append(value.item() * (100.0 if name.startswith("ic_") else 1.0))
        per_image.setdefault("deletion_auc", []).append(curves.deletion_auc.item())
        per_image.setdefault("insertion_auc", []).append(curves.insertion_auc.item())
    for name, values in per_image.items():
        assert rows[0][name] == pytest.approx(sum(values) / 4, rel=1e-4, abs=1e-6), name
