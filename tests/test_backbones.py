import pytest
import torch
from PIL import Image

from ptame import create_backbone
from ptame.loading.backbones import PAPER_PREPROCESSING, imagenet_class_names


def target_activation(backbone, pixels: torch.Tensor) -> torch.Tensor:
    captured = []
    handle = backbone.target_layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        backbone.logits(pixels)
    handle.remove()
    activation = captured[0]
    return backbone.reshape_transform(activation) if backbone.reshape_transform else activation


@pytest.mark.parametrize(
    ("name", "target_shape"),
    [("vgg16", (1, 512, 14, 14)), ("resnet50", (1, 2048, 7, 7)), ("vit_b_16", (1, 768, 14, 14))],
)
def test_paper_backbones_build_offline(name: str, target_shape: tuple[int, ...]) -> None:
    backbone = create_backbone(name, pretrained=False)
    pixels = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert backbone.logits(pixels).shape == (1, 1000)
    assert target_activation(backbone, pixels).shape == target_shape
    assert backbone.preprocessing == PAPER_PREPROCESSING
    assert len(backbone.class_names) == 1000
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_any_timm_model_and_transformer_grid() -> None:
    backbone = create_backbone("vit_tiny_patch16_224", pretrained=False)
    assert target_activation(backbone, torch.rand(1, 3, 224, 224)).shape == (1, 192, 14, 14)
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5)


def test_imagenet_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench"
    assert names[207] == "golden retriever"


def test_preprocessing_gives_a_pixel_space_crop() -> None:
    image = Image.new("RGB", (500, 300), (255, 0, 128))
    pixels = PAPER_PREPROCESSING.transform()(image)
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == torch.float32
    assert torch.allclose(pixels[:, 100, 100], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-3)
