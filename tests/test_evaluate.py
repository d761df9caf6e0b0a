"""python -m train evaluate on a tiny checkpoint: every method x every metric, written as CSV and Markdown."""

import argparse
import csv
import inspect
import itertools
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image

from ptame import PTAME
from ptame.bench.app import free_port
from ptame.datasets.shapes import SHAPE_CLASSES, shapes_sample
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry
from tests.conftest import ROOT, randomise_head, save_timm_checkpoint, shapes_file
from train import distributed, evaluation, evaluation_report
from train.commands import evaluate

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


def test_every_method_and_metric_on_shapes(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Also: --out is created with its parents; the report is printed, then where it was written; a
    progress bar counts the images."""
    out = tmp_path / "runs" / "shapes"
    options = ["--checkpoint", str(checkpoint), "--data", "shapes", "--images", "2", "--batch-size", "2"]
    run_evaluate(*options, "--rise-masks", "8", "--deletion-steps", "2", "--out", str(out))
    printed = capsys.readouterr()
    rows = read_rows(out / "evaluation.csv")
    assert b"\r" not in (out / "evaluation.csv").read_bytes()  # plain \n line ends, as evaluation.md
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
        for order in ("morf", "lerf"):  # trapezoids through (0, 1), the mean accuracies at 10/30/50/70%, (1, 0)
            xs = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
            ys = [1.0, *(values[f"road_{order}_{percent}"] for percent in (10, 30, 50, 70)), 0.0]
            area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(5))
            assert values[f"road_{order}_auc"] == pytest.approx(area, abs=1e-5), order
    markdown = (out / "evaluation.md").read_text(encoding="utf-8")
    per_image = out / "evaluation-per-image.csv"
    assert printed.out == f"{markdown}\nwrote {out / 'evaluation.csv'}, {out / 'evaluation.md'} and {per_image}\n"
    assert "evaluate: 100%" in printed.err and " 2/2 " in printed.err
    # Per image and method: AD/IC 1 + 3 passes, ROAD 2 x 4, deletion/insertion 2 x (2 + 1); Score-CAM and
    # Ablation-CAM one pass per channel of the 64-channel target layer and one more; RISE one per mask.
    assert printed.err.startswith(
        "Expected cost in classifier passes per image (map + metrics): prediction 1; P-TAME 0 + 18; Grad-CAM 2 + 18; "
        "Grad-CAM++ 2 + 18; Score-CAM 65 + 18; Ablation-CAM 65 + 18; RISE 8 + 18. In all 251 per image, 502 for the "
        "2 images.\nAt "
    )
    assert "The first 2 images took " in printed.err
    images = read_rows(per_image)
    assert [(row["image"], row["method"]) for row in images] == [
        (f"test/{index}", method) for method in ("ptame", "gradcam", "gradcam++", "scorecam", "ablationcam", "rise")
        for index in (0, 1)
    ]  # fmt: skip
    for row in rows:  # the table's figures are the means of the per-image ones
        mine = [image for image in images if image["method"] == row["method"]]
        for key in set(row) - {"method", "images", "seconds_per_image"}:
            mean = sum(float(image[key]) for image in mine) / 2
            assert float(row[key]) == pytest.approx(mean, rel=1e-5, abs=1e-6), key
    setup = markdown.split("\n\n")[1].splitlines()
    assert setup[0].startswith(f"- Classifier `local-dir:{checkpoint / 'classifier'}`, explainer `")
    assert any(line.startswith("- Pointing game: ") for line in setup)  # shapes images have object masks
    assert "| Method | s / image | AD 100% ↓ |" in markdown and "Energy PG ↑ |" in markdown
    for name in ("P-TAME", "Grad-CAM", "Grad-CAM++", "Score-CAM", "Ablation-CAM", "RISE"):
        assert f"\n| {name} | " in markdown
    assert "top-1 accuracy" in markdown and "first 2 images" in markdown and "RISE: 8 masks" in markdown
    protocol = next(line for line in markdown.splitlines() if line.startswith("- Protocol:"))
    assert "except: the shapes world's test split, not ImageNet; RISE with 8 masks (paper 8000)." in protocol
    assert "telea imputation" in markdown
    assert sorted(path.name for path in out.iterdir()) == [
        "evaluation-per-image.csv",
        "evaluation.csv",
        "evaluation.md",
    ]


def record_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``run``'s evaluation append the number of images of each batch it gets to the returned list."""
    batch_sizes: list[int] = []
    real_evaluate = evaluate.evaluate_tally

    def recording_evaluate(
        backbone: object, explainer: object, batches: Iterator[tuple], *args: object, **kwargs: object
    ) -> object:
        def counted() -> Iterator[tuple]:
            for batch in batches:
                batch_sizes.append(batch[0].shape[0])
                yield batch

        return real_evaluate(backbone, explainer, counted(), *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_tally", recording_evaluate)
    return batch_sizes


def test_a_folder_of_images_without_masks(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert f"; 2 images of {tmp_path / 'images'} (every image, the first ones); device cpu." in markdown
    assert "except: every image (paper: its test subset)." in markdown
    setup = "\n".join(line for line in markdown.splitlines() if not line.startswith("- Protocol:"))
    for absent in ("Pointing", "pointing", "top-1 accuracy", "ROAD", "RISE", "Deletion"):
        assert absent not in setup, absent
    batch_sizes = record_batch_sizes(monkeypatch)
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "folder", "--images-root", str(tmp_path / "images")),
        *("--subset", "all", "--batch-size", "2", "--methods", "gradcam", "--metrics", "ad_ic", "--out", str(out)),
    )
    assert batch_sizes == [2, 1]
    markdown = (out / "evaluation.md").read_text(encoding="utf-8")
    assert f"; 3 images of {tmp_path / 'images'} (every image); device cpu." in markdown


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
    assert args.metrics == ["ad_ic", "road", "deletion_insertion", "pointing", "switching"]
    assert (args.deletion_steps, args.batch_size, args.seed, args.threads) == (50, 16, 0, None)
    assert (args.device, args.split, args.manifest) == ("cpu", "test", ROOT / "checkpoints" / "manifest.toml")
    settings = evaluation.EvaluationSettings()
    assert settings.ad_ic_fractions == (1.0, 0.5, 0.15) and settings.road_fractions == (0.1, 0.3, 0.5, 0.7)
    assert (settings.road_imputation, settings.options("rise")["num_masks"]) == ("telea", 8000)
    assert settings.differences_from_the_paper() == []
    line = evaluation_report.setup_description(settings, None, with_masks=False)[0]
    assert line.startswith(
        "Protocol: the P-TAME paper's (ImageNet val's test subset of 2000 images, AD/IC at 100/50/15%"
    )
    assert "except" not in line


@pytest.mark.parametrize(
    "options",
    [
        ("--data", "shapes", "--out", "out"),  # neither --model nor --checkpoint
        ("--model", "m", "--checkpoint", "c", "--data", "shapes", "--out", "out"),  # both
        ("--model", "m", "--out", "out"),  # no --data
        ("--model", "m", "--data", "shapes"),  # no --out
        ("--model", "m", "--data", "imagenet", "--out", "out"),
        ("--model", "m", "--data", "shapes", "--split", "holdout", "--out", "out"),
        ("--model", "m", "--data", "folder", "--images-root", "val", "--subset", "half", "--out", "out"),
        ("--model", "m", "--data", "shapes", "--metrics", "accuracy", "--out", "out"),
        ("--model", "m", "--data", "shapes", "--road-imputation", "zero", "--out", "out"),
    ],
)
def test_missing_and_unknown_options_are_usage_errors(options: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as usage_error:
        parse(*options)
    assert usage_error.value.code == 2  # argparse's usage error


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


def test_markdown_is_a_heading_the_setup_list_and_a_table_of_the_figures_present() -> None:
    """Columns no row has are left out; a row without a figure another row has gets an empty cell."""
    rows = [
        {"method": "ptame", "images": 2.0, "seconds_per_image": 0.01234, "ad_100": 12.3456, "ic_100": 50.0},
        {"method": "gradcam", "images": 2.0, "seconds_per_image": 0.5, "ad_100": 3.0},
    ]
    markdown = evaluation_report.markdown_text(rows, ["setup line", "another line"], ad_ic_percents=(100,))
    assert markdown == (
        "## Evaluation\n"
        "\n"
        "- setup line\n"
        "- another line\n"
        "\n"
        "| Method | s / image | AD 100% ↓ | IC 100% ↑ |\n"
        "|---|---:|---:|---:|\n"
        "| P-TAME | 0.012 | 12.35 | 50.00 |\n"
        "| Grad-CAM | 0.500 | 3.00 |  |\n"
    )


def test_reports_name_folders_relative_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert evaluation_report.relative_to_cwd(f"local-dir:{tmp_path}/shapes/classifier") == "local-dir:shapes/classifier"
    assert evaluation_report.relative_to_cwd("org/repo@0123abc") == "org/repo@0123abc"


def test_the_table_is_the_mean_of_per_image_figures_over_unequal_batches(checkpoint: Path) -> None:
    """Batches of 3 and 1 images: each row must be the mean over the 4 images (not of the batch
    means), with AD in percent as computed and IC the percentage of images whose probability rises."""
    from ptame.methods.grad_cam import grad_cam
    from ptame.metrics import ad_ic, deletion_insertion

    model = load_model(ModelEntry.from_folder(checkpoint))
    pixels = torch.stack([shapes_sample(index, "test", SIZE).pixels for index in range(4)])
    settings = evaluation.EvaluationSettings(methods=("gradcam",), metrics=("ad_ic", "deletion_insertion"))
    batches = [(pixels[:3], None, None), (pixels[3:], None, None)]
    finished: list[int] = []
    rows, accuracy = evaluation.evaluate(
        model.backbone, model.explainer, iter(batches), settings, torch.device("cpu"), progress=finished.append
    )
    assert accuracy is None and len(rows) == 1 and rows[0]["images"] == 4 and finished == [3, 1]
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


def test_blank_maps_are_counted_per_method_in_the_report(checkpoint: Path, tmp_path: Path) -> None:
    """A method whose maps are constant on images 0 and 2 of 4 (and a map that is constant but not zero on
    image 2): 50% blank maps in its row, 100 / 0 per image (the ramps of images 1 and 3 are not blank)."""
    from ptame.methods import register_method, unregister_method

    def half_blank(backbone: object, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, pixels.shape[-1]).expand(pixels.shape[0], pixels.shape[-2], -1).clone()
        first = int(evaluate_offset[0])
        for row, index in enumerate(range(first, first + pixels.shape[0])):
            if index in (0, 2):
                ramp[row] = 0.0 if index == 0 else 0.4
        evaluate_offset[0] += pixels.shape[0]
        return ramp

    evaluate_offset = [0]
    register_method("test-half-blank", "Half blank", passes=lambda channels, options: 0)(half_blank)
    try:
        run_evaluate(
            "--checkpoint", str(checkpoint), "--data", "shapes", "--images", "4", "--batch-size", "3",
            "--methods", "test-half-blank", "--metrics", "ad_ic", "--out", str(tmp_path),
        )  # fmt: skip
    finally:
        unregister_method("test-half-blank")
    rows = {row["method"]: row for row in read_rows(tmp_path / "evaluation.csv")}
    assert float(rows["test-half-blank"]["blank_maps"]) == 50.0
    per_image = [row for row in read_rows(tmp_path / "evaluation-per-image.csv") if row["method"] == "test-half-blank"]
    assert [float(row["blank_maps"]) for row in per_image] == [100.0, 0.0, 100.0, 0.0]
    markdown = (tmp_path / "evaluation.md").read_text()
    assert "Blank maps % ↓" in markdown and BLANK_LINE in markdown


BLANK_LINE = (
    "Blank maps: share of the maps that are constant (no pixel ranked above another: no positive evidence at the "
    "CAM's layer, zero gradients or a saturated classifier); their metrics are those of a map without information, "
    "and another target layer may give one (a manifest entry's target_layer)."
)


def test_the_setup_lists_every_measured_figure_with_its_settings() -> None:
    """The report's setup says how each figure was measured, with the settings of this run, and the accuracy."""
    settings = evaluation.EvaluationSettings(
        methods=("gradcam", "rise"),
        ad_ic_percents=(100, 25),
        road_percents=(20, 60),
        road_imputation="linear",
        method_options={"rise": {"num_masks": 8}},
        deletion_steps=7,
    )
    assert evaluation_report.setup_description(settings, 87.54, with_masks=True)[1:] == [
        "Every map explains the classifier's prediction (top-1 accuracy 87.5%).",
        "s / image: mean time to compute one map, without the forward pass that finds the prediction.",
        BLANK_LINE,
        "AD / IC: the top 100/25% of the map kept with its soft values; in percent.",
        "ROAD: area under the accuracy curve at 20%, 60% of the pixels removed (linear imputation), "
        "end points (0%, 1) and (100%, 0).",
        "Deletion / insertion: areas under the class-probability curves (7 steps; deleted pixels black, "
        "inserted onto the blurred image).",
        "Pointing game: maximum of the map on the object, in percent; with ±15/224: within 15 pixels of it at "
        "224x224 (Zhang et al.'s tolerance, scaled to the image size); energy-based pointing game (Energy PG): "
        "share of the map's mass on the object.",
        "RISE: 8 masks, 7x7 grid, p = 0.5.",
    ]


def test_the_setup_leaves_out_what_was_not_measured() -> None:
    """Without the pointing metric there is no pointing line, even on images with masks; no labels, no accuracy."""
    settings = evaluation.EvaluationSettings(methods=("gradcam",), metrics=("ad_ic",))
    assert evaluation_report.setup_description(settings, None, with_masks=True)[1:] == [
        "Every map explains the classifier's prediction.",
        "s / image: mean time to compute one map, without the forward pass that finds the prediction.",
        BLANK_LINE,
        "AD / IC: the top 100/50/15% of the map kept with its soft values; in percent.",
    ]


SIZES_RULE = "--images, --batch-size and --rise-masks must be >= 1"
ROAD_RULE = "--road-percents must increase within 1..99, got "
LABELS_RULE = "--labels labels a flat ImageNet val folder: it needs --data folder and --subset val or test"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--images", "0"), SIZES_RULE),
        (("--batch-size", "0"), SIZES_RULE),
        (("--rise-masks", "0"), SIZES_RULE),
        (("--deletion-steps", "0"), "--deletion-steps must be >= 1"),
        (("--threads", "0"), "--threads must be >= 1"),
        (("--ad-ic-percents", "50", "101"), "--ad-ic-percents must be in 1..100, got [50, 101]"),
        (("--road-percents", "0", "50"), ROAD_RULE + "[0, 50]"),
        (("--road-percents", "50", "100"), ROAD_RULE + "[50, 100]"),
        (("--road-percents", "10", "10"), ROAD_RULE + "[10, 10]"),
        (("--data", "folder"), "--data folder needs --images-root"),
        (("--labels", "labels.csv"), LABELS_RULE),
        (("--data", "folder", "--images-root", "val", "--subset", "all", "--labels", "labels.csv"), LABELS_RULE),
    ],
)
def test_out_of_range_options_are_refused_with_their_rule(
    options: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    """Refused before anything is loaded (--model names no manifest entry); the options override --data shapes."""
    with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
        run_evaluate("--model", "unchecked", "--data", "shapes", *options, "--out", str(tmp_path))


def recorded_thread_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The counts ``torch.set_num_threads`` is called with, recorded and not applied: a thread pool started
    in the test process would hang the processes mutmut forks from it."""
    counts: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    return counts


def test_the_smallest_valid_values_are_accepted(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_counts = recorded_thread_counts(monkeypatch)
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "1", "--batch-size", "1"),
        *("--methods", "rise", "--rise-masks", "1", "--metrics", "ad_ic", "road", "deletion_insertion"),
        *("--deletion-steps", "1", "--ad-ic-percents", "1", "100", "--road-percents", "1", "99"),
        *("--road-imputation", "telea", "--threads", "1", "--out", str(tmp_path)),
    )
    (row,) = read_rows(tmp_path / "evaluation.csv")
    assert row["images"] == "1" and {"ad_1", "ic_1", "ad_100", "road_morf_1", "road_lerf_99"} <= set(row)
    assert thread_counts == [1]


def test_one_deletion_step_scores_the_curves_end_points_only(checkpoint: Path, tmp_path: Path) -> None:
    """With --deletion-steps 1 the deletion curve is the image, then the all-black image, whatever the map: its area
    is the mean of the two class probabilities. The report states the steps and the accuracy on the shapes' labels,
    counted over both batches (3 + 1 images)."""
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "4", "--batch-size", "3"),
        *("--methods", "gradcam", "ptame", "--metrics", "deletion_insertion", "--deletion-steps", "1"),
        *("--out", str(tmp_path)),
    )
    model = load_model(ModelEntry.from_folder(checkpoint))
    samples = [shapes_sample(index, "test", SIZE) for index in range(4)]
    pixels = torch.stack([sample.pixels for sample in samples])
    with torch.no_grad():
        image = torch.softmax(model.backbone.logits(pixels), dim=1)
        classes = image.argmax(dim=1, keepdim=True)
        black = torch.softmax(model.backbone.logits(torch.zeros_like(pixels)), dim=1)
    expected = ((image.gather(1, classes) + black.gather(1, classes)) / 2).mean().item()
    for row in read_rows(tmp_path / "evaluation.csv"):
        assert set(row) == {"method", "images", "seconds_per_image", "deletion_auc", "insertion_auc", "blank_maps"}
        assert float(row["deletion_auc"]) == pytest.approx(expected, rel=1e-4), row["method"]
    accuracy = 100 * sum(int(predicted) == sample.label for predicted, sample in zip(classes[:, 0], samples)) / 4
    markdown = (tmp_path / "evaluation.md").read_text(encoding="utf-8")
    assert f" (top-1 accuracy {accuracy:.1f}%)." in markdown and " (1 steps; " in markdown


def test_the_seed_draws_rises_masks(checkpoint: Path, tmp_path: Path) -> None:
    """Another --seed gives RISE other masks, so other figures; the same seed gives the same figures again."""

    def rise_figures(seed: int, out: Path) -> dict[str, str]:
        run_evaluate(
            *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "1", "--methods", "rise"),
            *("--rise-masks", "8", "--metrics", "ad_ic", "--seed", str(seed), "--out", str(out)),
        )
        (row,) = read_rows(out / "evaluation.csv")
        return {key: value for key, value in row.items() if key != "seconds_per_image"}

    first = rise_figures(1, tmp_path / "first")
    assert rise_figures(1, tmp_path / "again") == first
    assert rise_figures(0, tmp_path / "other") != first


def test_threads_device_and_batch_size_reach_the_computation(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[object] = []

    def recording_load_model(entry: ModelEntry, *args: object, **kwargs: object) -> object:
        devices.append(args[0] if args else kwargs.get("device"))
        return load_model(entry, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load_model", recording_load_model)
    batch_sizes = record_batch_sizes(monkeypatch)
    thread_counts = recorded_thread_counts(monkeypatch)
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "3", "--batch-size", "2"),
        *("--methods", "gradcam", "--metrics", "ad_ic", "--threads", "3", "--device", "cpu"),
        *("--out", str(tmp_path)),
    )
    assert devices == ["cpu"] and batch_sizes == [2, 1] and thread_counts == [3]


def test_a_model_is_chosen_by_its_key_in_the_manifest(checkpoint: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        f'[[models]]\nkey = "tiny"\ndisplay_name = "Tiny"\nclassifier = "local-dir:{checkpoint / "classifier"}"\n'
        f'explainer = "{checkpoint / "explainer"}"\n',
        encoding="utf-8",
    )
    options = ["--manifest", str(manifest), "--data", "shapes", "--images", "1", "--methods", "ptame"]
    unknown = f"no model 'nope' in {manifest}; known: ['tiny']"
    with pytest.raises(SystemExit, match=f"^{re.escape(unknown)}$"):
        run_evaluate("--model", "nope", *options, "--out", str(tmp_path / "out"))
    run_evaluate("--model", "tiny", *options, "--metrics", "ad_ic", "--out", str(tmp_path / "out"))
    markdown = (tmp_path / "out" / "evaluation.md").read_text(encoding="utf-8")
    assert f"Classifier `local-dir:{checkpoint / 'classifier'}`, explainer `{checkpoint / 'explainer'}`;" in markdown


def test_the_papers_subset_is_read_with_the_labels_and_a_cut_of_it_is_reported(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data folder on a flat val with --labels and the default --subset test. The subset's reader is stubbed (the
    real one needs all 50,000 val images): it must get the labels; the protocol line names a cut of the subset, and
    nothing when all of it ran."""
    subset = [shapes_file(tmp_path / "val", index) for index in range(2)]
    calls: list[tuple[Path, str, Path | None]] = []

    def two_image_subset(root: Path, name: str, labels: Path | None = None) -> list[Path]:
        calls.append((root, name, labels))
        return subset

    monkeypatch.setattr(evaluate, "paper_subset", two_image_subset)
    options = ["--checkpoint", str(checkpoint), "--data", "folder", "--images-root", str(tmp_path / "val")]
    options += ["--labels", str(tmp_path / "labels.csv"), "--methods", "gradcam", "--metrics", "ad_ic"]
    run_evaluate(*options, "--out", str(tmp_path / "whole"))
    run_evaluate(*options, "--images", "1", "--out", str(tmp_path / "cut"))
    assert calls == [(tmp_path / "val", "test", tmp_path / "labels.csv")] * 2
    whole = (tmp_path / "whole" / "evaluation.md").read_text(encoding="utf-8")
    assert f"; 2 images of {tmp_path / 'val'} (the paper's test subset); device cpu." in whole
    assert "- Protocol: the P-TAME paper's (ImageNet val's test subset of 2000 images, " in whole
    assert "except" not in whole
    cut = (tmp_path / "cut" / "evaluation.md").read_text(encoding="utf-8")
    assert f"; 1 images of {tmp_path / 'val'} (the paper's test subset, the first ones); device cpu." in cut
    assert "masks) except: the first 1 of the 2 images.\n" in cut


def test_pointing_games_on_hand_made_maps(checkpoint: Path) -> None:
    """Masks of a 6x6 object at rows and columns 10..15 of 32x32 images; ±15/224 at 32 px is round(2.14) = 2 px.
    Image 0: peak 2 px right of the object (a tolerant hit only), a 0.5 inside: energy 0.5 / 1.5. Image 1: peak
    inside, a 0.25 outside: energy 1 / 1.25. Images without masks (a folder) get no pointing figures."""
    model = load_model(ModelEntry.from_folder(checkpoint))
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 10:16, 10:16] = True
    maps = torch.zeros(2, SIZE, SIZE)
    maps[0, 12, 17], maps[0, 12, 12] = 1.0, 0.5
    maps[1, 11, 11], maps[1, 0, 0] = 1.0, 0.25
    pixels, classes = torch.rand(2, 3, SIZE, SIZE), torch.zeros(2, dtype=torch.int64)
    settings = evaluation.EvaluationSettings(methods=("gradcam",), metrics=("pointing",))
    totals = evaluation.MethodTotals(seconds=1.0, images=2)
    evaluation.score_batch(totals, model.backbone, pixels, maps, classes, masks, settings)
    assert totals.means() == pytest.approx(
        {
            "images": 2.0,
            "seconds_per_image": 0.5,
            "pointing_game": 50.0,
            "pointing_game_tolerant": 100.0,
            "energy_pointing_game": (0.5 / 1.5 + 1 / 1.25) / 2,
        }
    )
    without_masks = evaluation.MethodTotals(seconds=1.0, images=2)
    evaluation.score_batch(without_masks, model.backbone, pixels, maps, classes, None, settings)
    assert without_masks.means() == {"images": 2.0, "seconds_per_image": 0.5}


