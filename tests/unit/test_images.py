"""Image input: what we refuse (and how we say so), what we fix, and the crop geometry.

Every bad file is built here, byte by byte where needed, so the tests show what each one is.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw, features

from generation.errors import InvalidImage
from generation.images import (
    ANIMATED_NOTE,
    TRANSPARENT_NOTE,
    ImageLimits,
    allowed_formats,
    crop_box,
    fit_image,
    load_image,
    target_size,
)

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing `width` x `height` RGB pixels, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def photo(width: int = 320, height: int = 200) -> Image.Image:
    """A picture with some structure (gradients), so that decoders have real work to do."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))], -1)
    rgb = np.concatenate([rgb, np.full((height, width, 1), 90, np.float32)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def refusal(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidImage) as caught:
        load_image(data, limits)
    return caught.value.user_message


# --- target size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "landscape"),
    [(1024, (1024, 576)), (768, (768, 432)), (512, (512, 288)), (256, (256, 144))],
)
def test_target_size_follows_16_9_and_turns_for_portraits(
    resolution: int, landscape: tuple[int, int]
) -> None:
    assert target_size(1920, 1080, resolution) == landscape
    assert target_size(1080, 1920, resolution) == landscape[::-1]


def test_square_pictures_become_landscape() -> None:
    assert target_size(800, 800) == (1024, 576)


@pytest.mark.parametrize("resolution", range(256, 4097, 64))
def test_short_side_is_a_multiple_of_16_close_to_16_9(resolution: int) -> None:
    long_side, short_side = target_size(2, 1, resolution)
    assert long_side == resolution
    assert short_side % 16 == 0
    assert abs(short_side - resolution * 9 / 16) <= 8


@pytest.mark.parametrize("resolution", [0, 128, 192, 1000, 1025])
def test_target_size_refuses_resolutions_the_model_cannot_use(resolution: int) -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        target_size(100, 100, resolution)


# --- crop geometry -------------------------------------------------------------------------------


@given(
    width=st.integers(64, 20_000),
    height=st.integers(64, 20_000),
    resolution=st.sampled_from([256, 512, 1024]),
)
def test_crop_box_keeps_the_target_ratio_inside_the_picture_and_centred(
    width: int, height: int, resolution: int
) -> None:
    target = target_size(width, height, resolution)
    left, top, right, bottom = crop_box(width, height, target)
    assert 0 <= left < right <= width
    assert 0 <= top < bottom <= height
    # Same aspect ratio as the target: no stretching when it is resized.
    assert (right - left) / (bottom - top) == pytest.approx(target[0] / target[1], rel=1e-9)
    # Centred, and as large as possible: one side of the picture is kept whole.
    assert left == pytest.approx(width - right)
    assert top == pytest.approx(height - bottom)
    assert right - left == pytest.approx(width) or bottom - top == pytest.approx(height)


def circle_picture(width: int, height: int, radius: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    cx, cy = width // 2, height // 2
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), "black")
    return image


