import numpy as np
import pytest

from ptame.serving.viz import CAPTION_HEIGHT, COLORMAPS, PANEL_GAP, colorize, overlay, side_by_side


def test_colorize_maps_low_and_high_to_the_colormap_ends() -> None:
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    for name in COLORMAPS:
        colours = colorize(ramp, name)
        assert colours.shape == (16, 16, 3) and colours.dtype == np.uint8
        assert not np.array_equal(colours[0, 0], colours[-1, -1])
    jet = colorize(ramp, "jet")
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0  # blue for 0 (RGB order)
    assert jet[-1, -1, 0] > 100 and jet[-1, -1, 2] == 0  # red for 1


def test_colorize_clips_and_cleans_out_of_range_values() -> None:
    values = np.array([[-1.0, np.nan], [2.0, 1.0]], dtype=np.float32)
    colours = colorize(values)
    np.testing.assert_array_equal(colours[0, 0], colours[0, 1])  # -1 and NaN both -> 0
    np.testing.assert_array_equal(colours[1, 0], colours[1, 1])  # 2 -> 1


def test_overlay_blends_with_opacity_and_resizes_the_map() -> None:
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    small_map = np.ones((5, 6), dtype=np.float32)
    np.testing.assert_array_equal(overlay(image, small_map, opacity=0.0), image)
    full = overlay(image, small_map, opacity=1.0, colormap="hot")
    np.testing.assert_array_equal(full, colorize(np.ones((20, 30), np.float32), "hot"))
    half = overlay(image, small_map, opacity=0.5, colormap="hot").astype(int)
    expected = (image.astype(int) + full.astype(int)) / 2
    assert np.abs(half - expected).max() <= 1


@pytest.mark.parametrize(
    ("image", "saliency", "options", "message"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4)), {}, "uint8"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)), {}, "uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {"opacity": 1.5}, "opacity"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {"colormap": "rainbow"}, "unknown colormap"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4)), {}, "saliency map is"),
    ],
)
def test_overlay_rejects_bad_arguments(image, saliency, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        overlay(image, saliency, **options)


def test_side_by_side_places_panels_under_captions() -> None:
    red = np.zeros((10, 12, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((10, 7, 3), np.uint8)
    blue[..., 2] = 255
    figure = side_by_side([("red", red), ("blue", blue)])
    assert figure.shape == (CAPTION_HEIGHT + 10, 12 + PANEL_GAP + 7, 3)
    np.testing.assert_array_equal(figure[CAPTION_HEIGHT:, :12], red)
    np.testing.assert_array_equal(figure[CAPTION_HEIGHT:, 12 + PANEL_GAP :], blue)
    assert (figure[CAPTION_HEIGHT:, 12 : 12 + PANEL_GAP] == 255).all()
    assert (figure[:CAPTION_HEIGHT] < 128).any()  # the caption text is drawn in black


def test_side_by_side_rejects_mixed_heights_and_no_panels() -> None:
    with pytest.raises(ValueError, match="one height"):
        side_by_side([("a", np.zeros((4, 4, 3), np.uint8)), ("b", np.zeros((5, 4, 3), np.uint8))])
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])


def test_long_captions_shrink_to_their_panel() -> None:
    narrow = np.full((10, 40, 3), 255, np.uint8)
    figure = side_by_side([("a very long caption indeed, far wider than forty pixels", narrow), ("b", narrow)])
    caption_band = figure[:CAPTION_HEIGHT]
    assert (caption_band[:, :40] < 128).any()
    assert (caption_band[:, 40 : 40 + PANEL_GAP] == 255).all()  # nothing drawn over the gap
