import tomllib
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image

from ptame.serving.loader import load_model
from ptame.serving.manifest import ModelEntry
from tests.conftest import make_image_tree, run_command, save_timm_checkpoint, train_tiny
from train import cards
from train.commands import publish


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A classifier and an auxiliary network in timm's folder format: "pretrained" offline."""
    torch.manual_seed(7)
    classifier = save_timm_checkpoint(timm.create_model("test_resnet", num_classes=5), tmp_path_factory.mktemp("cls"))
    auxiliary = save_timm_checkpoint(timm.create_model("test_resnet"), tmp_path_factory.mktemp("aux"))
    return f"local-dir:{classifier}", f"local-dir:{auxiliary}"


@pytest.fixture(scope="module")
def finished_run(local_models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    classifier, auxiliary = local_models
    data = make_image_tree(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs") / "local"
    train_tiny(data, out, "--backbone", classifier, "--auxiliary", auxiliary, "--pretrained")
    (out / "evaluation.md").write_text("| method | AD 100% |\n|---|---|\n| P-TAME | 12.34 |\n")
    (out / "evaluation.csv").write_text(
        "method,images,ad_100,ic_100,road_morf_auc,pointing_game\nptame,20,12.34,40,0.25,\ngradcam,20,56.7,5,0.3,\n"
    )
    (out / "verdict.csv").write_text("method,images,ad_100,deletion_auc\nptame,2,3.5,0.125\ngradcam,2,9.5,0.5\n")
    return out


def publish_dry_run(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, dict[str, object]]:
    run_command(publish, [str(run), "--repo-id", "someone/ptame-test", "--dry-run", *extra])
    manifest = tomllib.loads(capsys.readouterr().out)
    return run / "publish", manifest


def test_dry_run_writes_the_repo_folder_and_the_manifest_entry(
    finished_run: Path, local_models: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, manifest = publish_dry_run(finished_run, capsys, "--key", "tiny", "--display-name", "Tiny net")
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).read_bytes() == (finished_run / "explainer" / name).read_bytes()
    assert manifest == {
        "models": [
            {
                "key": "tiny",
                "display_name": "Tiny net",
                "classifier": local_models[0],
                "explainer": "someone/ptame-test",
            }
        ]
    }
    card = (folder / "README.md").read_text()
    metadata = ModelCard.load(folder / "README.md").data
    assert metadata.library_name == "ptame" and metadata.license == "apache-2.0"
    assert metadata.datasets == ["ILSVRC/imagenet-1k"]  # python -m train imagenet
    assert metadata.base_model is None  # a local-dir classifier has no Hub id
    assert metadata.model_name == "P-TAME explainer for " + local_models[0]
    figures = {(r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in metadata.eval_results}
    assert figures == {
        ("ILSVRC/imagenet-1k", "validation", "ad_100"): 12.34,
        ("ILSVRC/imagenet-1k", "validation", "ic_100"): 40.0,
        ("ILSVRC/imagenet-1k", "validation", "road_morf_auc"): 0.25,
        ("imagefolder", "held-out", "ad_100"): 3.5,
        ("imagefolder", "held-out", "deletion_auc"): 0.125,
    }  # P-TAME's figures only, empty cells left out
    assert {r.task_type for r in metadata.eval_results} == {"image-classification"}
    assert f"`{local_models[0]}`" in card and f"`{local_models[1]}`" in card
    assert "| P-TAME | 12.34 |" in card
    assert "PTAME.from_pretrained('someone/ptame-test')" in card
    assert "--resize 40 --crop 32" in card and "| global batch | 4 |" in card


def test_the_published_folder_loads_through_the_apps_loader(
    finished_run: Path, local_models: tuple[str, str], capsys
) -> None:
    folder, _ = publish_dry_run(finished_run, capsys)
    entry = ModelEntry(key="tiny", display_name="Tiny net", classifier=local_models[0], explainer=str(folder))
    loaded = load_model(entry)
    backbone, explainer = loaded.backbone, loaded.explainer
    assert explainer.num_classes == len(backbone.class_names) == 5
    image = Image.effect_noise((48, 40), 50).convert("RGB")
    pixels = backbone.preprocessing.transform()(image).unsqueeze(0)
    with torch.no_grad():
        top1 = backbone.logits(pixels).argmax(dim=1)
        saliency = explainer.explain(pixels, top1)
    assert saliency.shape == pixels.shape[:1] + pixels.shape[2:]
    assert saliency.min() >= 0 and saliency.max() <= 1


def test_push_uploads_the_folder_and_pins_the_commit(
    finished_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    class FakeApi:
        def __init__(self, token: str | None) -> None:
            calls.append(("token", token))

        def create_repo(self, repo_id: str, **options: object) -> None:
            calls.append(("create_repo", repo_id, options["private"]))

        def upload_folder(self, repo_id: str, folder_path: Path, **options: object) -> object:
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return type("CommitInfo", (), {"oid": "a" * 40})()

    monkeypatch.setattr(publish, "HfApi", FakeApi)
    run_command(publish, [str(finished_run), "--repo-id", "someone/ptame-test", "--token", "secret"])
    assert calls == [
        ("token", "secret"),
        ("create_repo", "someone/ptame-test", False),
        ("upload_folder", "someone/ptame-test", ["README.md", "config.json", "model.safetensors"]),
    ]
    entry = tomllib.loads(capsys.readouterr().out)["models"][0]
    assert entry["explainer_revision"] == "a" * 40


def test_a_bad_repo_id_is_refused_before_anything_is_written(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a valid Hub repo id"):
        run_command(publish, [str(finished_run), "--repo-id", "no spaces/allowed", "--folder", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_an_unreachable_hub_is_a_clear_error(finished_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="cannot reach the Hub"):
        run_command(publish, [str(finished_run), "--repo-id", "someone/ptame-test", "--token", "secret"])


def test_unfinished_and_random_runs_are_not_pushed(finished_run: Path, tmp_path: Path) -> None:
    data = make_image_tree(tmp_path / "data")
    unfinished = tmp_path / "unfinished"
    train_tiny(data, unfinished, "--stop-after", "1")
    with pytest.raises(SystemExit, match="not a finished training run"):
        run_command(publish, [str(unfinished), "--repo-id", "someone/x", "--dry-run"])
    random_run = tmp_path / "random"
    train_tiny(data, random_run, "--steps", "1")
    with pytest.raises(SystemExit, match="random weights"):
        run_command(publish, [str(random_run), "--repo-id", "someone/x"])


def run_description(classifier: str, pretrained: bool = True, timm_weights: str | None = None) -> dict[str, object]:
    """A run.json as python -m train imagenet writes it, for the card alone."""
    recipe = {
        "lr": 1e-4, "weight_decay": 0.1, "loss": {"ce": 1.0, "area": 2.0}, "batch_size": 32, "epochs": 1,
        "amp": True, "seed": 12345, "source": "the paper", "classifier_weights": "torchvision IMAGENET1K_V1",
        "auxiliary": "resnet18.tv_in1k", "feature_levels": [1, 2, 3, 4],
    }  # fmt: skip
    return {
        "command": "imagenet", "classifier": classifier, "pretrained": pretrained, "timm_weights": timm_weights,
        "recipe": recipe, "transform": {"resize": 256, "crop": 224}, "num_images": 1281167, "total_steps": 40036,
        "arguments": {}, "versions": {"torch": "2.14.1"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("classifier", "pretrained", "timm_weights", "expected"),
    [
        ("resnet50", True, "resnet50.tv_in1k", "timm/resnet50.tv_in1k"),
        ("convnext_tiny.fb_in1k", True, "convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in1k"),
        ("hf-hub:someone/classifier@abc123", True, "resnet18.a1_in1k", "someone/classifier"),
        ("local-dir:/models/mine", True, "resnet18.a1_in1k", None),
        ("resnet50", False, None, None),
        ("vit_b_16", True, None, None),  # torchvision's weights: no Hub repo
    ],
)
def test_the_cards_base_model_is_the_classifiers_hub_id(classifier, pretrained, timm_weights, expected) -> None:
    run = run_description(classifier, pretrained, timm_weights)
    assert cards.base_model(run) == expected
    card = cards.card(run, "someone/ptame-x", "apache-2.0", None)
    assert card.data.base_model == expected and card.data.library_name == "ptame"
    assert ModelCard(str(card)).data.base_model == expected  # survives the round trip through README.md
    assert card.data.eval_results is None and "model-index" not in str(card) and "model_name" not in str(card)
    assert "Not evaluated yet" in card.text
    assert ("a test artefact" in card.text) != pretrained
