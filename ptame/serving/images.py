"""Reading image files a user gives: any mode Pillow opens becomes one RGB image, or a clear error.

Every failure is an ``ImageInputError`` (a ``ValueError``) whose message can be shown to a user
as it is. Conversions that change what the model sees (alpha, 16-bit, CMYK, animation, a large
image scaled down) are reported as notes.
"""

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ptame.errors import CorruptImage, ImageTooLarge, ImageTooSmall, NoImage, NotAnImage

MAX_FILE_BYTES = 25 * 1024 * 1024  # the app's upload limit too (launch(max_file_size=...))
MAX_PIXELS = 8192 * 8192  # 67 MP: larger images are refused before decoding (decompression bombs)
MIN_SIDE = 16  # a smaller image holds too little for a classifier or a map
WORKING_SIDE = 1024  # larger images are scaled down to this shorter side (models use <= 256)
SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"


@dataclass(frozen=True)
class CheckedImage:
    """An image ready for a model.

    Attributes:
        image: RGB, 8 bits per channel, shorter side in [MIN_SIDE, WORKING_SIDE].
        notes: what was changed on the way, one sentence each, for the user.
        digest: SHA-256 of the RGB pixels and size: equal images have equal digests.
    """

    image: Image.Image
    notes: tuple[str, ...]
    digest: str


def pixel_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of an image's mode, size and pixel bytes."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def read_image(source: str | Path | Image.Image | None) -> CheckedImage:
    """Open, check and convert an image file (or an in-memory Pillow image) to RGB.

    Args:
        source: a file path, a Pillow image, or None (nothing was submitted).

    Returns:
        The checked RGB image, the notes on what was converted, and its digest.

    Raises:
        NoImage, NotAnImage, CorruptImage, ImageTooSmall, ImageTooLarge: with a message for
            the user.
    """
    if source is None or (isinstance(source, str) and not source.strip()):
        raise NoImage("No image was given: upload, paste or photograph an image first.")
    if isinstance(source, Image.Image):
        return _checked(source, "the image")
    path = Path(source)
    if not path.is_file():
        raise NoImage(f"{path.name} is not a file (was the upload interrupted?).")
    size = path.stat().st_size
    if size == 0:
        raise NotAnImage(f"{path.name} is empty (0 bytes).")
    if size > MAX_FILE_BYTES:
        raise ImageTooLarge(
            f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB. "
            "Please upload a smaller file."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{path.name} was refused: {error}") from error
    except UnidentifiedImageError as error:
        raise NotAnImage(f"{path.name} is not an image Pillow can read; please upload a {SUPPORTED} file.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImage(f"{path.name} cannot be opened as an image (damaged file?): {error}") from error
    with image:
        return _checked(image, path.name)


def _checked(image: Image.Image, name: str) -> CheckedImage:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(
            f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels (e.g. 8192 x 8192). It was refused without decoding, "
            "as decoding it would take too much memory. Please upload a smaller image."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmall(
            f"{name} is {width} x {height} pixels; both sides must be at least {MIN_SIDE} pixels "
            "for the classifier to see anything."
        )
    notes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"{name} is animated ({frames} frames): its first frame is explained.")
    try:
        image.seek(0)
        if image.format == "JPEG" and min(width, height) >= 2 * WORKING_SIDE:
            scale = WORKING_SIDE / min(width, height)
            image.draft(image.mode, (round(width * scale), round(height * scale)))  # decode at 1/2..1/8
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image, name, notes)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CorruptImage(f"{name} cannot be decoded (truncated or damaged file?): {error}") from error
    if min(rgb.size) > WORKING_SIDE:
        scale = WORKING_SIDE / min(rgb.size)
        reduced = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(reduced, Image.Resampling.LANCZOS, reducing_gap=3.0)
        notes.append(
            f"{name} ({width} x {height}) was scaled down to {reduced[0]} x {reduced[1]} before "
            "explaining; the models see at most a few hundred pixels per side."
        )
    return CheckedImage(image=rgb, notes=tuple(notes), digest=pixel_digest(rgb))


def _to_rgb(image: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> RGB, appending a note for conversions that change the picture."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"{name} has transparent pixels: they were filled with white.")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            low, high = float(values.min()), float(values.max())
            values = (values - low) / max(high - low, 1e-12) * 255.0
            notes.append(f"{name} has floating-point pixels: their range {low:.3g}..{high:.3g} was mapped to 0..255.")
        elif mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0
            notes.append(f"{name} is a 16-bit grayscale image: it was reduced to 8 bits.")
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode in ("L", "1"):
        notes.append(f"{name} is grayscale: the classifier sees it as a colour image with equal channels.")
    elif mode == "P":
        notes.append(f"{name} is a palette (indexed-colour) image: it was converted to RGB.")
    elif mode == "CMYK":
        notes.append(f"{name} is a CMYK (print) image: it was converted to RGB; colours may shift slightly.")
    return image.convert("RGB")
