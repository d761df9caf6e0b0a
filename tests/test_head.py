import pytest
import torch
import torch.nn.functional as F

from ptame import PTAME
from ptame.head import AttentionHead


def reference_maps(head: AttentionHead, features: list[torch.Tensor]) -> torch.Tensor:
    """The method doc's head, literally: upsample every level, concatenate, fuse all K classes."""
    size = features[0].shape[-2:]
    levels = [
        F.interpolate(block(level), size=size, mode="bilinear", align_corners=False)
        for level, block in zip(features, head.levels)
    ]
    return head.fuser(torch.cat(levels, dim=1))


def test_trainable_parameters_match_the_paper() -> None:
    explainer = PTAME(num_classes=1000, pretrained_auxiliary=False)
    trainable = sum(p.numel() for p in explainer.parameters() if p.requires_grad)
    assert trainable == 1_311_040
    assert all(not p.requires_grad for p in explainer.auxiliary.parameters())


def test_shapes_and_inference_normalisation(explainer: PTAME) -> None:
    pixels = torch.rand(2, 3, 224, 224)
    assert explainer(pixels).shape == (2, 10, 56, 56)
    maps = explainer.explain(pixels, [3, 7])
    assert maps.shape == (2, 224, 224)
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(2))
    assert torch.allclose(flat.max(1).values, torch.ones(2))


def test_explain_picks_each_images_own_class(explainer: PTAME) -> None:
    pixels = torch.rand(3, 3, 96, 96)
    classes = torch.tensor([4, 1, 4])
    maps = explainer.explain(pixels, classes)
    for index, target in enumerate(classes):
        alone = explainer.explain(pixels[index : index + 1], [int(target)])
        assert torch.allclose(maps[index], alone[0], atol=1e-5)


def test_explain_rejects_mismatched_class_count(explainer: PTAME) -> None:
    with pytest.raises(ValueError, match="2 classes for 3 images"):
        explainer.explain(torch.rand(3, 3, 64, 64), [1, 2])


def test_class_subset_equals_reference_values_and_gradients(explainer: PTAME) -> None:
    explainer.train()
    features = explainer.features(torch.rand(2, 3, 128, 128))
    classes = torch.tensor([7, 2, 7, 0])
    weights = torch.randn(2, 4, 32, 32)

    subset = explainer.head(features, classes)
    (subset * weights).sum().backward()
    subset_grads = [p.grad.clone() for p in explainer.head.parameters()]
    explainer.head.zero_grad()

    full = reference_maps(explainer.head, features)[:, classes]
    (full * weights).sum().backward()
    full_grads = [p.grad.clone() for p in explainer.head.parameters()]

    assert torch.allclose(subset, full, atol=1e-5)
    for got, want in zip(subset_grads, full_grads):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_all_classes_equal_reference(explainer: PTAME) -> None:
    features = explainer.features(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        assert torch.allclose(explainer.head(features), reference_maps(explainer.head, features), atol=1e-5)


def test_auxiliary_stays_frozen_in_eval_mode(explainer: PTAME) -> None:
    explainer.train()
    assert explainer.head.training
    assert not explainer.auxiliary.training
    assert not any(module.training for module in explainer.auxiliary.modules())