def dark_extent(image: Image.Image) -> tuple[int, int]:
    dark = np.asarray(image.convert("L")) < 128
    rows, cols = np.nonzero(dark.any(axis=1))[0], np.nonzero(dark.any(axis=0))[0]
    return int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (3000, 1000, (512, 288)),  # wide photo
        (1000, 3000, (288, 512)),  # tall phone screenshot
        (1200, 1200, (512, 288)),  # square
        (8000, 600, (512, 288)),  # extreme panorama
        (500, 6000, (288, 512)),  # extreme vertical strip
        (1920, 1080, (512, 288)),  # already 16:9
    ],
)
def test_fit_image_crops_instead_of_stretching(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    radius = min(width, height) // 4
    fitted = fit_image(circle_picture(width, height, radius), 512)
    assert fitted.size == expected
    circle_w, circle_h = dark_extent(fitted)
    # A stretched picture would turn the circle into an ellipse.
    assert circle_w == pytest.approx(circle_h, abs=2)
    # The crop is centred: the circle stays in the middle of the clip.
    dark = np.asarray(fitted.convert("L")) < 128
    rows, cols = np.nonzero(dark)
    assert cols.mean() == pytest.approx(expected[0] / 2, abs=2)
    assert rows.mean() == pytest.approx(expected[1] / 2, abs=2)


def banded_square(side: int = 400) -> Image.Image:
    """Red, with a blue band along the top and a green one along the bottom: what a crop to
    16:9 cuts off."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[:] = (220, 30, 30)
    pixels[: side // 10] = (30, 30, 220)
    pixels[-side // 10 :] = (30, 200, 30)
    return Image.fromarray(pixels)


def test_fit_whole_keeps_the_whole_picture_on_a_blurred_copy_of_itself() -> None:
    square = banded_square()
    cropped = np.asarray(fit_image(square, 256))
    whole = np.asarray(fit_image(square, 256, "whole"))
    assert cropped.shape == whole.shape == (144, 256, 3)
    # The crop loses both bands; the whole picture keeps them, unstretched, in the middle.
    assert tuple(cropped[2, 128]) == tuple(cropped[-3, 128]) == (220, 30, 30)
    assert whole[2, 128, 2] > 200 and whole[-3, 128, 1] > 180
    assert whole[72, 128, 0] > 200  # the red middle
    # Beside it, no flat bars: its own colours, blurred, each edge continuing what is beside it.
    side = whole[:, :40].astype(int)
    assert np.abs(side[72] - (220, 30, 30)).max() < 30
    assert side[0, :, 2].mean() > side[72, :, 2].mean() + 60  # the blue band, blurred
    assert side[-1, :, 1].mean() > side[72, :, 1].mean() + 60  # the green one
    # A picture already 16:9 has nothing to fill: the same as cropped.
    wide = banded_square().resize((1920, 1080))
    unfilled = np.asarray(fit_image(wide, 256, "whole")).astype(int)
    assert np.abs(unfilled - np.asarray(fit_image(wide, 256))).max() <= 2


# --- refusals ------------------------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    message = refusal(b"")
    assert "empty" in message
    assert "PNG, JPEG, WebP or GIF" in message


def test_file_over_the_byte_limit_is_refused_before_decoding() -> None:
    data = encode(photo(), "PNG")
    message = refusal(data, ImageLimits(max_bytes=len(data) - 1))
    assert "limit" in message
    # The exact same file passes when it fits.
    assert load_image(data, ImageLimits(max_bytes=len(data))).image.size == (320, 200)


def test_text_file_named_png_is_refused() -> None:
    text = b"These are my holiday notes, saved as notes.png by mistake.\n" * 20
    message = refusal(text)
    assert "couldn't read" in message
    assert "PNG, JPEG, WebP or GIF" in message


@pytest.mark.parametrize(
    ("head", "word"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(64), "video"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(64), "video"),
        (b"\x1aE\xdf\xa3\x9fB\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04webm" + bytes(64), "video"),
        (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(64), "video"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    ],
)
def test_documents_and_videos_are_named_in_the_refusal(head: bytes, word: str) -> None:
    message = refusal(head)
    assert word in message
    assert "PNG, JPEG, WebP or GIF" in message


def phone_photo(fmt: str, size: tuple[int, int] = (400, 300), **params: object) -> bytes:
    """A photo as phones save them: HEIC (through pillow-heif) or AVIF (Pillow's own)."""
    allowed_formats()  # registers the HEIF plugin with Pillow
    return encode(photo(*size), fmt, quality=90, **params)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_photos_are_read(fmt: str) -> None:
    data = phone_photo(fmt, (400, 300))
    assert data[4:8] == b"ftyp"
    loaded = load_image(data, LIMITS)
    assert loaded.format == fmt and loaded.image.size == (400, 300) and loaded.notes == ()
    # Lossy, but the same picture: compare with the source's pixels.
    source = np.asarray(photo(400, 300), dtype=np.float64)
    assert np.abs(np.asarray(loaded.image, dtype=np.float64) - source).mean() < 6


def test_a_heic_photo_in_display_p3_reaches_the_model_in_srgb() -> None:
    from tests.unit.test_colour import display_p3_gamma, expected_srgb

    allowed_formats()
    out = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 120, 90)).save(
        out, "HEIF", quality=95, icc_profile=display_p3_gamma()
    )
    got = np.asarray(load_image(out.getvalue(), LIMITS).image, dtype=np.float64)
    assert np.abs(got.reshape(-1, 3).mean(axis=0) - expected_srgb((200, 120, 90))).max() < 4


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_truncated_heic_and_avif_are_refused_as_damaged(fmt: str) -> None:
    data = phone_photo(fmt, (640, 480))
    assert "damaged or incomplete" in refusal(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "JPEG"])
