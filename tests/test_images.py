"""Decode guards, filters, re-encoding and hashing (images.py) on real corpus files and drawn images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from m3w_builder.config import BuildConfig, ImageConfig
from m3w_builder.images import phash, process_image, sniff_image_format
from m3w_builder.reasons import Skip

# What process_image does with every file of corpus images/pillow under the m3w profile. The
# index's `pillow_load` column says what plain Pillow does; here every failure is a reason code.
PILLOW_EXPECTED: dict[str, str] = {
    "hopper.jpg": "ok",
    "hopper_gray.jpg": "ok",
    "pil_sample_cmyk.jpg": "ok",
    "hopper_orientation_6.jpg": "ok",
    "flower.jpg": "ok",
    "icc_profile_big.jpg": "ok",
    "junk_jpeg_header.jpg": "ok",
    "hopper.png": "ok",
    "transparent.png": "ok",
    "p_trns_single.png": "ok",
    "uncompressed_rgb.png": "ok",
    "apng_mode_16bit.png": "image.uniform",  # every pixel of frame 0 is (255, 0, 0, 255)
    "hopper.gif": "ok",
    "iss634.gif": "ok",
    "transparent.gif": "ok",
    "hopper.webp": "ok",
    "transparent.webp": "ok",
    "iss634.webp": "ok",
    "avif_hopper.avif": "ok",
    "hopper.bmp": "ok",
    "hopper.ico": "image.too_small",  # 16×16 favicon
    "hopper.tif": "ok",  # the m3w profile takes any decodable format; obelics refuses it
    "truncated_jpeg.jpg": "image.truncated",
    "truncated_image.png": "image.truncated",
    "truncated_end_chunk.png": "image.truncated",  # "Truncated File Read"
    "broken.png": "image.decode_error",
    "broken_data_stream.png": "image.decode_error",
    "ultrahdr.jpg": "image.truncated",
    "decompression_bomb.gif": "image.bomb",
    "decompression_bomb.ico": "image.bomb",
    "png_decompression_dos.png": "image.bomb",
    "bmp_b_reallybig.bmp": "image.bomb",
    "zero_width.gif": "image.decode_error",
    "no_palette.gif": "image.too_small",  # 1×1
    "hopper_bad_exif.jpg": "ok",
    "sugarshack_bad_mpo_header.jpg": "ok",
}


def outcome(data: bytes, config: ImageConfig) -> str:
    try:
        process_image(data, config)
    except Skip as e:
        return e.code
    return "ok"


def test_every_pillow_corpus_file(corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert {r["file"] for r in index} == set(PILLOW_EXPECTED)
    config = ImageConfig()
    for row in index:
        data = (folder / row["file"]).read_bytes()
        assert outcome(data, config) == PILLOW_EXPECTED[row["file"]], row["file"]
        # The index agrees: everything Pillow itself fails on is skipped, never stored.
        if row["pillow_load"] != "ok":
            assert PILLOW_EXPECTED[row["file"]] != "ok", row["file"]


def test_pillow_corpus_valid_images_are_stored_correctly(corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    config = ImageConfig()
    for name, want in PILLOW_EXPECTED.items():
        if want != "ok":
            continue
        stored = process_image((folder / name).read_bytes(), config)
        im = Image.open(io.BytesIO(stored.data))
        assert im.format == "JPEG" and im.mode == "RGB", name
        assert max(im.size) <= config.store_max_side
        # The stored image keeps the original aspect; the record keeps the original size.
        assert abs(im.width / im.height - stored.width / stored.height) < 0.02, name
        assert len(stored.phash) == 16 and len(stored.sha256) == 64


def test_exif_orientation_is_applied(corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    config = ImageConfig()
    upright = process_image((folder / "hopper.jpg").read_bytes(), config)
    rotated = process_image((folder / "hopper_orientation_6.jpg").read_bytes(), config)
    # hopper_orientation_6 stores the pixels sideways with Orientation=6; applied, it is hopper again.
    assert bin(int(upright.phash, 16) ^ int(rotated.phash, 16)).count("1") <= 6


def test_animated_gif_keeps_first_frame(corpus: Path) -> None:
    data = (corpus / "images" / "pillow" / "iss634.gif").read_bytes()
    stored = process_image(data, ImageConfig())
    first = Image.open(io.BytesIO(data)).convert("RGB")
    assert stored.phash == phash(first)


def test_obelics_profile_refuses_formats_and_sizes(corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    obelics = BuildConfig.for_profile("obelics").images
    assert outcome((folder / "hopper.tif").read_bytes(), obelics) == "image.unsupported_format"
    assert outcome((folder / "hopper.gif").read_bytes(), obelics) == "image.unsupported_format"
    assert outcome((folder / "hopper.jpg").read_bytes(), obelics) == "image.too_small"  # 128 < 150
    assert outcome((folder / "flower.jpg").read_bytes(), obelics) == "ok"  # 480×360


def drawn(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A non-uniform picture: diagonal stripes and a circle."""
    im = Image.new("RGB", (width, height), (30, 60, 90))
    draw = ImageDraw.Draw(im)
    for x in range(-height, width, 12):
        draw.line([(x, 0), (x + height, height)], fill=(220, 180, 40), width=4)
    draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(200, 20, 20))
    out = io.BytesIO()
    im.convert(mode).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "code"),
    [
        (64, 64, "ok"),
        (63, 200, "image.too_small"),
        (192, 64, "ok"),  # aspect exactly 3
        (195, 64, "image.aspect"),
        (64, 200, "image.aspect"),
    ],
)
def test_m3w_size_and_aspect_filters(width: int, height: int, code: str) -> None:
    assert outcome(drawn(width, height), ImageConfig()) == code


