"""The baselines against pytorch-grad-cam (same model, same input) and against direct computations."""

import dataclasses
import functools
import re
import threading

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ptame import create_backbone
from ptame.loading.backbones import Backbone, Preprocessing
from ptame.loading.target_layers import tokens_to_grid
from ptame.methods import METHODS
from ptame.methods.ablation_cam import ablation_cam
from ptame.methods.grad_cam import grad_cam
from ptame.methods.grad_cam_plus_plus import grad_cam_plus_plus
from ptame.methods.hooks import capture_target_layer
from ptame.methods.rise import rise, rise_grids, rise_masks
from ptame.methods.score_cam import channel_masks, distinct_channel_maps, score_cam
from ptame.perturb import normalize
from tests.conftest import run_in_threads

BASELINES = {key: method for key, method in METHODS.items() if not method.uses_explainer}  # need no explainer

NUM_CLASSES = 10
SIZE = 32
REFERENCES = {grad_cam: GradCAM, grad_cam_plus_plus: GradCAMPlusPlus, score_cam: ScoreCAM, ablation_cam: AblationCAM}
GRADIENT_FREE = (score_cam, ablation_cam)


def tiny_cnn() -> Backbone:
    """A random-initialised 3-layer CNN; the CAM layer has 24 channels at 1/2 resolution."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, NUM_CLASSES),
    )
    model.requires_grad_(False).eval()
    names = [f"class {index}" for index in range(NUM_CLASSES)]
    return Backbone("tiny-cnn", model, Preprocessing(SIZE, SIZE), model[3], None, names)


def tiny_vit() -> Backbone:
    """A random-initialised 2-block ViT (patch 8, 4x4 grid, 32 channels, a class token)."""
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES
    )
    model.requires_grad_(False).eval()
    reshape = functools.partial(tokens_to_grid, prefix_tokens=1, grid=(4, 4))
    names = [f"class {index}" for index in range(NUM_CLASSES)]
    return Backbone("tiny-vit", model, Preprocessing(SIZE, SIZE), model.blocks[-1].norm1, reshape, names)


BACKBONES = {"cnn": tiny_cnn, "vit": tiny_vit}


def reference_maps(method, backbone: Backbone, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's maps for the same model and input (Ablation-CAM one copy per batch)."""
    normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
    options = {}
    if method is ablation_cam:
        options["ablation_layer"] = AblationLayer() if backbone.reshape_transform is None else AblationLayerVit()
    cam = REFERENCES[method](
        backbone.model, [backbone.target_layer], reshape_transform=backbone.reshape_transform, **options
    )
    if method is ablation_cam:
        # One ablated copy per batch: pytorch-grad-cam takes the batch's minimum again after each
        # write, so in larger batches a layer with negative outputs ablates later copies to lower
        # values; with one copy the value is the image's minimum - 1e7 as in ptame's.
        cam.batch_size = 1
    try:
        inputs = normalized if method in GRADIENT_FREE else normalized.clone().requires_grad_(True)
        maps = cam(inputs, [ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(maps)


def assert_same_maps(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Per-map Pearson correlation >= 0.999 (maps of one constant value must both be all zeros)."""
    assert ours.shape == theirs.shape
    informative = 0
    for mine, reference in zip(ours.double().flatten(1), theirs.double().flatten(1)):
        if reference.std() == 0:
            assert torch.allclose(mine, reference, atol=1e-5)
            continue
        informative += 1
        assert np.corrcoef(mine.numpy(), reference.numpy())[0, 1] >= 0.999
    assert informative >= 1, "no informative map: the comparison would be vacuous"


@pytest.mark.parametrize("kind", list(BACKBONES))
@pytest.mark.parametrize("method", list(REFERENCES), ids=lambda m: m.__name__)
def test_equal_to_pytorch_grad_cam(method, kind: str) -> None:
    backbone = BACKBONES[kind]()
    pixels = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 3, 5, 9])
    ours = method(backbone, pixels, classes)
    assert ours.shape == (4, SIZE, SIZE)
    assert ours.min() >= 0 and ours.max() <= 1
    assert_same_maps(ours, reference_maps(method, backbone, pixels, classes))


# A model whose classes have their evidence in different places, where a wrong class, channel
# weighting or resampling changes the maps: on a 4x4 grid (8x8-pixel cells), channels 0-2 detect
# red, green and blue, channels 3-5 pairs of them; class c weighs channel c up and the other colours
# down. The image has one 8x8 square of colour c in its own corner cell, so each class's evidence is
# a different corner (where the two corner conventions of upsampling differ most).
EVIDENCE_SQUARES = {0: (0, 0), 1: (24, 24), 2: (24, 0)}  # class = colour channel: (top, left) of its square
SQUARE = 8


def evidence_cnn() -> Backbone:
    """conv 8x8 stride 8 (6 hand-set channels) -> ReLU (the CAM layer) -> average -> 3 logits."""
    conv = nn.Conv2d(3, 6, SQUARE, stride=SQUARE)
    linear = nn.Linear(6, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-0.5)
        for colour in range(3):
            conv.weight[colour] = -1 / SQUARE**2
            conv.weight[colour, colour] = 2 / SQUARE**2
        for channel, (first, second) in enumerate([(0, 1), (1, 2), (0, 2)], start=3):
            conv.weight[channel, [first, second]] = 1 / SQUARE**2
        linear.weight.copy_(
            torch.tensor([[3.0, -1, -1, 0.5, 0, 0.5], [-1, 3, -1, 0.5, 0.5, 0], [-1, -1, 3, 0, 0.5, 0.5]])
        )
        linear.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    model.requires_grad_(False).eval()
    return Backbone("evidence-cnn", model, Preprocessing(SIZE, SIZE), model[1], None, ["red", "green", "blue"])


def evidence_image() -> torch.Tensor:
    """(3, SIZE, SIZE) in [0, 1]: grey, with a saturated square of colour c at EVIDENCE_SQUARES[c]."""
    pixels = torch.full((3, SIZE, SIZE), 0.5)
    for colour, (top, left) in EVIDENCE_SQUARES.items():
        pixels[:, top : top + SQUARE, left : left + SQUARE] = 0.1
        pixels[colour, top : top + SQUARE, left : left + SQUARE] = 0.95
    return pixels


@pytest.mark.parametrize("method", list(REFERENCES), ids=lambda m: m.__name__)
def test_each_class_map_shows_its_own_evidence_as_pytorch_grad_cam_does(method) -> None:
    """By hand: the map of class c is brightest on the square of colour c (its mean there exceeds its
    mean on any other square by 0.25); and it equals pytorch-grad-cam's. Scoring another class, weighting channels
    alike or upsampling Score-CAM's masks with the other corner convention breaks one of the two."""
    backbone = evidence_cnn()
    pixels = evidence_image().expand(3, -1, -1, -1)
    classes = torch.arange(3)
    ours = method(backbone, pixels, classes)
    for target, saliency in zip(classes.tolist(), ours):
        means = {
            colour: float(saliency[top : top + SQUARE, left : left + SQUARE].mean())
            for colour, (top, left) in EVIDENCE_SQUARES.items()
        }
        own = means.pop(target)
        assert own >= max(means.values()) + 0.25, (target, own, means)
    assert_same_maps(ours, reference_maps(method, backbone, pixels, classes))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "vit_b_16"])
def test_paper_backbones_equal_to_pytorch_grad_cam(name: str) -> None:
    backbone = create_backbone(name, pretrained=False)
    torch.manual_seed(0)
    for module in backbone.model.modules():  # torchvision's ViT starts with an all-zero head
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
    pixels = torch.rand(2, 3, 224, 224)
    classes = torch.tensor([1, 500])
    for method in (grad_cam, grad_cam_plus_plus):
        assert_same_maps(method(backbone, pixels, classes), reference_maps(method, backbone, pixels, classes))


def test_maps_match_the_input_resolution_for_every_baseline() -> None:
    backbone = tiny_cnn()
    pixels = torch.rand(2, 3, 24, 40)
    for name, method in BASELINES.items():
        options = {"num_masks": 20} if name == "rise" else {}
        maps = method(backbone, pixels, torch.tensor([1, 2]), **options)
        assert maps.shape == (2, 24, 40), name
        assert maps.dtype == torch.float32 and maps.min() >= 0 and maps.max() <= 1, name


def test_gradient_methods_work_inside_inference_mode() -> None:
    backbone = tiny_cnn()
    pixels = torch.rand(2, 3, SIZE, SIZE)
    expected = grad_cam_plus_plus(backbone, pixels, [4, 7])
    with torch.inference_mode():
        inference_pixels = pixels.clone()
        assert torch.equal(grad_cam_plus_plus(backbone, inference_pixels, [4, 7]), expected)


def test_hooks_are_removed_also_after_errors() -> None:
    backbone = tiny_cnn()
    pixels = torch.rand(1, 3, SIZE, SIZE)
    for name, method in BASELINES.items():
        options = {"num_masks": 4} if name == "rise" else {}
        method(backbone, pixels, [1], **options)
        assert not backbone.target_layer._forward_hooks, name
        with pytest.raises(ValueError, match="out of range"):
            method(backbone, pixels, [NUM_CLASSES], **options)
        assert not backbone.target_layer._forward_hooks, name
        assert not backbone.model._forward_hooks, name


def test_capture_ignores_forward_passes_of_other_threads() -> None:
    backbone = tiny_cnn()
    pixels = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad(), capture_target_layer(backbone) as outputs:
        other = threading.Thread(target=backbone.logits, args=(pixels,))
        other.start()
        other.join()
        assert outputs == []
        backbone.logits(pixels)
        assert len(outputs) == 1


def test_concurrent_calls_give_the_sequential_results() -> None:
    backbone = tiny_cnn()
    batches = [torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    expected = [grad_cam(backbone, pixels, [1, 2]) for pixels in batches]
    results: dict[int, torch.Tensor] = {}

    def explain(index: int) -> None:
        for _ in range(5):
            results[index] = grad_cam(backbone, batches[index], [1, 2])

    run_in_threads(explain, len(batches))
    for index, maps in enumerate(expected):
        assert torch.equal(results[index], maps)


@pytest.mark.parametrize(
    ("pixels", "classes", "message"),
    [
        (torch.rand(3, SIZE, SIZE), [0], "(B, 3, H, W)"),
        (torch.rand(1, 1, SIZE, SIZE), [0], "(B, 3, H, W)"),
        (torch.randint(0, 255, (1, 3, SIZE, SIZE)), [0], "floating point"),
        (torch.rand(2, 3, SIZE, SIZE), [0], "1 classes for 2 images"),
        (torch.rand(1, 3, SIZE, SIZE), [-1], ">= 0"),
        (torch.rand(1, 3, SIZE, SIZE), [0.5], "integers"),
    ],
)
def test_bad_input_is_a_clear_error(pixels, classes, message: str) -> None:
    backbone = tiny_cnn()
    for method in BASELINES.values():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            method(backbone, pixels, classes)


def test_a_target_layer_that_runs_twice_or_gives_tokens_is_a_clear_error() -> None:
    torch.manual_seed(0)
    shared = nn.Conv2d(8, 8, 3, padding=1)  # one module called twice in a forward pass
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), shared, nn.ReLU(), shared, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    ).eval()
    twice = Backbone("twice-cnn", model, Preprocessing(SIZE, SIZE), shared, None, ["a", "b"])
    tokens = dataclasses.replace(tiny_vit(), reshape_transform=None)
    pixels, classes = torch.rand(1, 3, SIZE, SIZE), torch.tensor([1])
    ran_twice = "the target layer of twice-cnn ran 2 times in one forward pass; CAM methods need a layer that runs once"
    no_grid = (
        "the target layer of tiny-vit gives a 3-D output; a (B, C, h, w) map is needed "
        "(a transformer backbone needs a reshape_transform)"
    )
    for method in REFERENCES:
        with pytest.raises(ValueError, match=re.escape(ran_twice)):
            method(twice, pixels, classes)
        with pytest.raises(ValueError, match=re.escape(no_grid)):
            method(tokens, pixels, classes)


