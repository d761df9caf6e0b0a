"""The metrics on cases whose answers are known: a classifier that only looks at a known object."""

import re

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from ptame.loading.backbones import Backbone, Preprocessing
from ptame.metrics import (
    ad_ic,
    deletion_insertion,
    energy_pointing_game,
    keep_top,
    pointing_game,
    road,
    road_auc,
)
from ptame.metrics.remove_and_debias import impute, ranked_pixels

SIZE = 32


class ObjectOnly(nn.Module):
    """Class 0's logit is 5 x (the mean normalised value of a fixed region, the object, - 1.5); class 1's is 0.

    With ImageNet normalisation: a white object gives class 0 (logit ~4.5); a black, grey or blurred one class 1.
    """

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.region = region

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        brightness = normalized[:, :, self.region].mean(dim=(1, 2))
        return torch.stack([5 * (brightness - 1.5), torch.zeros_like(brightness)], dim=1)


def object_world(batch: int = 2) -> tuple[Backbone, torch.Tensor, torch.Tensor]:
    """A backbone that only sees a 10x10 object (9.8% of the image), images with a bright object, its mask."""
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[5:15, 12:22] = True
    model = ObjectOnly(region).eval()
    backbone = Backbone("object-only", model, Preprocessing(SIZE, SIZE), model, None, ["object", "other"])
    pixels = 0.15 + 0.1 * torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pixels[:, :, region] = 1.0
    return backbone, pixels, region.expand(batch, SIZE, SIZE)


def probability(backbone: Backbone, pixels: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(backbone.logits(pixels), dim=1)[:, target]


def test_a_map_equal_to_the_object_loses_no_confidence() -> None:
    backbone, pixels, masks = object_world()
    assert (probability(backbone, pixels, 0) > 0.98).all()
    scores = ad_ic(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long))
    assert set(scores) == {"ad_100", "ic_100", "ad_50", "ic_50", "ad_15", "ic_15"}
    for percent in (100, 50, 15):
        assert torch.allclose(scores[f"ad_{percent}"], torch.zeros(2), atol=1e-4)
        assert not scores[f"ic_{percent}"].any()


def test_the_inverse_map_loses_the_class() -> None:
    backbone, pixels, masks = object_world()
    scores = ad_ic(backbone, pixels, (~masks).float(), torch.zeros(2, dtype=torch.long))
    for percent in (100, 50, 15):
        assert (scores[f"ad_{percent}"] > 95).all()
    other_class = ad_ic(backbone, pixels, (~masks).float(), torch.ones(2, dtype=torch.long))
    assert other_class["ic_100"].all() and (other_class["ad_100"] == 0).all()


def test_ad_with_soft_values_by_hand() -> None:
    backbone, pixels, _ = object_world()
    maps = torch.full((2, SIZE, SIZE), 0.5)
    clean = probability(backbone, pixels, 0)
    halved = probability(backbone, pixels * 0.5, 0)
    expected = (clean - halved).clamp_min(0) / clean * 100
    scores = ad_ic(backbone, pixels, maps, torch.zeros(2, dtype=torch.long), fractions=(1.0,))
    assert torch.allclose(scores["ad_100"], expected, atol=1e-4)
    assert (expected > 1).all()


def test_keep_top_keeps_an_exact_count_with_soft_values() -> None:
    maps = torch.randperm(100).float().div(99).view(1, 10, 10)
    kept = keep_top(maps, 0.15)
    assert (kept > 0).sum() == 15
    assert torch.equal(kept[kept > 0].sort().values, maps.flatten().sort().values[-15:])
    assert torch.equal(keep_top(maps, 1.0), maps)


