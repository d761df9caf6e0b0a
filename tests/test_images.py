from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptame.errors import CorruptImage, ImageInputError, ImageTooLarge, ImageTooSmall, NoImage, NotAnImage
from ptame.serving import images
from ptame.serving.images import read_image
from tests.conftest import noise, png_claiming_size


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_rgb_png_is_read_unchanged_and_digest_depends_on_pixels_only(tmp_path: Path) -> None:
    pixels = noise(40, 60)
    checked = read_image(save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert checked.image.mode == "RGB" and checked.notes == ()
    np.testing.assert_array_equal(np.asarray(checked.image), pixels)
    same = read_image(save(Image.fromarray(pixels), tmp_path / "b.bmp"))
    other = read_image(save(Image.fromarray(noise(40, 60, seed=1)), tmp_path / "c.png"))
    assert checked.digest == same.digest != other.digest
    assert read_image(Image.fromarray(pixels)).digest == checked.digest


def test_grayscale_becomes_equal_channels_with_a_note(tmp_path: Path) -> None:
    gray = noise(32, 32)[..., 0]
    checked = read_image(save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    rgb = np.asarray(checked.image)
    assert (rgb == gray[..., None]).all()
    assert "grayscale" in checked.notes[0]


def test_transparent_pixels_are_filled_with_white(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half transparent
    checked = read_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    rgb = np.asarray(checked.image)
    assert (rgb[:16] == (200, 0, 0)).all() and (rgb[16:] == 255).all()
    assert "transparent" in checked.notes[0]


def test_opaque_rgba_has_no_note(tmp_path: Path) -> None:
    rgba = np.full((32, 32, 4), 255, dtype=np.uint8)
    assert read_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "o.png")).notes == ()


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.tile(np.array([0, 257 * 100, 65535], dtype=np.uint16), (32, 11))[:, :32]
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    checked = read_image(path)
    assert sorted(np.unique(np.asarray(checked.image))) == [0, 100, 255]
    assert "16-bit" in checked.notes[0]


def test_cmyk_palette_and_bilevel_images_become_rgb(tmp_path: Path) -> None:
    cmyk = read_image(save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    assert "CMYK" in cmyk.notes[0]
    red = np.asarray(cmyk.image).reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    palette = read_image(save(Image.fromarray(noise(32, 32)).convert("P"), tmp_path / "p.png"))
    assert palette.image.mode == "RGB" and "palette" in palette.notes[0]
    transparent_palette = Image.new("P", (32, 32), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    filled = read_image(save(transparent_palette, tmp_path / "tp.png", transparency=0))
    assert (np.asarray(filled.image) == 255).all()
    bilevel = read_image(save(Image.new("1", (32, 32), 1), tmp_path / "b.png"))
    assert (np.asarray(bilevel.image) == 255).all()


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    checked = read_image(path)
    assert "animated (3 frames)" in checked.notes[0]
    assert tuple(np.asarray(checked.image)[0, 0]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(Image.fromarray(noise(40, 80)), tmp_path / "phone.jpg", exif=exif)
    assert read_image(path).image.size == (40, 80)


def test_large_images_are_scaled_down_with_a_note(tmp_path: Path) -> None:
    path = save(Image.fromarray(noise(2100, 4200)), tmp_path / "wide.jpg", quality=70)
    checked = read_image(path)
    assert min(checked.image.size) == images.WORKING_SIDE and checked.image.size == (2048, 1024)
    assert "scaled down" in checked.notes[-1]


@pytest.mark.parametrize("size", [(1, 1), (15, 400)])
def test_tiny_images_are_refused(tmp_path: Path, size: tuple[int, int]) -> None:
    with pytest.raises(ImageTooSmall, match=f"{size[0]} x {size[1]} pixels"):
        read_image(save(Image.new("RGB", size), tmp_path / "tiny.png"))


def test_12000_square_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = save(Image.new("1", (12000, 12000)), tmp_path / "huge.png")
    with pytest.raises(ImageTooLarge, match="12000 x 12000 pixels .144 megapixels"):
        read_image(path)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = png_claiming_size(tmp_path / "bomb.png", 40000, 40000)
    assert path.stat().st_size < 200
    with pytest.raises(ImageTooLarge, match="refused"):
        read_image(path)


def test_file_over_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)
    path = save(Image.fromarray(noise(64, 64)), tmp_path / "big.png")
    with pytest.raises(ImageTooLarge, match="the limit is"):
        read_image(path)


def test_files_that_are_not_images(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image")
    with pytest.raises(NotAnImage, match="not an image"):
        read_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(NotAnImage, match="empty"):
        read_image(empty)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_files_are_corrupt(tmp_path: Path, suffix: str) -> None:
    whole = save(Image.fromarray(noise(64, 64)), tmp_path / f"whole.{suffix}")
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CorruptImage):
        read_image(cut)


@pytest.mark.parametrize("source", [None, "", "   "])
def test_nothing_submitted(source: str | None) -> None:
    with pytest.raises(NoImage, match="No image"):
        read_image(source)


def test_missing_file_and_error_hierarchy(tmp_path: Path) -> None:
    with pytest.raises(NoImage, match="not a file"):
        read_image(tmp_path / "missing.png")
    for error in (NoImage, NotAnImage, CorruptImage, ImageTooSmall, ImageTooLarge):
        assert issubclass(error, ImageInputError) and issubclass(error, ValueError)