def streamed_run(method, backbone: Backbone, pixels: torch.Tensor) -> tuple[torch.Tensor, list[int], list[tuple]]:
    """A streamed method's maps of classes 3 and 4 in batches of 5, the batch size of every forward
    pass of the model, and the (done, total) progress calls."""
    batch_sizes = []
    hook = backbone.model.register_forward_hook(lambda module, inputs, output: batch_sizes.append(output.shape[0]))
    calls: list[tuple[int, int]] = []
    try:
        maps = method(backbone, pixels, [3, 4], batch_size=5, progress=lambda done, total: calls.append((done, total)))
    finally:
        hook.remove()
    return maps, batch_sizes, calls


def test_score_cam_streams_batches_and_reports_progress() -> None:
    backbone, pixels = tiny_cnn(), torch.rand(2, 3, SIZE, SIZE)
    maps, batch_sizes, calls = streamed_run(score_cam, backbone, pixels)
    channels = 24
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(later[0] > earlier[0] for earlier, later in zip(calls, calls[1:]))
    assert total <= 2 * channels
    assert batch_sizes[0] == 2 and max(batch_sizes[1:]) <= 5  # one clean pass, then masked batches
    assert sum(batch_sizes[1:]) == total
    assert torch.allclose(maps, score_cam(backbone, pixels, [3, 4], batch_size=64), atol=1e-6)


