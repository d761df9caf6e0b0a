import pytest
import torch

from ptame import PTAME, LossWeights
from ptame.training import training_step_loss
from train.commands.bench import ReferenceExplainer, measure

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_the_reference_design_computes_the_same_maps_loss_and_gradients() -> None:
    torch.manual_seed(0)
    explainer = PTAME(num_classes=20, auxiliary="test_resnet", pretrained_auxiliary=False).train()
    reference = ReferenceExplainer(num_classes=20, auxiliary="test_resnet", pretrained_auxiliary=False).train()
    reference.load_state_dict(explainer.state_dict())
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 20, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    pixels = torch.rand(4, 3, 48, 48)

    assert reference(pixels).shape == explainer(pixels).shape == (4, 20, 12, 12)
    assert torch.allclose(reference(pixels), explainer(pixels), atol=1e-5)
    losses = []
    for model in (explainer, reference):
        loss, _ = training_step_loss(classifier, model, pixels, MEAN, STD, LossWeights())
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for ours, theirs in zip(explainer.head.parameters(), reference.head.parameters()):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("design", ["ptame", "reference"])
def test_measure_reports_throughput_and_memory(design: str) -> None:
    result = measure(design, "test_resnet", batch_size=2, steps=1, warmup=0, device="cpu", compile=False, image_size=32)
    assert result["images_per_s"] > 0 and result["peak_memory_bytes"] > 0 and result["loss"] > 0
