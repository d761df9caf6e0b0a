import math

import pytest
import torch
import torch.nn.functional as F

from ptame import PTAME
from ptame.head import AttentionHead, upsample_to_finest
from tests.conftest import TRAINED_DEMO, randomise_head


class OfficialHead(torch.nn.Module):
    """The attention head as the method's text describes the official one, built without ptame's
    head: per level a 1x1 conv (bias) + BatchNorm, the residual, ReLU, then x2 bilinear
    ``nn.Upsample`` steps (align_corners False), log2(finest / h) of them; the levels concatenated
    and one bias-free 1x1 fuser over all of them, all K classes."""

    def __init__(self, channels: list[int], num_classes: int, finest: int, sides: list[int]) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, c, 1) for c in channels)
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm2d(c) for c in channels)
        self.upsamples = torch.nn.ModuleList(
            torch.nn.Sequential(
                *[torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
                * int(math.log2(finest // side))
            )
            for side in sides
        )
        self.fuser = torch.nn.Conv2d(sum(channels), num_classes, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [
            upsample(torch.relu(norm(conv(f)) + f))
            for f, conv, norm, upsample in zip(features, self.convs, self.norms, self.upsamples)
        ]
        return self.fuser(torch.cat(levels, dim=1))


def official_head_like(head: AttentionHead, features: list[torch.Tensor]) -> OfficialHead:
    """An OfficialHead holding ``head``'s weights and BatchNorm statistics, in ``head``'s mode."""
    sides = [f.shape[-1] for f in features]
    official = OfficialHead(list(head.channels), head.num_classes, max(sides), sides)
    for index, level in enumerate(head.levels):
        official.convs[index].load_state_dict(level.conv.state_dict())
        official.norms[index].load_state_dict(level.norm.state_dict())
    official.fuser.load_state_dict(head.fuser.state_dict())
    return official.train(head.training)


def give_batchnorm_statistics(head: AttentionHead) -> None:
    """Non-trivial BatchNorm running statistics and affine parameters (seeded)."""
    generator = torch.Generator().manual_seed(3)
    for level in head.levels:
        c = level.norm.num_features
        level.norm.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
        level.norm.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.2)
        level.norm.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
        level.norm.bias.data.copy_(torch.randn(c, generator=generator) * 0.3)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize(
    "make_explainer, side",
    [
        (lambda: PTAME(num_classes=20, pretrained_auxiliary=False), 224),
        (lambda: PTAME.from_pretrained(TRAINED_DEMO / "explainer"), 128),
    ],
    ids=["resnet18-224", "shapes-128"],
)
def test_raw_maps_equal_the_official_head(make_explainer, side: int) -> None:
    torch.manual_seed(0)
    explainer = randomise_head(make_explainer()).eval()
    with torch.no_grad():
        give_batchnorm_statistics(explainer.head)
        features = [f.double() for f in explainer.features(torch.rand(2, 3, side, side))]
        head = explainer.head.double()
        want = official_head_like(head, features).double()(features)
        got = head(features)
    assert got.shape == want.shape == (2, head.num_classes, side // 4, side // 4)
    assert relative_error(got, want) < 1e-5


def test_head_upsampling_is_not_one_direct_resize() -> None:
    """The cascade 7 -> 14 -> 28 -> 56 differs from one 7 -> 56 resize; the head must take the cascade."""
    coarse = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    cascade = coarse
    for _ in range(3):
        cascade = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)(cascade)
    direct = F.interpolate(coarse, size=(56, 56), mode="bilinear", align_corners=False)
    assert relative_error(direct, cascade) > 1e-2
    assert relative_error(upsample_to_finest(coarse, (56, 56)), cascade) < 1e-6


def test_sizes_that_are_not_powers_of_two_take_x2_steps_then_one_exact_resize() -> None:
    """At 200 pixels the levels are 50, 25, 13, 7: 13 -> 26 then a resize to 50; 7 -> 14 -> 28, then to 50."""
    level = torch.rand(1, 2, 13, 13, generator=torch.Generator().manual_seed(1))
    up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    want = F.interpolate(up(level), size=(50, 50), mode="bilinear", align_corners=False)
    assert relative_error(upsample_to_finest(level, (50, 50)), want) < 1e-6
    coarsest = torch.rand(1, 2, 7, 7, generator=torch.Generator().manual_seed(2))
    want = F.interpolate(up(up(coarsest)), size=(50, 50), mode="bilinear", align_corners=False)
    assert relative_error(upsample_to_finest(coarsest, (50, 50)), want) < 1e-6
    assert upsample_to_finest(torch.rand(1, 1, 6, 9), (24, 40)).shape == (1, 1, 24, 40)


def reference_maps(head: AttentionHead, features: list[torch.Tensor]) -> torch.Tensor:
    """All K maps through the official construction (upsample every level, concatenate, fuse)."""
    return official_head_like(head, features)(features)


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
    official = official_head_like(explainer.head, features)

    subset = explainer.head(features, classes)
    (subset * weights).sum().backward()
    full = official(features)[:, classes]
    (full * weights).sum().backward()

    assert torch.allclose(subset, full, atol=1e-5)
    pairs = [(explainer.head.fuser, official.fuser)]
    for level, conv, norm in zip(explainer.head.levels, official.convs, official.norms):
        pairs += [(level.conv, conv), (level.norm, norm)]
    for ours, theirs in pairs:
        for got, want in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(got.grad, want.grad, atol=1e-4, rtol=1e-4)


def test_all_classes_equal_reference(explainer: PTAME) -> None:
    features = explainer.features(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        assert torch.allclose(explainer.head(features), reference_maps(explainer.head, features), atol=1e-5)


def test_auxiliary_stays_frozen_in_eval_mode(explainer: PTAME) -> None:
    explainer.train()
    assert explainer.head.training
    assert not explainer.auxiliary.training
    assert not any(module.training for module in explainer.auxiliary.modules())


@pytest.mark.parametrize(
    ("start", "size", "doublings"),
    [
        ((2, 2), (3, 4), 0),  # a x2 step would overshoot the height: one direct resize
        ((2, 2), (4, 3), 0),  # ... or the width
        ((2, 2), (4, 5), 1),  # x2 reaches the height exactly, then the width is resized
        ((2, 2), (5, 4), 1),  # ... the width exactly, then the height
        ((2, 2), (5, 5), 1),  # a second x2 (8) would overshoot both sides
        ((4, 2), (8, 5), 1),  # unequal sides: each is checked against its own target
        ((2, 4), (4, 16), 1),  # the width could take two steps, the height only one
    ],
)
def test_upsampling_takes_x2_steps_while_both_sides_fit_then_one_resize(
    start: tuple[int, int], size: tuple[int, int], doublings: int
) -> None:
    maps = torch.rand(1, 2, *start, generator=torch.Generator().manual_seed(3))
    want = maps
    for _ in range(doublings):
        want = F.interpolate(want, scale_factor=2.0, mode="bilinear", align_corners=False)
    want = F.interpolate(want, size=size, mode="bilinear", align_corners=False)
    got = upsample_to_finest(maps, size)
    assert got.shape == (1, 2, *size)
    assert relative_error(got, want) < 1e-6


def test_the_head_refuses_a_wrong_number_of_feature_levels() -> None:
    head = AttentionHead([4, 8], num_classes=3)
    with pytest.raises(ValueError, match="expected 2 feature levels, got 1"):
        head([torch.rand(1, 4, 8, 8)])


def randomise_head_of(head: AttentionHead) -> AttentionHead:
    """Draw a bare head's parameters from N(0, 0.5^2), so that every level and class contributes."""
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    return head


def test_maps_are_at_the_finest_level_whatever_the_order_of_the_levels() -> None:
    """Levels given coarse first: the maps are still at the resolution of the level with most pixels."""
    torch.manual_seed(0)
    head = randomise_head_of(AttentionHead([4, 8], num_classes=3)).eval()
    coarse, fine = torch.rand(1, 8, 2, 2), torch.rand(1, 4, 4, 4)
    swapped = AttentionHead([8, 4], num_classes=3).eval()
    swapped.levels[0].load_state_dict(head.levels[1].state_dict())
    swapped.levels[1].load_state_dict(head.levels[0].state_dict())
    with torch.no_grad():
        swapped.fuser.weight.copy_(torch.cat([head.fuser.weight[:, 4:], head.fuser.weight[:, :4]], dim=1))
        fine_first, coarse_first = head([fine, coarse]), swapped([coarse, fine])
    assert coarse_first.shape == fine_first.shape == (1, 3, 4, 4)
    assert relative_error(coarse_first, fine_first) < 1e-6