def test_deletion_and_insertion_rank_the_perfect_map_above_its_inverse() -> None:
    backbone, pixels, masks = object_world()
    classes = torch.zeros(2, dtype=torch.long)
    perfect = deletion_insertion(backbone, pixels, masks.float(), classes, steps=10)
    inverse = deletion_insertion(backbone, pixels, (~masks).float(), classes, steps=10)
    assert perfect.fractions.shape == (11,) and perfect.fractions[0] == 0 and perfect.fractions[-1] == 1
    assert perfect.deletion.shape == perfect.insertion.shape == (2, 11)
    clean = probability(backbone, pixels, 0)
    assert torch.allclose(perfect.deletion[:, 0], clean) and torch.allclose(perfect.insertion[:, -1], clean)
    assert torch.allclose(perfect.deletion[:, -1], probability(backbone, torch.zeros_like(pixels), 0))
    assert (perfect.deletion_auc < inverse.deletion_auc - 0.5).all()
    assert (perfect.insertion_auc > inverse.insertion_auc + 0.5).all()
    rebatched = deletion_insertion(backbone, pixels, masks.float(), classes, steps=10, batch_size=3)
    assert torch.allclose(rebatched.deletion, perfect.deletion) and torch.allclose(
        rebatched.insertion, perfect.insertion
    )


@pytest.mark.parametrize("imputation", ["linear", "telea"])
def test_imputation_leaves_the_kept_pixels_untouched(imputation: str) -> None:
    pixels = torch.rand(2, 3, SIZE, SIZE)
    removed = torch.rand(2, SIZE, SIZE) < 0.4
    filled = impute(pixels, removed, imputation)
    kept = (~removed)[:, None].expand_as(pixels)
    assert torch.equal(filled[kept], pixels[kept])
    assert not torch.equal(filled[~kept], pixels[~kept])
    assert filled.min() >= 0 and filled.max() <= 1


@pytest.mark.parametrize("imputation", ["linear", "telea"])
def test_imputation_fills_from_the_surroundings(imputation: str) -> None:
    ramp = torch.linspace(0.2, 0.8, SIZE).expand(1, 3, SIZE, SIZE).clone()
    removed = torch.zeros(1, SIZE, SIZE, dtype=torch.bool)
    removed[0, 8:20, 10:24] = True
    error = (impute(ramp, removed, imputation) - ramp).abs()
    assert error.mean() < 0.01  # a ramp is its own linear interpolation (+ noise of std 0.01)
    assert error.max() < 0.1


def test_linear_imputation_noise_is_seeded() -> None:
    pixels = torch.rand(1, 3, SIZE, SIZE)
    removed = torch.rand(1, SIZE, SIZE) < 0.3
    assert torch.equal(impute(pixels, removed, seed=1), impute(pixels, removed, seed=1))
    assert torch.equal(impute(pixels, removed), impute(pixels, removed, "linear", seed=0))  # the defaults
    assert not torch.equal(impute(pixels, removed, seed=1), impute(pixels, removed, seed=2))


def test_road_auc_by_hand() -> None:
    fractions = (0.1, 0.3, 0.5, 0.7)
    assert road_auc(fractions, torch.ones(4)).item() == pytest.approx(0.7 + 0.3 / 2)
    assert road_auc(fractions, torch.zeros(4)).item() == pytest.approx(0.1 / 2)
    mixed = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = 0.1 * 1 + 0.2 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.3 * 0
    assert road_auc(fractions, mixed).item() == pytest.approx(expected)
    per_image = road_auc(fractions, torch.stack([torch.ones(4), torch.zeros(4)]))
    assert per_image.mean().item() == pytest.approx(road_auc(fractions, torch.full((4,), 0.5)).item())


@pytest.mark.parametrize("imputation", ["linear", "telea"])
def test_road_removing_the_object_loses_the_class(imputation: str) -> None:
    backbone, pixels, masks = object_world()
    curves = road(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), imputation=imputation)
    assert curves.fractions == (0.1, 0.3, 0.5, 0.7)
    assert curves.most_relevant_first.shape == curves.least_relevant_first.shape == (2, 4)
    assert not curves.most_relevant_first.any()
    assert curves.least_relevant_first.all()