class BrightnessClassifier:
    """Two classes, logits (-m, m) of the mean pixel m: a darker image looks more like class 0."""

    class_names = ("dark", "bright")

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean(dim=(1, 2, 3))
        return torch.stack([-mean, mean], dim=1)


def test_ad_and_ic_are_in_percent_and_road_gets_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two grey (0.8) images, maps of 0.5 everywhere: AD/IC at 100% halves the mean pixel to 0.4. Class 0 ("dark")
    gains: IC for that image, no drop; class 1 loses sigmoid(1.6) - sigmoid(0.8) of sigmoid(1.6). ROAD is called
    with the settings' seed (its noise)."""
    model = SimpleNamespace(backbone=BrightnessClassifier())
    pixels, maps, classes = torch.full((2, 3, 8, 8), 0.8), torch.full((2, 8, 8), 0.5), torch.tensor([0, 1])
    seeds: list[object] = []
    real_road = evaluation.road

    def recording_road(*args: object, **kwargs: object) -> object:
        seeds.append(inspect.signature(real_road).bind(*args, **kwargs).arguments.get("seed", "the default"))
        return real_road(*args, **kwargs)

    monkeypatch.setattr(evaluation, "road", recording_road)
    settings = evaluation.EvaluationSettings(
        methods=("gradcam",), metrics=("ad_ic", "road"), ad_ic_percents=(100,), road_imputation="linear", seed=3
    )
    totals = evaluation.MethodTotals()
    evaluation.score_batch(totals, model.backbone, pixels, maps, classes, None, settings)
    figures = totals.means()

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    drop = (sigmoid(1.6) - sigmoid(0.8)) / sigmoid(1.6) * 100
    assert figures["ad_100"] == pytest.approx(drop / 2, rel=1e-5) and figures["ic_100"] == pytest.approx(50.0)
    assert seeds == [3]


