"""Colour profiles: a Display P3 photo reaches the model with the colours its owner saw.

The profiles are built here byte by byte (ICC v2 matrix/TRC profiles, the kind phones embed), and
the expected sRGB values are computed with numpy from the same primaries, independently of
littlecms.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from generation.colour import to_srgb
from generation.images import TRANSPARENT_NOTE, ImageLimits, load_image

# Colorants adapted to the ICC's D50 white, as in Apple's Display P3 and the ICC's sRGB profiles.
P3_D50 = np.array(
    [
        [0.515102, 0.291965, 0.157153],
        [0.241182, 0.692236, 0.066582],
        [-0.001049, 0.041882, 0.784378],
    ]
)
SRGB_D50 = np.array(
    [
        [0.4360747, 0.3850649, 0.1430804],
        [0.2225045, 0.7168786, 0.0606169],
        [0.0139322, 0.0971045, 0.7141733],
    ]
)
D50 = (0.9642, 1.0, 0.8249)
# The profile's tone curve: a plain gamma, stored as u8Fixed8 (563/256 = 2.199).
GAMMA_U8F8 = 563


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15f16(x) + _s15f16(y) + _s15f16(z)


def _desc(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)  # no ScriptCode description
        + b"\0" * 67
    )


def icc_profile(space: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 display profile in `space` (b"RGB " or b"GRAY") with these tags."""
    tags = {b"desc": _desc("test profile"), b"wtpt": _xyz(*D50), **tags}
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, data = b"", b""
    for signature, body in tags.items():
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = 128 + table_size + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntr"
        + space
        + b"XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)  # rendering intent
        + b"".join(_s15f16(v) for v in D50)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def gamma_curve() -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, GAMMA_U8F8) + b"\0\0"


def display_p3_gamma() -> bytes:
    """Display P3 primaries with a gamma 2.2 tone curve."""
    columns = P3_D50.T
    return icc_profile(
        b"RGB ",
        {
            b"rXYZ": _xyz(*columns[0]),
            b"gXYZ": _xyz(*columns[1]),
            b"bXYZ": _xyz(*columns[2]),
            b"rTRC": gamma_curve(),
            b"gTRC": gamma_curve(),
            b"bTRC": gamma_curve(),
        },
    )


def gray_gamma() -> bytes:
    return icc_profile(b"GRAY", {b"kTRC": gamma_curve()})


def expected_srgb(p3_pixel: tuple[int, int, int]) -> np.ndarray:
    linear = (np.array(p3_pixel) / 255.0) ** (GAMMA_U8F8 / 256)
    srgb_linear = np.clip(np.linalg.solve(SRGB_D50, P3_D50 @ linear), 0.0, 1.0)
    encoded = np.where(
        srgb_linear <= 0.0031308,
        12.92 * srgb_linear,
        1.055 * srgb_linear ** (1 / 2.4) - 0.055,
    )
    return encoded * 255.0


def tagged(color: tuple[int, ...], mode: str, profile: bytes, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (96, 64), color).save(out, fmt, icc_profile=profile)
    return out.getvalue()


# In-gamut colours whose P3 and sRGB encodings differ by more than the tolerance.
P3_COLOURS = [(200, 120, 90), (60, 160, 80), (40, 90, 200), (128, 128, 128)]


@pytest.mark.parametrize("colour", P3_COLOURS)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_display_p3_photo_is_converted_to_srgb(colour: tuple[int, int, int], fmt: str) -> None:
    data = tagged(colour, "RGB", display_p3_gamma(), fmt)
    picture = load_image(data, ImageLimits()).image
    assert picture.mode == "RGB"
    got = np.asarray(picture, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    want = expected_srgb(colour)
    # JPEG and WebP are lossy: compare with the decoded (untagged) pixels' own error added.
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    codec_error = np.abs(stored.reshape(-1, 3).mean(axis=0) - np.array(colour))
    assert np.all(np.abs(got - want) <= 2.5 + 2 * codec_error), (got, want)


def test_the_conversion_changes_what_an_untagged_reading_would_show() -> None:
    # The test above would also pass for colours P3 and sRGB agree on; this one shows the change
    # matters: a P3 skin tone read as sRGB would be visibly off.
    colour = (200, 120, 90)
    assert np.max(np.abs(expected_srgb(colour) - np.array(colour))) > 10


def test_an_untagged_picture_is_left_exactly_as_it_is() -> None:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 120, 90)).save(out, "PNG")
    picture = load_image(out.getvalue(), ImageLimits()).image
    assert picture.getpixel((10, 10)) == (200, 120, 90)


def test_transparency_survives_the_conversion_and_is_filled_after() -> None:
    image = Image.new("RGBA", (96, 64), (200, 120, 90, 255))
    image.paste((0, 0, 0, 0), (0, 0, 48, 64))
    out = io.BytesIO()
    image.save(out, "PNG", icc_profile=display_p3_gamma())
    loaded = load_image(out.getvalue(), ImageLimits())
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)
    right = np.array(loaded.image.getpixel((80, 10)), dtype=np.float64)
    assert np.all(np.abs(right - expected_srgb((200, 120, 90))) <= 2.5)


def test_a_grey_picture_with_a_grey_profile_is_converted() -> None:
    data = tagged((128,), "L", gray_gamma())
    picture = load_image(data, ImageLimits()).image
    assert picture.mode == "RGB"
    r, g, b = picture.getpixel((10, 10))
    assert r == g == b
    # Gamma 2.2 grey 128 is 21.8 % linear light, which sRGB encodes as about 129.
    linear = (128 / 255) ** (GAMMA_U8F8 / 256)
    want = (1.055 * linear ** (1 / 2.4) - 0.055) * 255
    assert abs(r - want) <= 2.5


@pytest.mark.parametrize(
    "profile",
    [
        b"not a profile at all",
        display_p3_gamma()[:200],
        gray_gamma(),
        # Its colour-space field is not ASCII: reading it raised UnicodeDecodeError.
        display_p3_gamma()[:16] + b"\xfdGB " + display_p3_gamma()[20:],
    ],
    ids=["garbage", "truncated", "grey-profile-on-colour", "non-ascii-colour-space"],
)
def test_a_damaged_or_mismatched_profile_keeps_the_pixels_as_stored(profile: bytes) -> None:
    data = tagged((200, 120, 90), "RGB", profile)
    picture = to_srgb(Image.open(io.BytesIO(data)))
    assert picture.convert("RGB").getpixel((10, 10)) == (200, 120, 90)
    # And the whole upload path still serves the member.
    assert load_image(data, ImageLimits()).image.getpixel((10, 10)) == (200, 120, 90)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_still_marks_transparency_after_the_conversion(mode: str) -> None:
    # PNG's tRNS chunk: one colour stands for "transparent", with no alpha channel.
    key = (255, 0, 0) if mode == "RGB" else 0
    image = Image.new(mode, (96, 64), (200, 120, 90) if mode == "RGB" else 200)
    image.paste(key, (0, 0, 48, 64))
    profile = display_p3_gamma() if mode == "RGB" else gray_gamma()
    out = io.BytesIO()
    image.save(out, "PNG", transparency=key, icc_profile=profile)
    loaded = load_image(out.getvalue(), ImageLimits())
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)
    assert TRANSPARENT_NOTE in loaded.notes
