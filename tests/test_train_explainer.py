"""python -m train explainer: any classifier, a folder of images, the default recipe, the verdict."""

import csv
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from ptame import PTAME, Preprocessing, TrainSettings, create_backbone
from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry, load_manifest
from tests.conftest import make_image_tree, run_command, save_timm_checkpoint, with_class_agnostic_rows
from train import recipes
from train.commands import explainer as command
from train.data import image_files
from train.shards import pack_folder
from train.verdict import COLUMNS, verdict_sentence, what_to_try, wins

RUN = ["--batch-size", "4", "--steps", "4", "--held-out", "4", "--workers", "0", "--log-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 5-class classifier and an auxiliary network in timm's folder format, at 32x32."""
    torch.manual_seed(3)
    classifier = timm.create_model("test_resnet", num_classes=5)
    classifier.pretrained_cfg = {**classifier.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 0.8}
    auxiliary = timm.create_model("test_resnet")
    auxiliary.pretrained_cfg = {**auxiliary.pretrained_cfg, "mean": (0.25, 0.5, 0.75), "std": (0.5, 0.25, 0.125)}
    return (
        save_timm_checkpoint(classifier, tmp_path_factory.mktemp("classifier")),
        save_timm_checkpoint(auxiliary, tmp_path_factory.mktemp("auxiliary")),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("images"), classes=2, per_class=12)  # 24 unlabelled images


def train_run(local_models: tuple[Path, Path], data: Path, out: Path, *extra: str) -> None:
    classifier, auxiliary = local_models
    argv = [
        "--classifier", f"local-dir:{classifier}", "--auxiliary", f"local-dir:{auxiliary}",
        "--data", str(data), "--out", str(out), *RUN, *extra,
    ]  # fmt: skip
    run_command(command, argv)


def rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's verdict.csv."""
    with (run / "verdict.csv").open() as handle:
        return list(csv.DictReader(handle))


def figures(run: Path) -> list[dict[str, str]]:
    """The verdict's figures, without the time per image."""
    return [{key: value for key, value in row.items() if key != "seconds_per_image"} for row in rows(run)]


@pytest.fixture(scope="module")
def finished(local_models: tuple[Path, Path], data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mine"
    train_run(local_models, data, out)
    return out


def test_a_run_writes_a_self_contained_folder_with_its_verdict(finished: Path, local_models: tuple[Path, Path]) -> None:
    for part, source in zip(("classifier", "auxiliary"), local_models):
        assert (finished / part / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    config = json.loads((finished / "explainer" / "config.json").read_text())
    assert config["auxiliary"] == "local-dir:../auxiliary"
    assert config["auxiliary_mean"] == [0.25, 0.5, 0.75] and config["auxiliary_std"] == [0.5, 0.25, 0.125]
    run = json.loads((finished / "run.json").read_text())
    assert run["command"] == "explainer" and run["num_images"] == 20 and run["held_out"] == 4
    assert run["transform"] == {"resize": 40, "crop": 32, "interpolation": "bilinear"}
    assert run["recipe"]["lr"] == 1e-3 and run["recipe"]["zero_fuser_start"] is True

    verdict_rows = rows(finished)
    assert [row["method"] for row in verdict_rows] == ["ptame", "gradcam"]
    assert all(row["images"] == "4" for row in verdict_rows)
    for key, _, _, _ in COLUMNS:
        assert all(row[key] != "" for row in verdict_rows), key
    verdict = (finished / "verdict.md").read_text()
    assert verdict.startswith("## Verdict: P-TAME against Grad-CAM") and "On 4 held-out images" in verdict
    card = (finished / "explainer" / "README.md").read_text()
    assert "## Verdict: P-TAME against Grad-CAM" in card and "python -m train explainer --classifier" in card
    manifest = tomllib.loads((finished / "manifest.toml").read_text())
    assert manifest["models"][0]["classifier"] == "local-dir:classifier"


def test_the_run_folder_opens_in_the_apps_loader_without_the_original_files(finished: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    finished.rename(moved)  # the run no longer depends on where the classifier and auxiliary came from
    try:
        loaded = load_model(ModelEntry.from_folder(moved))
        assert loaded.has_explainer and loaded.explainer.num_classes == len(loaded.backbone.class_names) == 5
        pixels = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            maps = loaded.explainer.explain(pixels, loaded.backbone.logits(pixels).argmax(dim=1))
        assert maps.shape == (2, 32, 32) and 0 <= maps.min() <= maps.max() <= 1
        trained = load_file(str(moved / "checkpoint.safetensors"))
        expected = with_class_agnostic_rows(trained["head.fuser.weight"], loaded.explainer.trained_images)
        assert torch.equal(loaded.explainer.head.fuser.weight, expected)
    finally:
        moved.rename(finished)


def test_auxiliary_size_is_kept_by_the_explainer_its_card_and_its_command(
    local_models: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "upsized"
    train_run(local_models, data, out, "--auxiliary-size", "48")
    assert json.loads((out / "explainer" / "config.json").read_text())["auxiliary_size"] == 48
    explainer = PTAME.from_pretrained(out / "explainer")
    assert explainer.auxiliary_input(torch.rand(1, 3, 32, 32)).shape == (1, 3, 48, 48)
    card = (out / "explainer" / "README.md").read_text()
    assert "fed the images resized to 48 px (shorter side)" in card and "--auxiliary-size 48" in card


def test_stopping_and_resuming_gives_the_uninterrupted_result(
    local_models: tuple[Path, Path], data: Path, finished: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    train_run(local_models, data, out, "--stop-after", "2")
    assert not (out / "explainer").exists() and not (out / "verdict.md").exists()
    train_run(local_models, data, out, "--resume")
    assert_same_heads(out, finished)  # the counts of the steps before the stop included
    assert figures(out) == figures(finished)


def assert_same_heads(run: Path, reference: Path) -> None:
    """The explainers of two runs hold the same tensors and the same training images per class."""
    got = load_file(str(run / "explainer" / "model.safetensors"))
    want = load_file(str(reference / "explainer" / "model.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    counts = [
        json.loads((folder / "explainer" / "config.json").read_text())["trained_images"] for folder in (run, reference)
    ]
    assert counts[0] == counts[1] and sum(counts[0]) > 0


def test_the_held_out_images_are_never_trained_on(data: Path) -> None:
    files = sorted(data.rglob("*.*"))
    train, held_out = command.split_files(files, 4, seed=12345)
    assert len(held_out) == 4 and not set(train) & set(held_out) and sorted(train + held_out) == files
    assert command.split_files(files, 4, seed=12345) == (train, held_out)
    assert command.split_files(files, 4, seed=1)[1] != held_out
    assert command.held_out_count(24, None) == 2 and command.held_out_count(100_000, None) == 500
    with pytest.raises(SystemExit, match="leaves none"):
        command.held_out_count(24, 24)


def test_the_python_api_without_settings_trains_with_the_commands_recipe() -> None:
    recipe = recipes.recipe_for("local-dir:anything")
    assert recipe.settings(channels_last=False) == TrainSettings()
    assert recipe.total_steps(3200) == 800 and recipe.total_steps(64_000) == 2000
    paper = recipes.recipe_for("resnet50")
    assert paper.settings().zero_fuser_start is False and paper.lr == 1e-4 and paper.total_steps(3200) == 100
    assert recipes.recipe_for("convnext_tiny", paper_schedule=True).lr == 1e-4


def test_verdict_counts_lower_ad_and_deletion_and_higher_ic_and_insertion_as_wins() -> None:
    ptame = {"method": "ptame", "ad_100": 10.0, "ic_100": 30.0, "ad_50": 20.0, "ic_50": 10.0, "ad_15": 5.0,
             "ic_15": 40.0, "deletion_auc": 0.2, "insertion_auc": 0.5}  # fmt: skip
    gradcam = {"method": "gradcam", "ad_100": 20.0, "ic_100": 20.0, "ad_50": 10.0, "ic_50": 20.0, "ad_15": 6.0,
               "ic_15": 30.0, "deletion_auc": 0.3, "insertion_auc": 0.6}  # fmt: skip
    won = wins([ptame, gradcam])
    assert won == {"ad_100": True, "ic_100": True, "ad_50": False, "ic_50": False, "ad_15": True, "ic_15": True,
                   "deletion_auc": True, "insertion_auc": False}  # fmt: skip
    lost = verdict_sentence(won, ["train longer: `--steps 1600`"])
    assert lost.startswith("**P-TAME is ahead of Grad-CAM on 5 of 8 figures, but not on Insertion.**")
    assert lost.endswith("\n- train longer: `--steps 1600`")
    ahead = verdict_sentence(wins([ptame, {**gradcam, "insertion_auc": 0.4}]))
    headline = "AD 100%, IC 100%, Deletion and Insertion included"
    assert ahead == f"**P-TAME is ahead of Grad-CAM on 6 of 8 figures, {headline}.**"
    for figure, worse in (("ad_100", 25.0), ("ic_100", 15.0), ("deletion_auc", 0.35)):
        assert "but not on" in verdict_sentence(wins([{**ptame, "insertion_auc": 0.7, figure: worse}, gradcam]))


def test_after_a_loss_the_verdict_names_the_flag_values_to_try() -> None:
    paper = recipes.recipe_for("convnext_tiny", paper_schedule=True)
    tries = what_to_try(paper, 800, 96)
    assert tries[0].startswith(
        "the default recipe's values, `--lr 0.001 --weight-decay 0.0001 --zero-fuser-start --ce 1`"
    )
    assert tries[1].startswith("`--area 1` (half this run's)")
    assert tries[2] == "train longer: `--steps 1600` (twice this run's)"
    assert tries[3].startswith("`--auxiliary-size 192`: the auxiliary network sees the images at twice the size (96 px")
    assert tries[4].startswith("an auxiliary network whose features fit this domain")
    default = recipes.recipe_for("local-dir:mine")
    assert [text.split(":")[0] for text in what_to_try(default, 500, 224)] == [
        "`--area 1` (half this run's)",
        "train longer",
        "an auxiliary network whose features fit this domain (`--auxiliary`; docs/own-classifier.md)",
    ]
    upsized = dataclasses.replace(default, auxiliary_size=192)
    assert not any("--auxiliary-size" in text for text in what_to_try(upsized, 800, 96))
    assert "`--auxiliary-size 256`" in what_to_try(dataclasses.replace(default, auxiliary_size=128), 800, 96)[2]
    old_default = dataclasses.replace(default, loss=dataclasses.replace(default.loss, area=4.0))
    assert what_to_try(old_default, 800, 224)[0].startswith("the default recipe's values, `--area 2`")


def build_user_classifier() -> tuple[torch.nn.Module, Preprocessing]:
    """A user's own classifier, as ``MODULE:FUNCTION`` names it: 4 classes, 24x24 inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    )
    return model, Preprocessing(resize=28, crop=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def not_a_classifier() -> str:
    return "a string"


def test_a_users_module_function_is_a_classifier_spec(data: Path, tmp_path: Path) -> None:
    backbone = create_backbone("tests.test_train_explainer:build_user_classifier")
    assert len(backbone.class_names) == 4 and backbone.preprocessing.crop == 24
    # the probe's layer: the last spatial one with a gradient, after the last convolution's activation
    assert backbone.target_layer is backbone.model[3] and backbone.target_layer_name == "3"
    assert not any(parameter.requires_grad for parameter in backbone.model.parameters())
    with pytest.raises(ValueError, match="cannot import 'tests.nowhere'"):
        create_backbone("tests.nowhere:build")
    with pytest.raises(ValueError, match="has no function 'missing'"):
        create_backbone("tests.test_train_explainer:missing")
    with pytest.raises(ValueError, match="must return a ptame.Backbone or"):
        create_backbone("tests.test_train_explainer:not_a_classifier")

    out = tmp_path / "user"
    argv = ["--classifier", "tests.test_train_explainer:build_user_classifier", "--auxiliary", "test_resnet",
            "--no-pretrained", "--data", str(data), "--out", str(out), "--target-layer", "2", *RUN]  # fmt: skip
    run_command(command, argv)
    assert not (out / "classifier").exists() and (out / "verdict.md").is_file()
    (entry,) = load_manifest(out / "manifest.toml")
    assert entry.target_layer == "2"  # the app explains with the layer the verdict used
    run = json.loads((out / "run.json").read_text())
    assert run["transform"]["crop"] == 24 and run["transform"]["resize"] == 28
    assert PTAME.from_pretrained(out / "explainer").num_classes == 4


def test_shards_of_the_folders_images_train_the_same_weights_and_verdict(
    local_models: tuple[Path, Path], data: Path, finished: Path, tmp_path: Path
) -> None:
    """The folder's 24 images written in its order into webdataset shards of 5: one reader whose shuffle window
    holds them all reads the folder's global batches, with the same held-out images, augmentations and verdict."""
    pack_folder(image_files(data / "train"), data / "train", tmp_path / "shards", per_shard=5)
    out = tmp_path / "from-shards"
    train_run(local_models, data, out, "--data", f"{tmp_path}/shards/train-{{0000..0004}}.tar")
    # the same global batches: the same targets, so the same counts of training images per class
    assert_same_heads(out, finished)
    assert figures(out) == figures(finished)
    run = json.loads((out / "run.json").read_text())
    assert run["num_images"] == 20 and run["held_out"] == 4 and run["data"].endswith("train-{0000..0004}.tar")
    assert run["shards"] == {"count": 5, "readers": 1, "window": 4096}


def test_shards_too_few_for_the_readers_are_a_clear_error(
    local_models: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    pack_folder(image_files(data / "train"), data / "train", tmp_path / "shards", per_shard=12)
    spec = f"{tmp_path}/shards/train-{{0000..0001}}.tar"
    with pytest.raises(SystemExit, match="cannot feed 1 process.* x 3 reader.*use fewer --workers"):
        train_run(local_models, data, tmp_path / "out", "--data", spec, "--workers", "3")


def test_threads_set_torchs_thread_count_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads N reaches torch before the run starts; without it torch keeps its own choice; 0 is refused."""
    import argparse

    calls: list[int] = []
    monkeypatch.setattr(command.torch, "set_num_threads", calls.append)
    monkeypatch.setattr(command, "train", lambda *args: calls.append(-1))  # the run itself: nothing to train
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    required = ["--classifier", "resnet18", "--data", "images", "--out", "run"]
    command.run(parser.parse_args([*required, "--threads", "1"]))
    assert calls == [1, -1]
    calls.clear()
    command.run(parser.parse_args(required))
    assert calls == [-1]
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--threads", "0"])
