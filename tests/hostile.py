"""Hostile inputs for the hardening tests, the memory benchmark and the fuzz soak (issue 14).

Everything is generated, in seconds, and never committed: a 1 MB `.warc.gz` that holds a 1 GiB
zero-filled image record, WARCs whose Content-Length lies in every shape, a `.html.gz` that inflates
to 1.2 GB, a page whose one element carries 300,000 attributes.

Big zero runs are compressed with a shortcut: after `Z_FULL_FLUSH` a deflate stream forgets its
history, so the compressed form of the next 1 MiB of zeros is always the same bytes and can be
repeated; only the CRC-32 is computed over the whole (zlib.crc32 runs at memory speed). A 1 GiB
member costs about 0.3 s instead of 5 s of real compression, and it is a valid gzip member.
"""

from __future__ import annotations

import gzip
import html
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.demo.sample_site import Words, draw_image

GiB = 1 << 30
_BLOCK = 1 << 20
HOST = "http://hostile.m3w.test"  # RFC 2606 .test: never a real host


def repeated_member(prefix: bytes, fill: bytes, count: int, suffix: bytes = b"") -> bytes:
    """A gzip member of `prefix + fill * count + suffix`, fast for a large count (module doc)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = z.compress(prefix) + z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(fill) + z.flush(zlib.Z_FULL_FLUSH) if count else b""
    tail = z.compress(suffix) + z.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(fill, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + len(fill) * count + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # no name, mtime 0, max compression, unix
    trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
    return header + head + block * count + tail + trailer


def warc_head(
    url: str, block_length: int | str, *, record_type: str = "response", n: int = 0
) -> bytes:
    """WARC/1.0 record header; `block_length` is written as given (a lie is a str or wrong int)."""
    return (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-"
        f"{n:012d}>\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {block_length}\r\n\r\n"
    ).encode()


def http_head(ctype: str, length: int, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def warc_response(url: str, ctype: str, body: bytes, *, length: int | str | None = None, n=0):
    """One response record's bytes; `length` overrides the true Content-Length (a lie)."""
    block = http_head(ctype, len(body)) + body
    return warc_head(url, len(block) if length is None else length, n=n) + block + b"\r\n\r\n"


def page_html(rng: random.Random, i: int, images: list[str]) -> bytes:
    """A page that passes the m3w text filters (sample_site's grammar), with `images` in it."""
    words = Words(rng)
    parts = [f"<p>{html.escape(words.paragraph())}</p>"]
    for src in images:
        parts.append(f'<figure><img src="{src}" alt="photo of page {i}" width="200" height="150">')
        parts.append(f"<figcaption>{html.escape(words.sentence())}</figcaption></figure>")
        parts.append(f"<p>{html.escape(words.paragraph())}</p>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Hostile page {i}</title></head><body><article><h1>Notes, part {i}</h1>"
        + "".join(parts)
        + "</article></body></html>"
    ).encode()


@dataclass(slots=True)
class Crawl:
    """A generated WARC: its path, the page URLs and image URLs a reader must keep."""

    path: Path
    pages: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def write_records(path: Path, records: list[bytes], gz: bool) -> None:
    with open(path, "wb") as f:
        for record in records:
            f.write(gzip.compress(record, mtime=0) if gz else record)


def small_crawl_records(
    rng: random.Random, pages: int, *, first: int = 0, big: str | None = None
) -> tuple[list[bytes], list[str], list[str]]:
    """`pages` pages, each followed by the JPEG it shows (and all showing `big` when given)."""
    records, urls, images = [], [], []
    for i in range(first, first + pages):
        img = f"{HOST}/img/{i}.jpg"
        url = f"{HOST}/page/{i}.html"
        srcs = [img] + ([big] if big else [])
        records.append(warc_response(url, "text/html; charset=utf-8", page_html(rng, i, srcs), n=i))
        picture = draw_image(rng, 160, 120, "JPEG")
        records.append(warc_response(img, "image/jpeg", picture, n=1000 + i))
        urls.append(url)
        images.append(img)
    return records, urls, images


def zero_image_warc(path: Path, zeros: int = GiB, pages: int = 3) -> Crawl:
    """A `.warc.gz` of about 1 MB whose one image record holds `zeros` zero bytes; every page shows
    that image (so the build's write stage asks the archive for it) and a small good JPEG."""
    rng = random.Random(0)
    big = f"{HOST}/img/zeros.jpg"
    records, urls, images = small_crawl_records(rng, pages, big=big)
    block_len = len(http_head("image/jpeg", zeros)) + zeros
    prefix = warc_head(big, block_len, n=999) + http_head("image/jpeg", zeros)
    with open(path, "wb") as f:
        f.write(gzip.compress(records[0], mtime=0))
        f.write(repeated_member(prefix, bytes(_BLOCK), zeros // _BLOCK, b"\r\n\r\n"))
        for record in records[1:]:
            f.write(gzip.compress(record, mtime=0))
    return Crawl(path, urls, images)


LIES = (
    "too_long_6mb",
    "too_long_100",
    "too_short",
    "huge_1e17",
    "negative",
    "non_numeric",
    "empty",
)


def lie_value(lie: str, true_length: int) -> str:
    return {
        "too_long_6mb": str(true_length + 6_000_000),
        "too_long_100": str(true_length + 100),
        "too_short": str(max(0, true_length - 50)),
        "huge_1e17": str(10**17),
        "negative": "-5",
        "non_numeric": "12ab",
        "empty": "",
    }[lie]


def lying_warc(path: Path, lie: str, gz: bool, pages: int = 6, liar: int = 2) -> Crawl:
    """`pages` pages with their images; page `liar`'s record carries a lying Content-Length. The
    returned Crawl lists what must survive: every other page and every image."""
    rng = random.Random(1)
    records, urls, images = small_crawl_records(rng, pages)
    at = 2 * liar
    record = records[at]
    block = record[record.index(b"\r\n\r\n") + 4 : -4]
    records[at] = warc_head(urls[liar], lie_value(lie, len(block)), n=liar) + block + b"\r\n\r\n"
    write_records(path, records, gz)
    return Crawl(path, [u for i, u in enumerate(urls) if i != liar], images)


def html_gz_bomb(path: Path, inflated: int = 1_200_000_000) -> None:
    """A `.html.gz` that inflates to `inflated` bytes of a page padded with spaces."""
    count = inflated // _BLOCK
    path.write_bytes(
        repeated_member(b"<html><body><p>", b" " * _BLOCK, count, b"</p></body></html>")
    )


def many_attributes_page(n: int = 300_000) -> bytes:
    """One element with `n` attributes (about 4.9 MB for 300,000): libxml2 takes minutes on it and
    cannot be interrupted from Python."""
    attrs = " ".join(f'data-x{i}="1"' for i in range(n))
    return f"<html><body><p {attrs}>text</p></body></html>".encode()
