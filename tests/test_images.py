"""Decode guards, filters, re-encoding and hashing (images.py) on real corpus files and drawn images."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import lxml.html
import numpy as np
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from httpserver import LocalServer, drawn_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from m3w_builder.config import BuildConfig, ImageConfig
from m3w_builder.dedup import hamming
from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.images import (
    iter_resolved,
    phash,
    process_image,
    resolve_images,
    sniff_image_format,
    strip_jpeg_metadata,
)
from m3w_builder.reasons import Counts, Skip
from m3w_builder.warc import ArchiveIndex, iter_records

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


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width × height (CRC fixed up): a decompression bomb's header."""
    data = bytearray(drawn(8, 8))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # CRC of "IHDR" + its 13 bytes
    return bytes(data)


def test_pixel_cap_is_checked_on_the_header() -> None:
    # 12,000² = 144 M pixels: over our cap (89.5 M) but under Pillow's own error threshold
    # (2 × 89.5 M), so only our check stands between this 100-byte file and a 432 MB decode.
    bomb = png_declaring(12_000, 12_000)
    assert len(bomb) < 1_000
    with pytest.raises(Skip) as e:
        process_image(bomb, ImageConfig())
    assert e.value.code == "image.bomb" and "144000000 pixels" in e.value.detail
    # Over Pillow's threshold its DecompressionBombError becomes the same code.
    assert outcome(png_declaring(40_000, 40_000), ImageConfig()) == "image.bomb"
    # A lower cap applies to honest images too.
    assert outcome(drawn(300, 300), ImageConfig(max_pixels=300 * 300 - 1)) == "image.bomb"
    assert outcome(drawn(300, 300), ImageConfig(max_pixels=300 * 300)) == "ok"
    # Pillow's process-wide limit is untouched (STYLE (c): never switched off or raised).
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_byte_cap_and_magic_bytes() -> None:
    png = drawn(100, 100)
    assert outcome(png, ImageConfig(max_bytes=len(png) - 1)) == "image.too_large_bytes"
    assert outcome(b"<!doctype html><html>not an image</html>", ImageConfig()) == (
        "image.bad_content_type"
    )
    # Images that are not pixels Pillow decodes: named, but refused as unsupported formats.
    svg = b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>"
    assert sniff_image_format(svg) == "svg"
    assert outcome(svg, ImageConfig()) == "image.unsupported_format"
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40
    assert outcome(heic, ImageConfig()) == "image.unsupported_format"
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


# --------------------------------------------------------------------------------------------------
# resolve_images: archive first, then the web (a real 127.0.0.1 server), per-document rules
# --------------------------------------------------------------------------------------------------


def aut_documents(warc: Path) -> list[Document]:
    """One Document per HTML page of a WARC, with its <img src> resolved against the page URL (and
    <base href>): a stand-in for dom.extract that keeps every image reference."""
    docs = []
    for record in ArchiveIterator(
        str(warc), record_types=WarcRecordType.response, parse_http=True, fsspec_args=False
    ):
        if not (record.http_content_type or "").startswith("text/html"):
            continue
        url = record.headers.get("WARC-Target-URI")
        body = record.reader.read()
        if not body.strip():
            continue
        tree = lxml.html.document_fromstring(body)
        base = tree.find(".//base[@href]")
        base_url = urljoin(url, base.get("href")) if base is not None else url
        images = [
            ImageNode(urljoin(base_url, img.get("src").strip()))
            for img in tree.iter("img")
            if img.get("src") is not None
        ]
        docs.append(Document(url, [TextNode("text")] + images))
    return docs


def offline_config(profile: str = "m3w") -> BuildConfig:
    config = BuildConfig.for_profile(profile)
    config.fetch.offline = True  # any attempt to reach the network is an image.not_archived
    return config


def test_aut_warc_images_resolve_from_the_archive(corpus: Path) -> None:
    warc = corpus / "warc" / "aut" / "example.warc.gz"
    docs = aut_documents(warc)
    urls = [n.src for d in docs for n in d.image_nodes]
    assert len(urls) == 858  # MANIFEST: 858 <img src> in the HTML pages
    counts = Counts()
    archive = ArchiveIndex.build([warc], counts)
    assert sum(archive.lookup(u) is not None for u in urls) == 824  # MANIFEST: 824 archived
    archived_payloads = {u: archive.read(u) for u in urls if archive.lookup(u) is not None}
    assert all(sniff_image_format(b) is not None for b in archived_payloads.values())

    kept = resolve_images(docs, offline_config(), counts, archive)
    # Every reference is accounted for: kept, or dropped with a code.
    image_codes = {k: v for k, v in counts.items() if k.startswith("image.") and k != "image.kept"}
    dropped = sum(v for k, v in image_codes.items() if not k.startswith("image.from_"))
    assert counts["image.kept"] + dropped == 858
    assert sum(len(d.drops) for d in docs) == dropped
    # No network: exactly the unarchived references failed, and only as not_archived.
    unarchived = [
        (d.url, n.src) for d in docs for n in d.image_nodes if archive.lookup(n.src) is None
    ]
    assert unarchived == []  # every surviving node is an archived one
    # The 34 unarchived references are each the first of their URL in their page: all counted.
    assert counts["image.not_archived"] == 858 - 824
    assert counts["doc.no_images"] + len(kept) == len(docs)
    for doc in kept:
        assert doc.image_nodes
        for node in doc.image_nodes:
            assert node.data and node.ext == "jpg" and node.width >= 64 and node.height >= 64
            assert hashlib.sha256(node.data).hexdigest() == node.sha256