def test_ablation_cam_streams_batches_and_reports_progress() -> None:
    backbone, pixels = tiny_cnn(), torch.rand(2, 3, SIZE, SIZE)
    maps, batch_sizes, calls = streamed_run(ablation_cam, backbone, pixels)
    total = 2 * 24  # every channel of each image, once
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert batch_sizes == [2] + [5, 5, 5, 5, 4] * 2  # one clean pass, then ablated batches per image
    assert torch.allclose(maps, ablation_cam(backbone, pixels, [3, 4], batch_size=64), atol=1e-6)


def test_score_cam_scores_each_distinct_mask_once() -> None:
    backbone = tiny_cnn()
    conv = backbone.model[2]
    conv.weight[:6] = 0.0  # six dead channels: one all-zero mask between them
    conv.bias[:6] = -1.0
    conv.bias[6:] = 10.0  # the other channels are never all zero
    conv.weight[6] = conv.weight[7] * 2.0  # channel 6 = 2 x channel 7 (exact in floating point): the same mask
    conv.bias[6] = conv.bias[7] * 2.0
    calls: list[tuple[int, int]] = []
    score_cam(backbone, torch.rand(1, 3, SIZE, SIZE), [2], progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][1] == 24 - 5 - 1


def test_distinct_channel_maps() -> None:
    activations = torch.rand(5, 3, 3)
    activations[1] = 2.0 * activations[0]  # the same map up to scale (exact in floating point)
    activations[2] = 0.0
    activations[3] = 7.0  # constant, like a dead channel
    distinct, inverse = distinct_channel_maps(activations)
    assert distinct.shape == (3, 3, 3)
    assert inverse[0] == inverse[1] and inverse[2] == inverse[3]
    assert len({int(inverse[0]), int(inverse[2]), int(inverse[4])}) == 3
    assert torch.equal(distinct[inverse[2]], torch.zeros(3, 3))
    low, high = activations[4].min(), activations[4].max()
    assert torch.allclose(distinct[inverse[4]], (activations[4] - low) / (high - low))