def test_ranked_pixels_selects_exact_counts() -> None:
    maps = torch.rand(3, 10, 10)
    top = ranked_pixels(maps, 0.3, largest=True)
    bottom = ranked_pixels(maps, 0.7, largest=False)
    assert (top.flatten(1).sum(1) == 30).all()
    assert torch.equal(top, ~bottom)


def test_road_rejects_bad_fractions() -> None:
    backbone, pixels, masks = object_world()
    with pytest.raises(ValueError, match="fractions"):
        road(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), fractions=(0.5, 0.3))
    with pytest.raises(ValueError, match="imputation"):
        road(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), imputation="mean")


def test_pointing_games_of_a_perfect_map_and_its_inverse() -> None:
    _, _, masks = object_world()
    perfect, inverse = masks.float(), (~masks).float()
    assert pointing_game(perfect, masks).all()
    assert not pointing_game(inverse, masks).any()
    assert torch.allclose(energy_pointing_game(perfect, masks), torch.ones(2))
    assert torch.allclose(energy_pointing_game(inverse, masks), torch.zeros(2))
    uniform = torch.full((2, 8, 8), 0.3)  # a lower resolution is resized to the masks'
    assert torch.allclose(energy_pointing_game(uniform, masks), torch.full((2,), 100 / SIZE**2))
    assert torch.equal(energy_pointing_game(torch.zeros(2, SIZE, SIZE), masks), torch.zeros(2))


def test_pointing_game_looks_at_the_maximum_only() -> None:
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    maps = torch.full((1, 4, 4), 0.9)
    maps[0, 0, 0] = 1.0
    assert pointing_game(maps, masks).all()
    maps[0, 3, 3] = 1.0  # ties: the first maximum in row-major order
    assert pointing_game(maps, masks).all()
    maps[0, 0, 0] = 0.5
    assert not pointing_game(maps, masks).any()


def test_pointing_game_finds_the_peak_of_a_low_resolution_map_at_the_masks_size() -> None:
    """A 4x4 map peaking in its top-right cell, scored against 16x16 masks (by hand: the peak lies in
    rows 0-3, columns 12-15 at 16x16; flat index 3 of the 4x4 map would be row 0, column 3)."""
    low = torch.zeros(1, 4, 4)
    low[0, 0, 3] = 1.0
    top_right, top_left = torch.zeros(1, 16, 16, dtype=torch.bool), torch.zeros(1, 16, 16, dtype=torch.bool)
    top_right[0, :4, 12:] = True
    top_left[0, :4, :4] = True
    assert pointing_game(low, top_right).tolist() == [True]
    assert pointing_game(low, top_left).tolist() == [False]
    assert energy_pointing_game(low, top_right).item() > energy_pointing_game(low, top_left).item()


def test_pointing_game_tolerance_is_a_euclidean_distance_to_the_object() -> None:
    masks = torch.zeros(1, 20, 20, dtype=torch.bool)
    masks[0, 8:12, 8:12] = True
    straight, diagonal = torch.zeros(1, 20, 20), torch.zeros(1, 20, 20)
    straight[0, 10, 15] = 1.0  # 4 pixels right of the object's edge column 11
    diagonal[0, 14, 14] = 1.0  # 3 pixels below and right of the corner (11, 11): distance 4.24
    assert not pointing_game(straight, masks, tolerance=3).any()
    assert pointing_game(straight, masks, tolerance=4).all()
    assert not pointing_game(diagonal, masks, tolerance=4).any()
    assert pointing_game(diagonal, masks, tolerance=5).all()
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(straight, masks, tolerance=-1)


def test_bad_maps_and_masks_are_clear_errors() -> None:
    backbone, pixels, masks = object_world()
    classes = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ad_ic(backbone, pixels, masks.float() * 2, classes)
    with pytest.raises(ValueError, match="maps must be"):
        ad_ic(backbone, pixels, masks[:1].float(), classes)
    with pytest.raises(ValueError, match="out of range"):
        deletion_insertion(backbone, pixels, masks.float(), torch.full((2,), 2))
    with pytest.raises(ValueError, match="at least one pixel"):
        pointing_game(masks.float(), torch.zeros_like(masks))


