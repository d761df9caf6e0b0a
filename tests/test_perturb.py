import torch

from ptame.perturb import IMAGENET_MEAN, IMAGENET_STD, mask_pixels, masked_logits, normalize


def test_normalize_channelwise() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    out = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    for channel in range(3):
        expected = (pixels[:, channel] - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out[:, channel], expected)


def test_masking_happens_in_pixel_space() -> None:
    """A zero map gives black pixels, which normalise to -mean/std (not to zero)."""
    seen = []

    def classifier(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return images.mean(dim=(2, 3))

    pixels = torch.rand(1, 3, 8, 8)
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 1.0  # keep the top-left corner
    masked_logits(classifier, pixels, maps, IMAGENET_MEAN, IMAGENET_STD)
    (received,) = seen
    black = normalize(torch.zeros(1, 3, 1, 1), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(received[0, :, 7, 7], black.flatten())
    assert torch.allclose(received, normalize(mask_pixels(pixels, maps), IMAGENET_MEAN, IMAGENET_STD))


def test_mask_pixels_resizes_the_map_bilinearly() -> None:
    pixels = torch.ones(1, 3, 4, 4)
    maps = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    out = mask_pixels(pixels, maps)
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_resize_maps_is_a_half_pixel_bilinear_resize_of_each_map_at_either_rank() -> None:
    """Against OpenCV's bilinear resize (pixel centres at half-integers, as align_corners=False)."""
    import cv2
    import numpy as np

    from ptame.maps import resize_maps

    maps = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    expected = torch.from_numpy(
        np.stack(
            [
                [cv2.resize(channel.numpy(), (15, 12), interpolation=cv2.INTER_LINEAR) for channel in image]
                for image in maps
            ]
        )
    )
    assert torch.allclose(resize_maps(maps, (12, 15)), expected, atol=1e-6)
    assert torch.allclose(resize_maps(maps[:, 0], (12, 15)), expected[:, 0], atol=1e-6)
    assert resize_maps(maps, (4, 5)) is maps


def test_a_constant_map_resized_with_rounding_noise_normalises_to_zeros() -> None:
    """A 1x1 CAM (a tiny input's last layer) resized to 32x32 is one value: no 0/1 pattern from rounding."""
    from ptame.maps import normalize_maps

    single = torch.full((3, 1, 1), 0.3342)
    assert torch.equal(normalize_maps(single, (32, 32)), torch.zeros(3, 32, 32))
    noisy = torch.full((1, 4, 4), 0.3342) + torch.tensor([0.0, 3e-8]).repeat(8).view(1, 4, 4)
    assert torch.equal(normalize_maps(noisy), torch.zeros(1, 4, 4))
    ramp = torch.linspace(0.3, 0.3001, 16).view(1, 4, 4)  # a real, small span is still stretched to [0, 1]
    assert normalize_maps(ramp).min() == 0 and normalize_maps(ramp).max() == 1


def test_normalize_keeps_the_dtype_and_the_precision_of_the_pixels() -> None:
    """float64 pixels are normalised with float64 mean and std (not float32-rounded), bfloat16 stay bfloat16."""
    import numpy as np

    pixels = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (pixels.numpy() - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    out = normalize(pixels, mean, std)
    assert out.dtype == torch.float64
    assert np.abs(out.numpy() - expected).max() < 1e-12
    assert normalize(pixels.to(torch.bfloat16), mean, std).dtype == torch.bfloat16


def test_normalize_works_on_the_pixels_device() -> None:
    """On the meta device (shapes only), a mean or std left on the CPU would be an error."""
    out = normalize(torch.empty(2, 3, 4, 4, device="meta"), IMAGENET_MEAN, IMAGENET_STD)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4)


def test_normalize_maps_scales_each_map_of_a_class_batch_on_its_own() -> None:
    """(B, K, h, w) maps: each of the B x K maps is min-max normalised over its own pixels only."""
    from ptame.maps import normalize_maps

    maps = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]], [[-2.0, -1.0], [0.0, 2.0]]]]).repeat(2, 1, 1, 1)
    maps[1] *= 10
    expected = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.25], [0.5, 1.0]]]]).repeat(2, 1, 1, 1)
    torch.testing.assert_close(normalize_maps(maps), expected)