def test_archive_revisits_and_merge(corpus: Path) -> None:
    folder = corpus / "warc" / "aut"
    counts = Counts()
    small = ArchiveIndex.build([folder / "issue-493.warc"], counts)
    # w1.gif's revisit record comes before its response; both URL spellings resolve.
    for name in ("w1.gif", "w2.gif", "w3.gif", "note.gif", "notekl.gif"):
        for scheme in ("http", "https"):
            data = small.read(f"{scheme}://auer.netzliteratur.net/wendelin/{name}")
            assert data is not None and data.startswith(b"GIF8"), name
    big = ArchiveIndex.build([folder / "example.warc.gz"], Counts())
    # One pass with the page reader gives the same index as build().
    one_pass = ArchiveIndex()
    for record in iter_records(str(folder / "example.warc.gz"), Counts(), max_body_bytes=None):
        one_pass.add(record)
    assert one_pass.entries == big.entries and one_pass.redirects == big.redirects
    merged = pickle.loads(pickle.dumps(big)).merge(small)
    assert len(merged) == len(big) + len(small) and len(merged.files) == 2
    assert merged.lookup("https://auer.netzliteratur.net/wendelin/w1.gif")[0].endswith("493.warc")
    assert merged.read("http://www.archive.org/images/hewlett.jpg")[:3] == b"\xff\xd8\xff"
    assert merged.read("http://www.archive.org/images/not-there.jpg") is None
    with pytest.raises(Skip) as e:
        merged.read("http://www.archive.org/images/hewlett.jpg", max_bytes=100)
    assert e.value.code == "image.too_large_bytes"