class LinearScore(nn.Module):
    """Class 0's logit is a fixed weighted sum of the pixels, class 1's is 0: every pixel counts."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        score = (normalized * self.weights).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


@pytest.mark.parametrize("map_side", [16, 8], ids=["full-resolution", "half-resolution"])
def test_deletion_and_insertion_curves_and_areas_by_hand(map_side: int) -> None:
    """Two 16x16 images, 4 steps of 64 pixels, against a direct computation from Petsiuk et al.'s
    definition: pixels in decreasing map order (ties in raster order), deleted to black or inserted
    into the image blurred by OpenCV (11x11 Gaussian, sigma 5, reflected border), the class-0
    softmax probability after each step, and the trapezoid over the fractions 0, 1/4, ..., 1. An 8x8
    map ranks the pixels by its bilinear upsampling (OpenCV's, pixel centres)."""
    generator = torch.Generator().manual_seed(5)
    side, steps = 16, 4
    weights = torch.randn(3, side, side, generator=generator) * 0.05
    model = LinearScore(weights).eval()
    preprocessing = Preprocessing(side, side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    backbone = Backbone("linear", model, preprocessing, model, None, ["scored", "zero"])
    pixels = torch.rand(2, 3, side, side, generator=generator)
    maps = torch.rand(2, map_side, map_side, generator=generator)
    maps[1] = (maps[1] * 4).floor() / 4  # four levels: ties, broken in raster order
    classes = torch.zeros(2, dtype=torch.long)

    def probability_of(image: np.ndarray) -> float:
        score = float((torch.from_numpy(image).permute(2, 0, 1) * weights).sum())
        return float(np.exp(score) / (np.exp(score) + 1.0))

    for image in range(2):
        picture = pixels[image].permute(1, 2, 0).numpy().astype(np.float64)
        blurred = cv2.GaussianBlur(picture, (11, 11), 5.0, borderType=cv2.BORDER_REFLECT_101)
        values = cv2.resize(maps[image].numpy(), (side, side), interpolation=cv2.INTER_LINEAR).flatten().tolist()
        order = sorted(range(side * side), key=lambda index: (-values[index], index))
        deletion, insertion = [], []
        for step in range(steps + 1):
            chosen = np.zeros(side * side, dtype=bool)
            chosen[order[: step * side * side // steps]] = True
            chosen = chosen.reshape(side, side)[:, :, None]
            deletion.append(probability_of(np.where(chosen, 0.0, picture).astype(np.float32)))
            insertion.append(probability_of(np.where(chosen, picture, blurred).astype(np.float32)))
        for batch_size in (1, 3, 64):
            curves = deletion_insertion(backbone, pixels, maps, classes, steps=steps, batch_size=batch_size)
            assert torch.allclose(curves.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
            assert torch.allclose(curves.deletion[image], torch.tensor(deletion), atol=1e-5)
            assert torch.allclose(curves.insertion[image], torch.tensor(insertion), atol=1e-4)
            areas = [sum((a + b) / 2 / steps for a, b in zip(curve, curve[1:])) for curve in (deletion, insertion)]
            assert curves.deletion_auc[image].item() == pytest.approx(areas[0], abs=1e-5)
            assert curves.insertion_auc[image].item() == pytest.approx(areas[1], abs=1e-4)


def test_deletion_and_insertion_take_one_step_and_refuse_none() -> None:
    backbone, pixels, masks = object_world()
    classes = torch.zeros(2, dtype=torch.long)
    one = deletion_insertion(backbone, pixels, masks.float(), classes, steps=1, batch_size=1)
    assert one.fractions.tolist() == [0.0, 1.0] and one.deletion.shape == (2, 2)
    for steps, batch_size in ((0, 64), (50, 0)):
        with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
            deletion_insertion(backbone, pixels, masks.float(), classes, steps=steps, batch_size=batch_size)


def test_pointing_games_check_shapes_and_every_mask() -> None:
    maps, masks = torch.rand(2, 8, 8), torch.ones(2, 16, 16, dtype=torch.bool)
    for bad_maps, bad_masks in ((maps[0], masks), (maps, masks[0]), (maps, masks[None]), (maps, masks[:1])):
        for game in (pointing_game, energy_pointing_game):
            with pytest.raises(ValueError, match=r"maps and masks must be \(B, h, w\) and \(B, H, W\)"):
                game(bad_maps, bad_masks)
    one_empty = masks.clone()
    one_empty[1] = False
    with pytest.raises(ValueError, match="^every ground-truth mask must contain at least one pixel$"):
        pointing_game(maps, one_empty)
    with pytest.raises(ValueError, match="^the energy-based pointing game needs non-negative maps$"):
        energy_pointing_game(maps - 0.5, masks)


def test_pointing_game_scores_each_image_of_a_batch_by_its_own_peak() -> None:
    maps, masks = torch.zeros(3, 6, 6), torch.zeros(3, 6, 6, dtype=torch.bool)
    maps[0, 1, 1], maps[1, 4, 4], maps[2, 0, 5] = 1.0, 1.0, 1.0
    masks[0, 1, 1], masks[1, 0, 0], masks[2, 0, 5] = True, True, True
    assert pointing_game(maps, masks).tolist() == [True, False, True]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, False, True]


def test_energy_pointing_game_of_a_map_with_little_mass() -> None:
    maps, masks = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    maps[0, 0, 0], maps[0, 3, 3] = 0.3, 0.1  # total mass 0.4, three quarters on the object
    masks[0, 0, 0] = True
    assert energy_pointing_game(maps, masks).item() == pytest.approx(0.75)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, 1.5])
def test_ad_ic_refuse_fractions_outside_zero_to_one(fraction: float) -> None:
    backbone, pixels, masks = object_world()
    with pytest.raises(ValueError, match=r"AD/IC fractions must be in \(0, 1\], got"):
        ad_ic(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), (0.5, fraction))
    assert set(ad_ic(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), (1.0,))) == {"ad_100", "ic_100"}


