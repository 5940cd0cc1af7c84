"""Turning an uploaded file into the still picture SVD animates.

`load_image` checks untrusted bytes (type, size, pixel count, integrity) and returns an upright sRGB
picture plus notes for the user; `fit_image` centre-crops it to 16:9 (or 9:16), or fits it whole
on a blurred backdrop, at the model's size. Refusals are `InvalidImage` errors whose message
says what to send instead.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageFilter, ImageOps, UnidentifiedImageError, features

from generation.colour import to_srgb
from generation.errors import InvalidImage
from generation.options import Fit

# Only these decoders see user bytes: Pillow knows dozens of formats, most of them rarely used and
# less hardened, and these are what people actually post: the web's four, and the AVIF (Pillow's
# own plugin) and HEIC (pillow-heif's libheif) photos that phones take.
WEB_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# ISO base media file brands (bytes 8-12 of the file) of HEIF and AVIF pictures.
_HEIF_BRANDS = (
    *(b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"),
    *(b"avif", b"avis"),
)
SEND_INSTEAD = "Please send a PNG, JPEG, WebP or GIF picture."
# Transparent areas become this colour: what most people expect behind a logo or sticker.
BACKGROUND = (255, 255, 255)

ANIMATED_NOTE = "Your image was animated; I used its first frame."
TRANSPARENT_NOTE = "Your image had transparent areas; I filled them with white."


@dataclass(frozen=True)
class ImageLimits:
    """What the host accepts; the defaults suit a bot on a single GPU."""

    max_bytes: int = 25 * 1024 * 1024
    # Checked from the file's header before any pixel is decoded. Pillow refuses on its own above
    # 2 x Image.MAX_IMAGE_PIXELS (about 179 million), so larger values have no effect.
    max_pixels: int = 40_000_000
    # Below this on either side there is too little picture to animate.
    min_side: int = 64


@dataclass(frozen=True)
class LoadedImage:
    """An upright RGB picture and what the user should know about how we read it."""

    image: Image.Image
    notes: tuple[str, ...]
    # Width and height as the user sees the picture (after EXIF rotation), before any cropping.
    original_size: tuple[int, int]
    # Pillow's name for the file type: "PNG", "JPEG", "WEBP" or "GIF".
    format: str


def target_size(width: int, height: int, resolution: int = 1024) -> tuple[int, int]:
    """The clip size for a picture of `width` x `height`: landscape or portrait by its shape.

    `resolution` is the long side and must be a multiple of 64 from 256 up. The short side is
    9/16 of it rounded to the nearest multiple of 16 (ties go down): 1024 -> 576, 768 -> 432,
    512 -> 288, 256 -> 144. Multiples of 16 keep the latents (1/8 of the image) even and H.264's
    macroblocks whole; the UNet copes with latents that are not a multiple of its 8x downsampling
    (it forwards the skip sizes to its upsamplers), so the short side need not be a multiple of 64.
    Square pictures count as landscape.
    """
    if resolution < 256 or resolution % 64:
        raise ValueError(f"resolution must be a multiple of 64 from 256 up, not {resolution}")
    # round(resolution * 9 / 16 / 16) * 16 in integers, with ties rounding down.
    short = 16 * ((resolution * 9 + 127) // 256)
    return (resolution, short) if width >= height else (short, resolution)


def crop_box(width: int, height: int, target: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred box of a `width` x `height` picture with the aspect ratio of `target`.

    Fractional edges are kept (Pillow's `resize(box=...)` accepts them), so the ratio is exact.
    """
    target_w, target_h = target
    if width * target_h > height * target_w:  # wider than the target: trim the sides
        crop_w = height * target_w / target_h
        left = (width - crop_w) / 2
        return (left, 0.0, left + crop_w, float(height))
    crop_h = width * target_h / target_w  # taller (or equal): trim top and bottom
    top = (height - crop_h) / 2
    return (0.0, top, float(width), top + crop_h)