def test_a_phone_portrait_is_turned_upright_exactly_once(fmt: str) -> None:
    # Stored sideways with EXIF orientation 6 ("turn 90° clockwise to show"), as phones do.
    image = Image.new("RGB", (400, 300), (200, 120, 90))
    image.paste((0, 0, 255), (0, 0, 100, 100))  # a blue mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    allowed_formats()
    upright = load_image(encode(image, fmt, quality=95, exif=exif.tobytes()), LIMITS).image
    assert upright.size == (300, 400)
    red, green, blue = upright.getpixel((upright.width - 20, 20))  # the shown top-right
    assert blue > 200 and red < 40 and green < 40


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "PNG", "JPEG", "WEBP", "GIF"])
def test_a_damaged_header_is_read_or_refused_with_a_reason_never_an_error(fmt: str) -> None:
    # Each of the first bytes zeroed in turn: a picture damaged in transit. Pillow's plugins raise
    # many types for it (the AVIF one a RuntimeError, which once got "something went wrong on
    # my side, try again": the same file again, for ever).
    data = phone_photo(fmt, (96, 72))
    for at in range(160):
        # Read, or refused with a message of its own (damaged; or too small, too large, where
        # the damage was to its size): nothing else may escape.
        with contextlib.suppress(InvalidImage):
            load_image(data[:at] + b"\x00" + data[at + 1 :], LIMITS)


@pytest.mark.parametrize("brand", [b"heic", b"heim", b"heis", b"hevc", b"hevm", b"hevs"])
def test_every_heic_brand_is_a_picture_not_a_video(brand: bytes) -> None:
    # Multi-layer and scalable HEVC stills (heim, heis, hevm, hevs) are pictures too.
    head = b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00mif1heic" + bytes(64)
    message = refusal(head)
    assert "video" not in message and "damaged or incomplete" in message


def test_a_heic_header_with_no_picture_is_refused_as_damaged() -> None:
    head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert "damaged or incomplete" in refusal(head)