def test_seconds_per_image_is_the_map_time_over_the_images(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that ticks 1 s per reading: each map computation (one per method and batch) takes 1 s, so two batches
    of 3 images make 2/3 s per image, one image alone 1 s."""
    ticks = itertools.count()
    monkeypatch.setattr(evaluation, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    model = load_model(ModelEntry.from_folder(checkpoint))
    pixels = torch.stack([shapes_sample(index, "test", SIZE).pixels for index in range(3)])
    settings = evaluation.EvaluationSettings(methods=("gradcam", "gradcam++"), metrics=())
    cpu = torch.device("cpu")
    rows, _ = evaluation.evaluate(
        model.backbone, model.explainer, iter([(pixels[:2], None, None), (pixels[2:], None, None)]), settings, cpu
    )
    assert [row["seconds_per_image"] for row in rows] == pytest.approx([2 / 3, 2 / 3])
    rows, _ = evaluation.evaluate(model.backbone, model.explainer, iter([(pixels[:1], None, None)]), settings, cpu)
    assert [row["seconds_per_image"] for row in rows] == pytest.approx([1.0, 1.0])


def test_evaluate_refuses_unknown_methods_and_metrics() -> None:
    settings = evaluation.EvaluationSettings(methods=("gradcam", "lime"), metrics=("ad_ic", "accuracy"))
    with pytest.raises(ValueError, match=re.escape("unknown methods or metrics ['lime', 'accuracy']; methods: (")):
        evaluation.evaluate(None, None, iter([]), settings, torch.device("cpu"))  # type: ignore[arg-type]  # refused first


# Several processes (torchrun): whole batches per process, per-image values gathered on rank 0.


def test_processes_take_whole_batches_in_turn_and_every_image_once() -> None:
    assert distributed.batch_ranges(7, 2) == [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]
    assert distributed.batches_of_rank(7, 2, 0, 2) == [range(0, 2), range(4, 6)]
    assert distributed.batches_of_rank(7, 2, 1, 2) == [range(2, 4), range(6, 7)]
    assert distributed.batches_of_rank(3, 4, 1, 2) == []  # more processes than batches: nothing to do
    for count, batch_size, world_size in ((10, 3, 3), (5, 5, 2), (0, 2, 2), (13, 1, 4)):
        shares = [distributed.batches_of_rank(count, batch_size, rank, world_size) for rank in range(world_size)]
        images = sorted(index for share in shares for batch in share for index in batch)
        assert images == list(range(count))
        assert sorted((b for share in shares for b in share), key=lambda b: b.start) == distributed.batch_ranges(
            count, batch_size
        )
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        distributed.batches_of_rank(4, 2, 2, 2)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        distributed.batch_ranges(4, 0)


def tally_of(indices: list[int], seconds: float, correct: int = 0) -> evaluation.Tally:
    """A one-method tally whose per-image figure is 10 x the image's index (and 1 more in a second figure)."""
    totals = evaluation.MethodTotals(seconds=seconds, images=len(indices))
    totals.add("ad_100", torch.tensor([10.0 * index for index in indices]))
    totals.add("deletion_auc", torch.tensor([10.0 * index + 1 for index in indices]))
    return evaluation.Tally({"gradcam": totals}, correct, len(indices), torch.tensor(indices))


def test_merged_parts_hold_every_image_in_order_as_one_process_would() -> None:
    merged = evaluation.merge_tallies([tally_of([0, 1, 4], 3.0, correct=2), tally_of([2, 3], 1.0, correct=1)])
    assert merged.indices.tolist() == [0, 1, 2, 3, 4]
    values = merged.totals["gradcam"].per_image()
    assert values["ad_100"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert values["deletion_auc"].tolist() == [1.0, 11.0, 21.0, 31.0, 41.0]
    assert merged.rows() == [
        {"method": "gradcam", "images": 5.0, "seconds_per_image": 0.8, "ad_100": 20.0, "deletion_auc": 21.0}
    ]
    assert merged.accuracy() == 60.0
    assert evaluation.merge_tallies([tally_of([0, 1, 2, 3, 4], 4.0)]).rows()[0]["ad_100"] == 20.0
    with pytest.raises(ValueError, match="overlap"):
        evaluation.merge_tallies([tally_of([0, 1], 1.0), tally_of([1, 2], 1.0)])
    with pytest.raises(ValueError, match="which images"):
        evaluation.merge_tallies([evaluation.Tally({})])
    partial = tally_of([2], 1.0)
    del partial.totals["gradcam"].values["deletion_auc"]
    with pytest.raises(ValueError, match="gradcam's deletion_auc was measured on 2 of 3 images"):
        evaluation.merge_tallies([tally_of([0, 1], 1.0), partial])


def test_the_cost_is_counted_from_the_registry_and_the_metrics() -> None:
    """The paper's protocol on a ResNet-50 (2048 channels in its last stage): Score-CAM and Ablation-CAM 2049
    passes, RISE 8000; AD/IC 1 + 3, ROAD 2 x 4, deletion/insertion 2 x 51 passes per method's map."""
    settings = evaluation.EvaluationSettings()
    assert evaluation_report.metric_passes(settings) == 114
    assert evaluation_report.metric_passes(evaluation.EvaluationSettings(metrics=("pointing",))) == 0
    assert evaluation_report.map_passes(settings, 2048) == {
        "ptame": 0, "gradcam": 2, "gradcam++": 2, "scorecam": 2049, "ablationcam": 2049, "rise": 8000,
    }  # fmt: skip
    lines = evaluation_report.cost_lines(settings, 2048, 2000, 2, 0.01, "cuda")
    assert lines == [
        "Expected cost in classifier passes per image (map + metrics): prediction 1; P-TAME 0 + 114; Grad-CAM 2 + 114; "
        "Grad-CAM++ 2 + 114; Score-CAM 2049 + 114; Ablation-CAM 2049 + 114; RISE 8000 + 114. In all 12,787 per image, "
        "25,574,000 for the 2000 images.",
        "At 10.0 ms per image and pass (one timed batch on cuda): about 3.0 days; 2 processes: about 35.5 h each.",
    ]
    assert [evaluation_report.duration(s) for s in (0.42, 42, 90, 7200, 86400, 3 * 86400)] == [
        "0.4 s", "42 s", "1.5 min", "2.0 h", "24.0 h", "3.0 days",
    ]  # fmt: skip


def test_the_first_images_give_the_estimate_of_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([100.0, 130.0])  # started at 100 s; the first 3 images done at 130 s
    monkeypatch.setattr(evaluation_report, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    lines: list[str] = []
    estimate = evaluation_report.FirstImagesEstimate(12, lines.append, after=2)
    estimate(3)
    estimate(3)  # said once only
    assert lines == ["The first 3 images took 30 s: about 1.5 min more for the other 9 of this process."]


def test_a_dry_run_prints_the_cost_and_evaluates_nothing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_evaluate(
        *("--checkpoint", str(checkpoint), "--data", "shapes", "--images", "40", "--methods", "gradcam", "rise"),
        *("--rise-masks", "100", "--metrics", "ad_ic", "--dry-run", "--out", str(tmp_path / "out")),
    )
    printed = capsys.readouterr()
    assert printed.out == "" and not (tmp_path / "out").exists()
    assert printed.err.startswith(
        "Expected cost in classifier passes per image (map + metrics): prediction 1; Grad-CAM 2 + 4; RISE 100 + 4. "
        "In all 111 per image, 4,440 for the 40 images.\nAt "
    )
    assert " ms per image and pass (one timed batch on cpu): about " in printed.err


def test_amp_computes_under_bf16_autocast_and_the_report_says_so(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    autocast: list[tuple[bool, torch.dtype]] = []
    real_ad_ic = evaluation.ad_ic

    def recording_ad_ic(*args: object, **kwargs: object) -> object:
        autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_ad_ic(*args, **kwargs)

    monkeypatch.setattr(evaluation, "ad_ic", recording_ad_ic)
    options = ["--checkpoint", str(checkpoint), "--data", "shapes", "--images", "3", "--batch-size", "2"]
    options += ["--methods", "gradcam", "ptame", "--metrics", "ad_ic"]
    run_evaluate(*options, "--amp", "--out", str(tmp_path / "amp"))
    assert autocast == [(True, torch.bfloat16)] * 4  # 2 methods x 2 batches
    assert "; device cpu, bf16 autocast.\n" in (tmp_path / "amp" / "evaluation.md").read_text(encoding="utf-8")
    autocast.clear()
    run_evaluate(*options, "--out", str(tmp_path / "fp32"))
    assert [enabled for enabled, _ in autocast] == [False] * 4
    assert "; device cpu.\n" in (tmp_path / "fp32" / "evaluation.md").read_text(encoding="utf-8")
    amp_rows, fp32_rows = (
        read_rows(tmp_path / "amp" / "evaluation.csv"),
        read_rows(tmp_path / "fp32" / "evaluation.csv"),
    )
    assert [row["method"] for row in amp_rows] == ["gradcam", "ptame"]
    assert all(0 <= float(row["ad_100"]) <= 100 for row in amp_rows)
    assert any(a["ad_100"] != b["ad_100"] for a, b in zip(amp_rows, fp32_rows))  # bf16 rounds otherwise


def _evaluate_as_rank(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One torchrun-like process: the environment torchrun sets, one thread, then the command."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    run_evaluate(*argv)


def without_seconds(path: Path) -> list[list[str]]:
    """A CSV's rows without its seconds_per_image column (wall time differs from run to run)."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    keep = [index for index, column in enumerate(rows[0]) if column != "seconds_per_image"]
    return [[row[index] for index in keep] for row in rows]


def table_without_seconds(path: Path) -> list[str]:
    """An evaluation.md's setup lines after the first (which names the processes) and its table, without the
    s / image column."""
    lines = path.read_text(encoding="utf-8").splitlines()
    setup = [line for line in lines[3:] if line.startswith("- ")]
    table = [line.split(" | ") for line in lines if line.startswith("| ")]
    assert table and table[0][1] == "s / image"
    return setup + [" | ".join(cells[:1] + cells[2:]) for cells in table]


@pytest.mark.slow
def test_two_processes_evaluate_as_one_process(tmp_path: Path) -> None:
    """The trained shapes demo, 5 images in batches of 2, every method and metric: two Gloo processes (the first
    gets batches 0 and 2, the second batch 1) against one. Each image is evaluated in the same batch either way, so
    every per-image value is the same bit for bit, and so is the table, but for the wall times."""
    argv = ["--checkpoint", str(ROOT / "checkpoints" / "shapes"), "--data", "shapes", "--images", "5"]
    argv += ["--batch-size", "2", "--rise-masks", "16", "--deletion-steps", "4", "--device", "cpu"]
    two = tmp_path / "two"
    torch.multiprocessing.spawn(
        _evaluate_as_rank, args=(2, free_port(), [*argv, "--out", str(two)]), nprocs=2, join=True
    )
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process: the same summation order
    try:
        run_evaluate(*argv, "--out", str(one))
    finally:
        torch.set_num_threads(threads)
    per_image = (one / "evaluation-per-image.csv").read_text(encoding="utf-8")
    assert per_image.count("\ntest/") == 5 * 6 and "\ntest/4,rise," in per_image
    assert (two / "evaluation-per-image.csv").read_text(encoding="utf-8") == per_image
    assert without_seconds(two / "evaluation.csv") == without_seconds(one / "evaluation.csv")
    assert table_without_seconds(two / "evaluation.md") == table_without_seconds(one / "evaluation.md")
    first = (two / "evaluation.md").read_text(encoding="utf-8").splitlines()[2]
    assert first.endswith("first 5 images at 128 px; device cpu, 2 processes.")