def fit_image(image: Image.Image, resolution: int, fit: Fit = "crop") -> Image.Image:
    """`image` at `target_size`, never stretched: centre-cropped to 16:9 or 9:16 ("crop"), or
    whole, on a blurred, enlarged copy of itself that fills the rest ("whole")."""
    size = target_size(image.width, image.height, resolution)
    if fit == "crop":
        box = crop_box(image.width, image.height, size)
        # reducing_gap: shrink big photos in two passes, much faster with no visible difference.
        return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    scale = min(size[0] / image.width, size[1] / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    picture = image.resize(inner, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if inner == size:
        return picture  # already the clip's shape: nothing to fill
    # A blurred backdrop rather than bars: SVD animates flat bars as smears and flicker, while
    # the picture's own colours continue it softly. The whole picture stretched (the blur hides
    # it), so each edge continues what is beside it; made from the shrunk picture, blurred
    # small and then enlarged: the same look for a fraction of the work.
    small = (max(1, size[0] // 8), max(1, size[1] // 8))
    backdrop = picture.resize(small, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    backdrop = backdrop.resize(size, Image.Resampling.BICUBIC)
    backdrop.paste(picture, ((size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2))
    return backdrop


ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})


def load_image(data: bytes, limits: ImageLimits) -> LoadedImage:
    """Check and decode an uploaded file; raise `InvalidImage` saying what to send instead."""
    if not data:
        raise InvalidImage(f"The file is empty (0 bytes). {SEND_INSTEAD}")
    if len(data) > limits.max_bytes:
        raise InvalidImage(
            f"The file is {_megabytes(len(data))}; the limit is {_megabytes(limits.max_bytes)}. "
            "Please send a smaller picture (a JPEG is usually much smaller than a PNG)."
        )
    known = _sniff_non_image(data)
    if known is not None:
        raise InvalidImage(known)

    image = _open(data, limits)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidImage(_too_many_pixels(width, height, limits))
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"The picture is only {width}×{height} pixels; it needs at least {limits.min_side} "
            "on each side. Please send a larger picture."
        )

    file_format = str(image.format)
    notes: list[str] = []
    # Only formats that animate: phones' JPEGs with a gain map or depth image open as MPO with
    # several "frames", and HEIC can hold bursts, but they are still photos.
    if file_format in ANIMATED_FORMATS and _is_animated(image):
        # A freshly opened file is positioned on its first frame; loading decodes just that one.
        notes.append(ANIMATED_NOTE)
    _verify(data)
    upright = _upright(_decode(image))
    original_size = upright.size
    rgb, flattened = _to_rgb(to_srgb(upright))
    if flattened:
        notes.append(TRANSPARENT_NOTE)
    return LoadedImage(
        image=rgb, notes=tuple(notes), original_size=original_size, format=file_format
    )


@functools.cache
def allowed_formats() -> tuple[str, ...]:
    """The decoders user bytes may reach: the web's four, and AVIF and HEIC where this install
    can read them (pillow-heif is a dependency, but its wheels are not on every platform)."""
    phone = []
    if features.check("avif"):
        phone.append("AVIF")
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        # Registers its opener with Pillow: process-wide, once (this function is cached).
        pillow_heif.register_heif_opener(thumbnails=False)
        phone.append("HEIF")
    return WEB_FORMATS + tuple(phone)


def _open(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    """Read the header only (no pixels yet), refusing what Pillow cannot identify."""
    try:
        image = Image.open(io.BytesIO(data), formats=allowed_formats())
    except Image.DecompressionBombError:
        # Pillow refuses headers past twice its own cap before we see the size.
        raise InvalidImage(
            f"The picture has far too many pixels (the limit is {_megapixels(limits.max_pixels)}). "
            "Please send a smaller picture."
        ) from None
    except Image.DecompressionBombWarning:
        # Only raised where warnings are errors (as in the tests); the size check below refuses
        # the same pictures, so treat both alike.
        raise InvalidImage(
            f"The picture has too many pixels (the limit is {_megapixels(limits.max_pixels)}). "
            "Please send a smaller picture."
        ) from None
    except UnidentifiedImageError:
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            # Named a HEIC/AVIF picture, but its decoder could not make sense of it.
            raise InvalidImage(_CORRUPT) from None
        raise InvalidImage(f"I couldn't read that file as a picture. {SEND_INSTEAD}") from None
    # A recognised type whose header is damaged. Any type: Pillow's plugins raise many (OSError,
    # SyntaxError, ValueError, EOFError; the AVIF plugin's RuntimeError "Failed to decode image").
    except Exception:
        raise InvalidImage(_CORRUPT) from None
    return image


_CORRUPT = (
    "The picture seems to be damaged or incomplete (it could not be decoded). "
    f"Please upload it again, or save it anew. {SEND_INSTEAD}"
)


def _is_animated(image: ImageFile.ImageFile) -> bool:
    """Whether it has more than one frame. Asking reads the second frame's header (and seeks
    back), so a file cut short there fails here, with Pillow's decoder errors."""
    try:
        return bool(getattr(image, "is_animated", False))
    except Exception:
        raise InvalidImage(_CORRUPT) from None


def _verify(data: bytes) -> None:
    """Check the file's own checksums (PNG's per-chunk CRCs): damage in transit can still decode."""
    try:
        # verify() leaves the image unusable, hence a second, throwaway open.
        Image.open(io.BytesIO(data), formats=allowed_formats()).verify()
    except Exception:
        raise InvalidImage(_CORRUPT) from None


def _decode(image: ImageFile.ImageFile) -> Image.Image:
    """Decode every pixel of the current frame now, so a truncated file fails here, not later."""
    try:
        image.load()
    # Pillow's decoders raise many unrelated types on malformed input (OSError for truncation,
    # SyntaxError, ValueError, struct.error, zlib errors...); all mean the same to the user.
    except Exception:
        raise InvalidImage(_CORRUPT) from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store portraits sideways and set a flag)."""
    try:
        return ImageOps.exif_transpose(image)
    # Damaged EXIF must not cost the user their picture: show it as stored.
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """Plain 8-bit RGB; transparent areas composited onto `BACKGROUND`. Says if any were."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit greyscale PNGs: Pillow's convert clips to 0-255 instead of scaling.
        wide = np.asarray(image).astype(np.uint32)
        grey = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
        key = image.info.get("transparency")
        if isinstance(key, int):
            # Its tRNS names one 16-bit grey as transparent: keep that as an alpha channel.
            alpha = Image.fromarray(np.where(wide == key, 0, 255).astype(np.uint8))
            image = Image.merge("LA", (grey, alpha))
        else:
            image = grey
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB"), False
    rgba = image.convert("RGBA")
    low_alpha, _ = rgba.getchannel("A").getextrema()
    if low_alpha == 255:  # an alpha channel that is fully opaque changes nothing
        return rgba.convert("RGB"), False
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB"), True


def _sniff_non_image(data: bytes) -> str | None:
    """A specific message for common files that are not still images, from their first bytes."""
    head = data[:64]
    if head.startswith(b"%PDF"):
        return f"That's a PDF document, not a picture. Export the page as an image. {SEND_INSTEAD}"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            kind = "AVIF" if brand in (b"avif", b"avis") else "HEIF"
            if kind in allowed_formats():
                return None
            return (
                "HEIC/AVIF photos can't be read on this server. Share it as JPEG instead (on an "
                f"iPhone: Settings → Camera → Formats → Most Compatible). {SEND_INSTEAD}"
            )
        return _video("MP4/MOV")
    if head.startswith(b"\x1aE\xdf\xa3"):
        return _video("WebM/MKV")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return _video("AVI")
    text = head.lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:1024].lower():
        return f"SVG drawings aren't supported; export it as PNG first. {SEND_INSTEAD}"
    return None


def _video(kind: str) -> str:
    return f"That's a video ({kind}), not a still picture. Send one frame of it. {SEND_INSTEAD}"


def _too_many_pixels(width: int, height: int, limits: ImageLimits) -> str:
    return (
        f"The picture is {width}×{height} ({_megapixels(width * height)}); the limit is "
        f"{_megapixels(limits.max_pixels)}. Please send a smaller picture."
    )


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.0f} megapixels"