def test_channel_masks_of_a_tiny_span_follow_pytorch_grad_cams_formula() -> None:
    """(x - min) / (max - min + 1e-8), by hand: a span of 1e-6 peaks at 1e-6 / (1e-6 + 1e-8), and a
    constant map is all zeros (upsampling a 2x2 map to 2x2 changes nothing)."""
    maps = torch.tensor([[[0.0, 1e-6], [0.0, 1e-6]], [[0.3, 0.3], [0.3, 0.3]]])
    masks = channel_masks(maps, (2, 2))
    assert masks.shape == (2, 1, 2, 2)
    assert masks[0, 0, :, 1].tolist() == pytest.approx([1e-6 / (1e-6 + 1e-8)] * 2, rel=1e-5)
    assert masks[0, 0, :, 0].tolist() == [0.0, 0.0] and masks[1].eq(0).all()


def test_rise_masks_are_seeded_and_keep_about_p() -> None:
    patterns, shifts = rise_grids(400, grid=7, keep_probability=0.3, seed=5)
    again, again_shifts = rise_grids(400, grid=7, keep_probability=0.3, seed=5)
    other, _ = rise_grids(400, grid=7, keep_probability=0.3, seed=6)
    assert torch.equal(patterns, again) and torch.equal(shifts, again_shifts) and not torch.equal(patterns, other)
    assert set(patterns.unique().tolist()) <= {0.0, 1.0}
    masks = rise_masks(patterns, shifts, (50, 60))
    assert masks.shape == (400, 50, 60) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.03
    assert torch.equal(masks[10:20], rise_masks(patterns[10:20], shifts[10:20], (50, 60)))