def test_pointing_games_refuse_maps_with_a_class_axis() -> None:
    """(B, K, h, w) maps with (B, H, W) masks: a shape error, even when B matches."""
    maps, masks = torch.rand(2, 1, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool)
    for game in (pointing_game, energy_pointing_game):
        with pytest.raises(ValueError, match=r"maps and masks must be \(B, h, w\) and \(B, H, W\)"):
            game(maps, masks)
        with pytest.raises(ValueError, match=r"maps and masks must be \(B, h, w\) and \(B, H, W\)"):
            game(maps[:, 0], masks[:, None])


def test_pointing_game_by_default_needs_the_peak_on_the_object() -> None:
    """Tolerance 0 unless asked: a peak one pixel beside the object is a miss."""
    maps, masks = torch.zeros(1, 6, 6), torch.zeros(1, 6, 6, dtype=torch.bool)
    maps[0, 2, 3] = 1.0
    masks[0, 2, 2] = True
    assert pointing_game(maps, masks).tolist() == [False]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True]


class CountingScore(LinearScore):
    """LinearScore that records the batch size of every forward pass (8x8 images: the 11x11 blur needs > 5 pixels)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__(weights)
        self.batch_sizes: list[int] = []

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(normalized.shape[0])
        return super().forward(normalized)


def counting_backbone(side: int = 8) -> tuple[Backbone, CountingScore]:
    model = CountingScore(torch.ones(3, side, side) * 0.1).eval()
    preprocessing = Preprocessing(side, side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Backbone("counting", model, preprocessing, model, None, ["scored", "zero"]), model


def test_deletion_and_insertion_cost_two_passes_per_step_in_batches_of_batch_size() -> None:
    """2 images, 2 steps: 2 kinds x 3 steps x 2 images = 12 images, in passes of 5, 5 and 2."""
    backbone, model = counting_backbone()
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    deletion_insertion(backbone, pixels, torch.rand(2, 8, 8), torch.zeros(2, dtype=torch.long), steps=2, batch_size=5)
    assert model.batch_sizes == [5, 5, 2]


def test_deletion_and_insertion_default_to_50_steps_in_batches_of_64() -> None:
    """One image: 2 x 51 images, in passes of 64 and 38."""
    backbone, model = counting_backbone()
    pixels = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    curves = deletion_insertion(backbone, pixels, torch.rand(1, 8, 8), torch.zeros(1, dtype=torch.long))
    assert curves.fractions.shape == (51,) and curves.deletion.shape == curves.insertion.shape == (1, 51)
    assert model.batch_sizes == [64, 38]


def test_telea_imputation_is_opencvs_inpainting_of_the_8_bit_image() -> None:
    """Against OpenCV called directly: the image rounded to 8 bits (black and white pixels included),
    inpainted by Telea's method with radius 3 where removed, back to [0, 1]; kept pixels unchanged."""
    generator = torch.Generator().manual_seed(7)
    pixels = torch.rand(1, 3, 12, 12, generator=generator)
    pixels[0, :, :3, :3], pixels[0, :, -3:, -3:] = 0.0, 1.0
    removed = torch.rand(1, 12, 12, generator=generator) < 0.3
    removed[0, 1, 1] = removed[0, -2, -2] = True
    as_bytes = np.clip(np.round(pixels[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    inpainted = cv2.inpaint(as_bytes, removed[0].numpy().astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    want = torch.where(removed[0], torch.from_numpy(inpainted).permute(2, 0, 1).float() / 255, pixels[0])
    assert torch.equal(impute(pixels, removed, "telea")[0], want)


def test_imputed_values_stay_in_zero_to_one_on_black_and_white_images() -> None:
    """Noisy linear imputation of a black (white) image is 0 (1) plus noise: clipped into [0, 1]."""
    removed = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    removed[:, 8:24, 8:24] = True
    pixels = torch.stack([torch.zeros(3, SIZE, SIZE), torch.ones(3, SIZE, SIZE)])
    filled = impute(pixels, removed, "linear")
    assert filled.min() == 0.0 and filled.max() == 1.0
    inside = filled[:, :, 8:24, 8:24]
    assert (inside[0] > 0).any() and (inside[1] < 1).any()  # the noise is there, clipped on one side only


def test_impute_keeps_an_image_with_nothing_removed() -> None:
    pixels = torch.rand(3, 3, 8, 8)
    removed = torch.zeros(3, 8, 8, dtype=torch.bool)
    removed[1, 2:5, 2:5] = True
    filled = impute(pixels, removed, "linear")
    assert filled.shape == pixels.shape
    assert torch.equal(filled[0], pixels[0]) and torch.equal(filled[2], pixels[2])
    assert not torch.equal(filled[1], pixels[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_impute_keeps_the_dtype_and_the_kept_pixels_bits(dtype: torch.dtype) -> None:
    pixels = torch.rand(1, 3, 8, 8, dtype=torch.float64).to(dtype)
    removed = torch.zeros(1, 8, 8, dtype=torch.bool)
    removed[0, 2:5, 2:5] = True
    for imputation in ("linear", "telea"):
        filled = impute(pixels, removed, imputation)
        assert filled.dtype == dtype
        assert torch.equal(filled[0][:, ~removed[0]], pixels[0][:, ~removed[0]])


def test_impute_needs_one_mask_per_image_of_its_size() -> None:
    with pytest.raises(ValueError, match=re.escape("removed must be (B, H, W) = (2, 8, 8), got (2, 8, 9)")):
        impute(torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 9, dtype=torch.bool))


class CornerPixel(nn.Module):
    """Class 0 when the top-left pixel's red value is above 0.5, else class 1 (normalisation: none)."""

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        score = normalized[:, 0, 0, 0] - 0.5
        return torch.stack([score, -score], dim=1)


def test_road_defaults_are_seeded_noisy_linear_imputation() -> None:
    """On grey 0.5 images the top-left pixel, once removed, is 0.5 plus the imputation's noise, and
    the noise alone decides the class. Over 8 images (8 draws of noise): the defaults give the
    outcomes of linear imputation with seed 0, and seed 1 others."""
    model = CornerPixel().eval()
    preprocessing = Preprocessing(8, 8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    backbone = Backbone("corner", model, preprocessing, model, None, ["bright", "dark"])
    pixels = torch.full((8, 3, 8, 8), 0.5)
    maps = torch.zeros(8, 8, 8)
    maps[:, 0, 0] = 1.0  # the most relevant pixel, removed first
    classes = torch.zeros(8, dtype=torch.long)

    def outcomes(**options: object) -> list[bool]:
        return road(backbone, pixels, maps, classes, fractions=(0.1,), **options).most_relevant_first[:, 0].tolist()

    default = outcomes()
    assert default == outcomes(imputation="linear", seed=0)
    assert default != outcomes(seed=1) and len(set(default)) == 2


def test_road_scores_each_image_against_its_own_class() -> None:
    """Image 0 shows the object (class 0), image 1 shows it dark (class 1): removing the least
    relevant pixels keeps each image's own class."""
    backbone, pixels, masks = object_world(batch=2)
    pixels[1] = pixels[1].clamp(max=0.3)
    classes = torch.tensor([0, 1])
    assert backbone.logits(pixels).argmax(dim=1).tolist() == [0, 1]
    curves = road(backbone, pixels, masks.float(), classes, fractions=(0.1,), imputation="telea")
    assert curves.least_relevant_first[:, 0].tolist() == [True, True]


@pytest.mark.parametrize("fractions", [(), (0.0, 0.5), (0.5, 1.0), (0.3, 0.3)])
def test_road_fractions_must_be_distinct_increasing_and_inside_zero_to_one(fractions: tuple) -> None:
    backbone, pixels, masks = object_world()
    with pytest.raises(ValueError, match=re.escape("ROAD fractions must be distinct, increasing and in (0, 1)")):
        road(backbone, pixels, masks.float(), torch.zeros(2, dtype=torch.long), fractions=fractions)


def test_ad_ic_of_a_low_resolution_map_upsample_it_first() -> None:
    """By hand, from the protocol: a 16x16 map upsampled by OpenCV (bilinear, pixel centres) to the
    image's 32x32, the top round(X * 1024) of its pixels kept with their values, the image multiplied
    by them; against ad_ic given the 16x16 map. Keeping the top X of the 256 cells first, or resampling
    otherwise, keeps other pixels. (x2: a larger factor makes ties at the image border, which the two
    orders break differently.)"""
    generator = torch.Generator().manual_seed(3)
    model = LinearScore(torch.randn(3, SIZE, SIZE, generator=generator) * 0.05).eval()
    preprocessing = Preprocessing(SIZE, SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    backbone = Backbone("linear", model, preprocessing, model, None, ["scored", "zero"])
    pixels = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    low = torch.rand(2, SIZE // 2, SIZE // 2, generator=generator)
    with torch.no_grad():
        clean = torch.softmax(backbone.logits(pixels), dim=1)
    classes = clean.argmax(dim=1)
    results = ad_ic(backbone, pixels, low, classes)
    for image in range(2):
        upsampled = cv2.resize(low[image].numpy(), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).ravel()
        for fraction in (1.0, 0.5, 0.15):
            top = np.argsort(-upsampled, kind="stable")[: round(fraction * SIZE * SIZE)]
            kept = np.zeros(SIZE * SIZE, dtype=np.float32)
            kept[top] = upsampled[top]
            masked = pixels[image] * torch.from_numpy(kept.reshape(SIZE, SIZE))
            target = int(classes[image])
            o, y = probability(backbone, masked[None], target).item(), clean[image, target].item()
            percent = round(100 * fraction)
            assert results[f"ad_{percent}"][image].item() == pytest.approx(max(0.0, y - o) / y * 100, abs=1e-3)
            assert results[f"ic_{percent}"][image].item() == (o > y)
