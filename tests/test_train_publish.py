import tomllib
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from ptame.serving.manifest import ModelEntry, load_model
from tests.conftest import make_image_tree, run_command, save_timm_checkpoint, train_tiny
from train import publish


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
    assert card.startswith("---\nlibrary_name: ptame\nlicense: apache-2.0\n")
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