def test_rise_is_the_probability_weighted_mean_of_its_masks() -> None:
    backbone = tiny_cnn()
    pixels = torch.rand(2, 3, SIZE, SIZE)
    classes = torch.tensor([2, 6])
    calls: list[tuple[int, int]] = []
    maps = rise(backbone, pixels, classes, num_masks=10, keep_probability=0.4, seed=3, batch_size=4,
                progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    patterns, shifts = rise_grids(10, keep_probability=0.4, seed=3)
    masks = rise_masks(patterns, shifts, (SIZE, SIZE))
    normalized = normalize(pixels, backbone.preprocessing.mean, backbone.preprocessing.std)
    for image in range(2):
        saliency = torch.zeros(SIZE, SIZE)
        for mask in masks:
            with torch.no_grad():
                probability = torch.softmax(backbone.model(normalized[image : image + 1] * mask), dim=1)[
                    0, classes[image]
                ]
            saliency += probability * mask / (10 * 0.4)
        expected = (saliency - saliency.min()) / (saliency.max() - saliency.min())
        assert torch.allclose(maps[image], expected, atol=1e-5)
    assert calls == [(0, 20), (4, 20), (8, 20), (12, 20), (16, 20), (18, 20), (20, 20)]


def test_rise_masks_are_the_patterns_upsampled_and_cropped_at_their_shifts() -> None:
    """A direct computation from RISE's definition (Petsiuk et al. 2018), with OpenCV's bilinear
    resize: cell = ceil(side / grid), each pattern resized to (grid + 1) * cell pixels a side,
    then cropped to the input's size at floor(shift * cell)."""
    import cv2

    generator = torch.Generator().manual_seed(2)
    patterns = (torch.rand(3, 3, 3, generator=generator) < 0.5).float()
    shifts = torch.tensor([[0.0, 0.0], [0.5, 0.9], [0.99, 0.3]])
    height, width = 10, 13
    cell = (4, 5)  # ceil(10 / 3), ceil(13 / 3)
    masks = rise_masks(patterns, shifts, (height, width))
    assert masks.shape == (3, height, width)
    for pattern, (shift_y, shift_x), mask in zip(patterns.numpy(), shifts.tolist(), masks):
        upsampled = cv2.resize(pattern, (4 * cell[1], 4 * cell[0]), interpolation=cv2.INTER_LINEAR)
        top, left = int(shift_y * cell[0]), int(shift_x * cell[1])
        expected = torch.from_numpy(upsampled[top : top + height, left : left + width])
        assert torch.allclose(mask, expected, atol=1e-6)


def test_rise_grids_defaults_and_limits() -> None:
    patterns, shifts = rise_grids(2000)
    assert patterns.shape == (2000, 7, 7) and shifts.shape == (2000, 2)
    assert abs(patterns.mean().item() - 0.5) < 0.02
    assert torch.equal(patterns, rise_grids(2000, seed=0)[0]) and (shifts >= 0).all() and (shifts < 1).all()
    assert rise_grids(1, grid=1, keep_probability=1.0)[0].tolist() == [[[1.0]]]
    for options in ({"num_masks": 0}, {"grid": 0}, {"keep_probability": 0.0}, {"keep_probability": 1.5}):
        arguments = {"num_masks": 4, **options}
        with pytest.raises(ValueError, match="RISE needs num_masks >= 1, grid >= 1 and 0 < keep_probability <= 1"):
            rise_grids(**arguments)
