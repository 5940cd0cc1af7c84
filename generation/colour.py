"""Colour profiles: every picture reaches the model in sRGB.

Phones and cameras often save photos in a wider colour space than sRGB (iPhones in Display P3,
cameras in Adobe RGB) and say so in an embedded ICC profile. SVD was trained on sRGB pictures and
our clips are played back as sRGB, so reading those pixel values as if they were sRGB would make
every such photo look washed out and shift its skin tones. Pillow reads the profile but does not
apply it; littlecms (bundled with Pillow's wheels, through `PIL.ImageCms`) converts the pixels.
"""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageCms

log = logging.getLogger(__name__)

# The ICC colour space a profile must describe for each image mode we can convert from.
_SPACE_OF_MODE = {"RGB": "RGB", "RGBA": "RGB", "L": "GRAY", "LA": "GRAY", "CMYK": "CMYK"}


def to_srgb(image: Image.Image) -> Image.Image:
    """`image` with its embedded ICC profile applied: RGB (RGBA when it has alpha) in sRGB.

    A picture without a profile is taken to be sRGB already, as browsers and Discord do, and is
    returned as it is. So is one whose profile is damaged or does not match its pixels: a member
    should still get their clip, in the colours the file holds.
    """
    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # Read here, not where it is compared: a colour-space field that is not ASCII raises
        # UnicodeDecodeError (a ValueError), and a damaged profile must cost nothing.
        profile_space = source.profile.xcolor_space.strip()
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError):
        log.info("ignoring a damaged colour profile")
        return image
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        # A palette, or a colour key (PNG's tRNS): the converted pixels no longer match the key,
        # so it becomes an alpha channel first, which the conversion carries over.
        keyed = "transparency" in image.info
        image = image.convert(("LA" if image.mode == "L" else "RGBA") if keyed else "RGB")
    space = _SPACE_OF_MODE.get(image.mode)
    if space is None or profile_space != space:
        log.info("ignoring a %s colour profile on a %s picture", profile_space, image.mode)
        return image
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    pixels = image.convert(image.mode[:-1]) if alpha is not None else image
    try:
        # Perceptual intent: out-of-gamut colours are compressed smoothly rather than clipped
        # (matrix profiles, the usual kind in photos, fall back to relative colorimetric).
        converted = ImageCms.profileToProfile(
            pixels,
            source,
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
    except (OSError, ValueError, ImageCms.PyCMSError):
        log.info("could not apply a colour profile; using the pixels as stored", exc_info=True)
        return image
    assert converted is not None  # profileToProfile returns None only with inPlace=True
    if alpha is not None:
        converted.putalpha(alpha)
    return converted
