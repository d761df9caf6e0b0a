"""An explainer records how many training images each class had; the untrained classes get the
class-agnostic row (the mean of the trained rows) and a sentence that says so."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ptame import PTAME, CheckpointError, TrainSettings
from ptame.class_coverage import class_coverage_note, record_trained_images
from ptame.cli import main as cli_main
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry
from ptame.serving.session import ExplainSession
from ptame.training import train_explainer
from tests.conftest import shapes_file

ROOT = Path(__file__).resolve().parents[1]


def mean_level_classifier(pixels: torch.Tensor) -> torch.Tensor:
    """10 logits from the mean pixel m (pixel space: the tests pass mean 0, std 1): class 0 below
    0.3, class 2 above 0.7, class 1 between; classes 3 to 9 never."""
    mean = pixels.mean(dim=(1, 2, 3))
    logits = torch.full((pixels.shape[0], 10), -10.0)
    logits[:, 0], logits[:, 1], logits[:, 2] = (0.3 - mean) * 10, 0.0, (mean - 0.7) * 10
    return logits


def test_training_counts_its_targets_and_the_classes_never_targeted_keep_their_zero_rows(explainer: PTAME) -> None:
    """The counts are the loss's targets, step by step (an image seen twice counts twice), and a
    class counted 0 is exactly one whose row never left the zero start (the default recipe's)."""
    generator = torch.Generator().manual_seed(0)

    def images(*levels: float) -> torch.Tensor:
        return torch.stack([level - 0.05 + 0.1 * torch.rand(3, 64, 64, generator=generator) for level in levels])

    first = images(0.1, 0.5, 0.9, 0.2)  # classes 0 1 2 0
    batches = [first, (images(0.15, 0.95, 0.5, 0.05), None), first]  # 0 2 1 0 (a tuple's first item); 0 1 2 0
    counts = torch.zeros(10, dtype=torch.int64)
    settings = TrainSettings(lr=1e-2)
    train_explainer(
        mean_level_classifier, explainer, batches, (0, 0, 0), (1, 1, 1), settings, progress=False, target_counts=counts
    )
    assert counts.tolist() == [6, 3, 3, 0, 0, 0, 0, 0, 0, 0]
    rows = explainer.head.fuser.weight.detach().flatten(1)
    assert (rows[:3] != 0).any(dim=1).all() and (rows[3:] == 0).all()


def test_untrained_classes_get_the_mean_of_the_trained_rows_and_it_survives_a_round_trip(
    explainer: PTAME, tmp_path: Path
) -> None:
    counts = torch.tensor([4, 0, 2, 0, 1, 3, 5, 1, 2, 7])
    before = explainer.head.fuser.weight.detach().clone()
    assert record_trained_images(explainer, counts) == 2
    trained_mean = before[[0, 2, 4, 5, 6, 7, 8, 9]].sum(dim=0) / 8
    after = explainer.head.fuser.weight.detach()
    assert torch.allclose(after[1], trained_mean) and torch.allclose(after[3], trained_mean)
    assert torch.equal(after[[0, 2, 4]], before[[0, 2, 4]])
    explainer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["trained_images"] == counts.tolist()
    loaded = PTAME.from_pretrained(tmp_path)
    assert loaded.trained_images == counts.tolist()
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(pixels)[0, 1], loaded(pixels)[0, 3])
        assert not torch.allclose(loaded(pixels)[0, 0], loaded(pixels)[0, 1])


def test_the_note_names_an_untrained_class_and_only_one(explainer: PTAME) -> None:
    assert class_coverage_note(explainer, 1, "hen") is None  # counts not recorded: nothing to say
    record_trained_images(explainer, torch.tensor([400, 0, 200, 0, 100, 300, 500, 100, 200, 700]))
    note = class_coverage_note(explainer, 3, "hen")
    assert note is not None and "never trained on 'hen'" in note and "8 of its 10 classes" in note
    assert class_coverage_note(explainer, 2, "cock") is None


def test_a_class_with_fewer_than_100_training_images_is_called_rarely_trained_and_one_with_100_is_not(
    explainer: PTAME,
) -> None:
    record_trained_images(explainer, torch.tensor([99, 1, 100, 0, 5, 300, 500, 100, 200, 700]))
    note = class_coverage_note(explainer, 0, "hen")
    assert note is not None and "only 99 images of 'hen'" in note and "less reliable" in note
    assert "only 1 image of 'cock'" in (class_coverage_note(explainer, 1, "cock") or "")
    assert class_coverage_note(explainer, 2, "ostrich") is None
    assert "never trained on 'goldfish'" in (class_coverage_note(explainer, 3, "goldfish") or "")


@pytest.mark.parametrize("counts", [[1, 2], [-1] * 10, [True] * 10, [1.5] * 10, [10**13] * 10, "many"])
def test_bad_counts_in_config_are_refused(explainer: PTAME, tmp_path: Path, counts: object) -> None:
    explainer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "trained_images": counts}))
    with pytest.raises(CheckpointError, match="trained_images must be null or one integer from 0 to"):
        PTAME.from_pretrained(tmp_path)


def test_counts_of_another_length_or_no_trained_class_are_refused(explainer: PTAME) -> None:
    with pytest.raises(ValueError, match="10 non-negative integers"):
        record_trained_images(explainer, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="no class has a training image"):
        record_trained_images(explainer, torch.zeros(10, dtype=torch.int64))


@pytest.fixture
def shapes_with_counts(tmp_path: Path) -> object:
    """The shapes demo copied, its explainer's config given training image counts (class 0: none)."""

    def copy(counts: list[int]) -> Path:
        folder = tmp_path / f"shapes-{'-'.join(map(str, counts))}"
        shutil.copytree(ROOT / "checkpoints" / "shapes", folder)
        config_path = folder / "explainer" / "config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "trained_images": counts}))
        return folder

    return copy


def test_the_app_and_the_command_line_say_when_p_tames_class_was_never_trained(
    shapes_with_counts: object, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Shapes test image 0 is a circle (class 0): with no training image of class 0, the session's
    notes and ``ptame explain`` say so; with some, they do not; Grad-CAM alone never does."""
    image = shapes_file(tmp_path, 0)
    for counts, said in (([0, 5, 5, 5, 5, 5], True), ([1, 5, 5, 5, 5, 5], False)):
        folder = shapes_with_counts(counts)
        session = ExplainSession(ModelRegistry([ModelEntry.from_folder(folder)]))
        key = session.registry.load(ModelEntry.from_folder(folder).key).entry.key
        checked = session.read(str(image))
        final = list(session.explain_stream(checked, key, None, ["ptame", "gradcam"]))[-1]
        assert final.class_name == "circle"
        assert any("never trained on 'circle'" in note for note in final.notes) is said
        only_gradcam = list(session.explain_stream(checked, key, None, ["gradcam"]))[-1]
        assert not any("never trained" in note for note in only_gradcam.notes)
        out = tmp_path / f"out-{said}"
        assert cli_main(["explain", str(image), "--model", str(folder), "--methods", "ptame", "--out", str(out)]) == 0
        assert ("never trained on 'circle'" in capsys.readouterr().err) is said