def test_uniform_images_are_dropped() -> None:
    flat = io.BytesIO()
    Image.new("RGB", (300, 200), (12, 200, 40)).save(flat, "PNG")
    assert outcome(flat.getvalue(), ImageConfig()) == "image.uniform"
    noise = np.full((200, 300, 3), 128, np.uint8)
    noise[::2, ::2] += 1  # nearly uniform: std 0.43
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    assert outcome(out.getvalue(), ImageConfig()) == "image.uniform"


def test_pixel_cap_rejects_before_decoding() -> None:
    # A 4000×4000 PNG of one colour is 64 kB on disk; the cap is checked on the header size.
    big = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(big, "PNG")
    config = ImageConfig(max_pixels=4000 * 4000 - 1)
    with pytest.raises(Skip) as e:
        process_image(big.getvalue(), config)
    assert e.value.code == "image.bomb"
    assert "16000000 pixels" in e.value.detail
    # Pillow's process-wide limit is untouched (STYLE (c): never switched off or raised).
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_byte_cap_and_magic_bytes() -> None:
    png = drawn(100, 100)
    assert outcome(png, ImageConfig(max_bytes=len(png) - 1)) == "image.too_large_bytes"
    assert outcome(b"<!doctype html><html>not an image</html>", ImageConfig()) == (
        "image.bad_content_type"
    )
    assert outcome(b"<svg xmlns='http://www.w3.org/2000/svg'/>", ImageConfig()) == (
        "image.bad_content_type"
    )
    assert sniff_image_format(drawn(10, 10, "WEBP")) == "webp"
    assert sniff_image_format(drawn(10, 10, "GIF")) == "gif"
    assert sniff_image_format(drawn(10, 10, "JPEG")) == "jpeg"


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "RGBA", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    stored = process_image(drawn(120, 90, fmt, mode), ImageConfig())
    im = Image.open(io.BytesIO(stored.data))
    assert im.mode == "RGB" and (stored.width, stored.height) == (120, 90)
    # Not flattened to a single colour by a bad conversion (16-bit clipping would give all white).
    assert np.asarray(im).std() > 10


def test_large_jpeg_is_downscaled_and_keeps_original_size() -> None:
    config = ImageConfig(store_max_side=256)
    stored = process_image(drawn(1600, 1200, "JPEG"), config)
    assert (stored.width, stored.height) == (1600, 1200)
    assert Image.open(io.BytesIO(stored.data)).size == (256, 192)


def test_webp_storage_and_determinism() -> None:
    config = ImageConfig(store_format="webp", store_quality=80)
    data = drawn(300, 200, "JPEG")
    a, b = process_image(data, config), process_image(data, config)
    assert a.ext == "webp" and a.data[8:12] == b"WEBP"
    assert a.data == b.data and a.sha256 == b.sha256  # deterministic bytes → stable shards