def test_truncated_png_is_refused_as_damaged() -> None:
    data = encode(photo(640, 480), "PNG")
    message = refusal(data[: len(data) // 2])
    assert "damaged or incomplete" in message


def test_truncated_jpeg_is_refused_as_damaged() -> None:
    data = encode(photo(640, 480), "JPEG", quality=95)
    message = refusal(data[: len(data) * 2 // 3])
    assert "damaged or incomplete" in message


def test_animated_gif_cut_short_in_its_second_frame_is_refused_as_damaged() -> None:
    frames = [Image.new("RGB", (100, 100), (40 * i, 0, 0)) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    second = data.index(b",", data.index(b",") + 10)  # the second frame's image descriptor
    for cut in (second + 1, second + 4, second + 8):
        with pytest.raises(InvalidImage, match="damaged"):
            load_image(data[:cut], LIMITS)


def test_png_with_a_corrupted_pixel_stream_is_refused() -> None:
    data = bytearray(encode(photo(640, 480), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100 : start + 400] = bytes(300)  # zero out part of the compressed pixels
    assert "damaged or incomplete" in refusal(bytes(data))


@pytest.mark.parametrize(
    "size",
    [
        (30_000, 30_000),  # far past Pillow's own bomb limit (it raises)
        (10_000, 10_000),  # past Pillow's warning threshold, under its hard limit
        (8_000, 6_000),  # past our 40 MP limit, under Pillow's
    ],
)
def test_decompression_bomb_header_is_refused_without_decoding(size: tuple[int, int]) -> None:
    data = png_header_only(*size)
    assert len(data) < 100  # nothing is allocated: the header alone is refused
    message = refusal(data)
    assert "pixels" in message
    assert "smaller picture" in message


def test_pixel_limit_is_the_hosts_choice() -> None:
    data = encode(photo(400, 300), "PNG")
    assert "400×300" in refusal(data, ImageLimits(max_pixels=100_000))
    assert load_image(data, ImageLimits(max_pixels=120_000)).image.size == (400, 300)


def test_tiny_pictures_are_refused() -> None:
    message = refusal(encode(photo(48, 300), "PNG"))
    assert "48×300" in message
    assert "at least 64" in message


# --- what we fix ---------------------------------------------------------------------------------


def test_transparent_png_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    rgba.paste(Image.new("RGBA", (100, 100), (200, 30, 40, 255)), (0, 0))
    loaded = load_image(encode(rgba, "PNG"), LIMITS)
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((50, 50)) == (200, 30, 40)
    assert loaded.image.getpixel((150, 50)) == (255, 255, 255)
    assert TRANSPARENT_NOTE in loaded.notes


def test_half_transparent_pixels_are_blended_not_dropped() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 128))
    loaded = load_image(encode(rgba, "PNG"), LIMITS)
    assert loaded.image.getpixel((10, 10)) == pytest.approx((127, 127, 127), abs=1)


def test_opaque_rgba_png_has_no_transparency_note() -> None:
    rgba = photo().convert("RGBA")
    loaded = load_image(encode(rgba, "PNG"), LIMITS)
    assert loaded.notes == ()
    assert np.array_equal(np.asarray(loaded.image), np.asarray(photo()))


def test_palette_png_with_a_transparent_colour_is_flattened() -> None:
    image = Image.new("P", (100, 100), 0)
    image.putpalette([10, 200, 10] + [0, 0, 255] * 255)
    ImageDraw.Draw(image).rectangle((50, 0, 99, 99), fill=1)
    loaded = load_image(encode(image, "PNG", transparency=0), LIMITS)
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)
    assert loaded.image.getpixel((80, 10)) == (0, 0, 255)
    assert TRANSPARENT_NOTE in loaded.notes


def test_jpeg_exif_orientation_is_honoured() -> None:
    # Stored sideways as a phone does: 200 wide, red on the left; orientation 6 means "rotate 90°
    # clockwise to display", so the user sees a 100x200 portrait with the red half on top.
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    stored.paste(Image.new("RGB", (100, 100), (255, 0, 0)), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(encode(stored, "JPEG", exif=exif, quality=95), LIMITS)
    assert loaded.image.size == (100, 200)
    assert loaded.original_size == (100, 200)
    top = loaded.image.getpixel((50, 40))
    bottom = loaded.image.getpixel((50, 160))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert loaded.format == "JPEG"
    # The portrait then gets a portrait clip.
    assert fit_image(loaded.image, 256).size == (144, 256)


def animation(fmt: str) -> bytes:
    colours = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    frames = [Image.new("RGB", (120, 80), colour) for colour in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_animated_gif_uses_its_first_frame_and_says_so() -> None:
    loaded = load_image(animation("GIF"), LIMITS)
    assert loaded.image.getpixel((60, 40)) == pytest.approx((220, 20, 20), abs=4)
    assert loaded.notes == (ANIMATED_NOTE,)
    assert loaded.format == "GIF"


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_uses_its_first_frame_and_says_so() -> None:
    loaded = load_image(animation("WEBP"), LIMITS)
    assert loaded.image.getpixel((60, 40)) == pytest.approx((220, 20, 20), abs=8)
    assert loaded.notes == (ANIMATED_NOTE,)
    assert loaded.format == "WEBP"


def test_still_gif_has_no_animation_note() -> None:
    loaded = load_image(encode(photo(), "GIF"), LIMITS)
    assert loaded.notes == ()
    assert loaded.image.mode == "RGB"


def test_a_phone_jpeg_with_a_gain_map_is_a_still_photo() -> None:
    # Ultra HDR / depth JPEGs carry a second image: Pillow opens them as MPO, "animated".
    main = Image.new("RGB", (120, 80), (200, 10, 10))
    gain_map = Image.new("RGB", (60, 40), (128, 128, 128))
    loaded = load_image(encode(main, "MPO", save_all=True, append_images=[gain_map]), LIMITS)
    assert loaded.notes == ()
    assert loaded.image.size == (120, 80)
    assert loaded.image.getpixel((60, 40)) == pytest.approx((200, 10, 10), abs=6)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    levels = np.array([[0, 32_896, 65_535]], dtype=np.uint16).repeat(64, 0).repeat(64, 1)
    loaded = load_image(encode(Image.fromarray(levels), "PNG"), LIMITS)
    pixels = np.asarray(loaded.image)
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 64].tolist() == [128, 128, 128]
    assert pixels[0, 128].tolist() == [255, 255, 255]


def test_sixteen_bit_greyscale_with_a_transparent_grey_is_flattened() -> None:
    levels = np.full((64, 128), 30_000, dtype=np.uint16)
    levels[:, :64] = 1_000  # the grey its tRNS chunk names transparent
    loaded = load_image(encode(Image.fromarray(levels), "PNG", transparency=1_000), LIMITS)
    pixels = np.asarray(loaded.image)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # onto white, like any transparent PNG
    assert pixels[0, 127].tolist() == [117, 117, 117]
    assert TRANSPARENT_NOTE in loaded.notes


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(encode(cmyk, "JPEG", quality=95), LIMITS)
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((50, 50)) == pytest.approx((255, 0, 0), abs=6)


def test_a_good_photo_goes_through_unchanged() -> None:
    original = photo(640, 480)
    loaded = load_image(encode(original, "PNG"), LIMITS)
    assert loaded.notes == ()
    assert loaded.original_size == (640, 480)
    assert loaded.format == "PNG"
    assert np.array_equal(np.asarray(loaded.image), np.asarray(original))