def write_warc(path: Path, records: list[tuple[str, bytes, str]]) -> None:
    """A real .warc.gz with one HTTP 200 response per (url, body, content type)."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, body, ctype in records:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=http
            )
            writer.write_record(record)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def web_config(**images: Any) -> BuildConfig:
    config = BuildConfig()
    config.fetch.allowed_hosts = ["127.0.0.1"]
    config.fetch.backoff_s = 0.01
    config.fetch.read_timeout_s = 0.5
    for name, value in images.items():
        setattr(config.images, name, value)
    return config


def test_archive_is_read_before_the_web(server: LocalServer, tmp_path: Path) -> None:
    archived = drawn(200, 150, "JPEG")
    url = server.url("/archived-only.jpg")  # the server would answer 404 for it
    write_warc(tmp_path / "a.warc.gz", [(url, archived, "image/jpeg")])
    archive = ArchiveIndex.build([tmp_path / "a.warc.gz"], Counts())
    counts = Counts()
    doc = Document("http://page/", [TextNode("t"), ImageNode(url + "#top")])
    [kept] = resolve_images([doc], web_config(), counts, archive)
    assert server.hits("/archived-only.jpg") == 0
    assert kept.image_nodes[0].phash == process_image(archived, ImageConfig()).phash
    assert counts["image.from_archive"] == 1 and counts["image.from_web"] == 0


def test_every_pillow_corpus_file_over_http(server: LocalServer, corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    docs = []
    for name in PILLOW_EXPECTED:
        url = server.add(f"/pillow/{name}", (folder / name).read_bytes(), "image/png")
        docs.append(Document(f"http://site/{name}", [TextNode("t"), ImageNode(url)]))
    counts = Counts()
    kept = resolve_images(docs, web_config(), counts)
    for doc, (name, want) in zip(docs, PILLOW_EXPECTED.items(), strict=True):
        assert doc.drops == ([] if want == "ok" else [want]), name
    assert [d.url.rsplit("/", 1)[1] for d in kept] == [
        n for n, w in PILLOW_EXPECTED.items() if w == "ok"
    ]
    failing = sum(w != "ok" for w in PILLOW_EXPECTED.values())
    assert counts["doc.no_images"] == failing


@pytest.mark.slow
def test_failures_drop_only_their_image(server: LocalServer) -> None:
    good = [server.add(f"/good{i}.png", drawn_image(200, 160, "PNG", seed=i)) for i in range(3)]
    doc = Document(
        "http://site/mixed",
        [
            TextNode("intro"),
            ImageNode(good[0]),
            ImageNode(server.url("/status/404")),
            TextNode("middle"),
            ImageNode(server.url("/html-as-image")),
            ImageNode(server.url("/slow?s=2")),
            ImageNode(server.url("/noai")),
            ImageNode(server.url("/redirect-to?url=http://169.254.169.254/")),
            ImageNode(good[1]),
            ImageNode(server.url(f"/big?bytes={2_000_000}")),
            ImageNode("ftp://127.0.0.1/x.jpg"),
            ImageNode(good[2]),
            TextNode("end"),
        ],
    )
    counts = Counts()
    [kept] = resolve_images([doc], web_config(max_bytes=1_000_000), counts)
    assert kept is doc
    assert [n.src for n in doc.image_nodes] == good
    assert [n.text for n in doc.text_nodes] == ["intro", "middle", "end"]
    assert doc.drops == [
        "image.http_404",
        "image.bad_content_type",
        "image.fetch_timeout",
        "image.robots_noai",
        "image.ssrf_blocked",
        "image.too_large_bytes",
        "image.ssrf_blocked",
    ]
    assert counts["image.kept"] == 3 and counts["image.ssrf_blocked"] == 2
    assert all(n.width == 200 and n.height == 160 for n in doc.image_nodes)


def blocky_photo(seed: int, side: int = 320, fmt: str = "JPEG") -> bytes:
    """Random 8×8-pixel blocks: photo-like low frequencies, so a rescaled copy keeps its pHash
    (thin drawn stripes alias at pHash's 32×32 and are a poor stand-in for photos)."""
    rng = np.random.default_rng(seed)
    blocks = (rng.random((side // 8, side // 8, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), np.uint8))).save(out, fmt)
    return out.getvalue()


def test_duplicates_within_a_document(server: LocalServer) -> None:
    photo = blocky_photo(5)
    a = server.add("/dup/a.jpg", photo)
    b = server.add("/dup/b.jpg", photo)  # same bytes, other URL
    small = io.BytesIO()
    Image.open(io.BytesIO(photo)).resize((200, 200)).save(small, "PNG")
    c = server.add("/dup/c.png", small.getvalue())  # same picture, smaller, other format
    other = server.add("/dup/d.jpg", blocky_photo(6))
    doc = Document("http://site/dups", [ImageNode(a), ImageNode(a + "#again"), ImageNode(b)])
    doc.nodes += [ImageNode(c), ImageNode(other)]
    second = Document("http://site/other-page", [ImageNode(a)])  # other documents are unaffected
    counts = Counts()
    kept = resolve_images([doc, second], web_config(), counts)
    assert kept == [doc, second]
    assert [n.src for n in doc.image_nodes] == [a, other]
    assert doc.drops == ["image.duplicate", "image.duplicate", "image.near_duplicate"]
    assert server.hits("/dup/a.jpg") == 1  # one fetch per distinct URL per batch


def test_images_per_document_bounds(server: LocalServer) -> None:
    """The lower bound is the image stage's; the upper one (images.max_images_per_doc) is applied
    once, by the DOM walk (tests/test_dom.py, tests/test_report_counts.py)."""
    urls = [server.add(f"/n/{i}.png", drawn_image(120, 100, "PNG", seed=10 + i)) for i in range(4)]
    counts = Counts()
    config = web_config(min_images_per_doc=3)
    few = Document("http://site/few", [ImageNode(urls[0]), ImageNode(server.url("/status/404"))])
    assert resolve_images([few], config, counts) == []
    assert counts["doc.no_images"] == 1 and few.drops == ["image.http_404"]


def test_data_uri_images() -> None:
    png = drawn(100, 80)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    doc = Document("http://site/inline", [TextNode("t"), ImageNode(uri), ImageNode("data:,nope")])
    counts = Counts()
    [kept] = resolve_images([doc], offline_config(), counts)
    assert (kept.image_nodes[0].width, kept.image_nodes[0].height) == (100, 80)
    # both URIs gave bytes (image.from_* counts where bytes came from); one was no image
    assert kept.drops == ["image.bad_content_type"] and counts["image.from_data_uri"] == 2
    assert counts["image.kept"] == 1


def test_jpeg_passthrough_strips_metadata_and_keeps_pixels(corpus: Path) -> None:
    folder = corpus / "images" / "pillow"
    config = ImageConfig(jpeg_passthrough=True)
    # A JPEG with EXIF: stored as its own entropy-coded data, minus EXIF, pixel for pixel.
    exif = Image.Exif()
    exif[0x010F] = "SecretCamera"  # Make
    source = io.BytesIO()
    Image.open(io.BytesIO(drawn(200, 150, "JPEG"))).save(source, "JPEG", exif=exif, quality=85)
    data = source.getvalue()
    assert b"SecretCamera" in data
    stored = process_image(data, config)
    assert b"SecretCamera" not in stored.data and len(stored.data) < len(data)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(stored.data))), np.asarray(Image.open(io.BytesIO(data)))
    )
    # pHash from the reduced-scale decode stays within the near-duplicate distance of the full one.
    assert hamming(stored.phash, process_image(data, ImageConfig()).phash) <= 4
    # The big ICC profile (APP2) goes; the picture stays.
    icc = process_image((folder / "icc_profile_big.jpg").read_bytes(), config)
    assert len(icc.data) < 200_000 and Image.open(io.BytesIO(icc.data)).size == (425, 250)
    # What passthrough cannot keep is re-encoded: rotated, CMYK, grey.
    for name in ("hopper_orientation_6.jpg", "pil_sample_cmyk.jpg", "hopper_gray.jpg"):
        raw = (folder / name).read_bytes()
        assert process_image(raw, config).data == process_image(raw, ImageConfig()).data, name
    # Guards still apply: a truncated JPEG is still caught by the (reduced-scale) decode.
    assert outcome((folder / "truncated_jpeg.jpg").read_bytes(), config) == "image.truncated"


def test_strip_jpeg_metadata_refuses_odd_structures() -> None:
    assert strip_jpeg_metadata(b"\xff\xd8\x00\x00junk") is None
    jpeg = drawn(80, 80, "JPEG")
    assert strip_jpeg_metadata(jpeg[:-200]) is None  # no EOI
    assert strip_jpeg_metadata(jpeg + b"trailing junk") == jpeg  # cut after EOI


# --------------------------------------------------------------------------------------------------
# Never a crash: corrupted bytes end as a stored image or a Skip, nothing else
# --------------------------------------------------------------------------------------------------

_SEEDS = {fmt: drawn(96, 80, fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(_SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_corrupted_images_are_skips_not_crashes(
    fmt: str, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(_SEEDS[fmt])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        stored = process_image(bytes(data), ImageConfig())
    except Skip as e:
        assert e.code.startswith("image.")
    else:
        assert Image.open(io.BytesIO(stored.data)).size[0] > 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_skips(data: bytes) -> None:
    with pytest.raises(Skip):
        process_image(b"\xff\xd8\xff" + data, ImageConfig())
    strip_jpeg_metadata(b"\xff\xd8" + data)  # whatever the bytes, no exception


def test_resolve_images_inside_a_running_event_loop() -> None:
    """An async caller (a Ray async actor, a notebook) gets the same result: the fetcher's loop
    then runs in a helper thread instead of colliding with the caller's."""
    uri = "data:image/png;base64," + base64.b64encode(drawn(90, 90)).decode()

    async def caller() -> list[Document]:
        doc = Document("http://site/async", [ImageNode(uri)])
        return resolve_images([doc], offline_config(), Counts())

    [kept] = asyncio.run(caller())
    assert kept.image_nodes[0].width == 90


def test_iter_resolved_streams_in_order(server: LocalServer) -> None:
    urls = [
        server.add(f"/stream/{i}.png", drawn_image(100, 90, "PNG", seed=40 + i)) for i in range(7)
    ]

    def docs() -> list[Document]:
        out = []
        for i in range(10):
            nodes: list[Any] = [TextNode(f"doc {i}"), ImageNode(urls[i % 7])]
            if i % 3 == 0:  # every third page has only a broken image: dropped as doc.no_images
                nodes = [TextNode(f"doc {i}"), ImageNode(server.url("/status/404"))]
            out.append(Document(f"http://site/{i}", nodes))
        return out

    batch_counts, stream_counts = Counts(), Counts()
    whole = resolve_images(docs(), web_config(), batch_counts)
    streamed = list(iter_resolved(docs(), web_config(), stream_counts, batch_docs=3, window=2))
    assert [d.url for d in streamed] == [d.url for d in whole]
    assert [d.url for d in streamed] == [f"http://site/{i}" for i in range(10) if i % 3]
    assert [d.image_nodes[0].sha256 for d in streamed] == [d.image_nodes[0].sha256 for d in whole]
    assert stream_counts["doc.no_images"] == batch_counts["doc.no_images"] == 4
    assert stream_counts["image.kept"] == batch_counts["image.kept"] == 6
