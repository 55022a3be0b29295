"""The per-page recipe: RawPage → Document, or `Skip(code)` — never any other exception.

`page_to_document(page, config)` is what the build runs for every HTML record:

1. **Size cap** (`sources.max_html_bytes`) before anything is decoded: `html.too_large`.
2. **Charset decode** with the HTTP headers (`m3w_builder.charset.decode_html`); empty bodies are
   `html.no_content`; binary payloads mislabelled as HTML (images, PDFs, archives, random bytes) are
   `html.not_html`.
3. **Bounded parse.** lxml's parser is C code that holds the GIL: neither SIGALRM (which Python only
   delivers between bytecodes, and only in the main thread) nor a thread can interrupt one
   `fromstring` call. So the parser is *fed in chunks* (`_FEED_CHUNK`) and the deadline
   (`sources.parse_timeout_s`) is checked between chunks and again between the DOM passes of
   `dom.extract_tree`; each pass is linear in the page size, which the size cap bounds, so no single
   uninterruptible step can run long. This works in any thread, including Ray worker threads. A page
   past its deadline is `html.parse_timeout`. A hard wall-clock kill would need a subprocess per page,
   which costs more than the parse itself (benchmarks/results/extract.md).
4. **Depth.** libxml2 (with `huge_tree`) silently cuts a DOM below 2048 levels; a page deeper than
   `sources.max_depth` is `html.too_deep` instead of a silently truncated document.
5. `dom.extract_tree`, then the text filters (`m3w_builder.textfilters.apply_text_filters`), which
   drop paragraphs and decide the document; a document code becomes `Skip(code)`.

Anything unexpected is `Skip("html.parse_error", detail)` naming the input and offset (STYLE (a)3).
"""

from __future__ import annotations

import codecs
import logging
import re
import time
from collections.abc import Callable

from lxml import etree

from m3w_builder import dom
from m3w_builder.charset import decode_html
from m3w_builder.config import BuildConfig
from m3w_builder.document import Document, RawPage
from m3w_builder.reasons import Skip
from m3w_builder.textfilters import apply_text_filters

log = logging.getLogger(__name__)

_FEED_CHUNK = 1 << 20  # 1 MiB: ~5-10 ms of libxml2 parsing, the granularity of the parse deadline
_SNIFF = 65_536  # bytes looked at for binary junk and <meta charset>

# Magic numbers of common non-HTML payloads served or archived as text/html.
_BINARY_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"%PDF",
    b"PK\x03\x04",  # zip / docx / epub
    b"\x1f\x8b",  # gzip (a body left content-encoded)
    b"RIFF",
    b"\x00\x00\x01\x00",  # ICO
    b"BZh",
    b"7z\xbc\xaf",
    b"\xfd7zXZ",
    b"OggS",
    b"ID3",
    b"\x00asm",
    b"\x7fELF",
)
_CONTROL_BYTES = bytes((0, 1, 2, 3, 4, 5, 6, 7, 8, 14, 15, 16, 127))  # never in text; NUL et al.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\ufffd]")


def _looks_binary(body: bytes) -> bool:
    """A known binary magic number, or more than 10% NUL/control bytes in the first 64 KiB (UTF-16
    pages carry a BOM and are decoded before this matters)."""
    head = body[:_SNIFF].lstrip()
    if head.startswith(_BINARY_MAGIC):
        return True
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls > 0.1 * max(len(head), 1)


def _deadline(timeout_s: float, where: str) -> Callable[[], None]:
    stop = time.monotonic() + timeout_s

    def check() -> None:
        if time.monotonic() > stop:
            raise Skip("html.parse_timeout", f"{where}: over {timeout_s:g} s")

    return check


def _parse_bounded(data: bytes, check: Callable[[], None]) -> etree._Element | None:
    """Feed UTF-8 bytes to libxml2 in chunks, checking the deadline between chunks."""
    parser = dom.make_parser("utf-8")
    if len(data) <= _FEED_CHUNK:
        return dom.parse(data, parser)
    for start in range(0, len(data), _FEED_CHUNK):
        parser.feed(data[start : start + _FEED_CHUNK])
        check()
    return parser.close()


def page_to_document(page: RawPage, config: BuildConfig, *, filter_text: bool = True) -> Document:
    """RawPage → Document with text filters applied (unless `filter_text` is False), or Skip."""
    where = f"{page.source_file or '-'}@{page.source_offset} {page.url}"
    try:
        return _page_to_document(page, config, filter_text, where)
    except Skip:
        raise
    except RecursionError as exc:
        raise Skip("html.too_deep", f"{where}: {exc}") from None
    except MemoryError as exc:
        raise Skip("html.too_large", f"{where}: out of memory {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the contract: a bad page is a counted skip, never a crash
        log.debug("unexpected error on %s", where, exc_info=True)
        raise Skip("html.parse_error", f"{where}: {type(exc).__name__}: {exc}") from None


def _page_to_document(
    page: RawPage, config: BuildConfig, filter_text: bool, where: str
) -> Document:
    body = page.body or b""
    limit = config.sources.max_html_bytes
    if len(body) > limit:
        raise Skip("html.too_large", f"{where}: {len(body):,} bytes > {limit:,}")
    if not body.strip():
        raise Skip("html.no_content", f"{where}: empty body")
    if _looks_binary(body):
        raise Skip("html.not_html", f"{where}: binary payload")
    check = _deadline(config.sources.parse_timeout_s, where)
    text, charset = decode_html(body, page.headers)
    if len(_CONTROL.findall(text[:_SNIFF])) > 0.1 * max(len(text[:_SNIFF]), 1):
        raise Skip("html.not_html", f"{where}: mostly undecodable/control characters")
    # libxml2 gets UTF-8 bytes with the encoding fixed, never its own sniffing: the original bytes
    # when they are valid UTF-8/ASCII (decode_html's last resort decodes UTF-8 with U+FFFD
    # replacement, so a U+FFFD in the text means "maybe not valid": re-encode then), else the
    # decoded text re-encoded. libxml2 stops at the first invalid UTF-8 byte.
    passthrough = charset == "ascii" or (charset == "utf-8" and "\ufffd" not in text)
    data = body if passthrough else text.encode("utf-8", "surrogatepass")
    root = _parse_bounded(data, check)
    if root is None:
        raise Skip("html.no_content", f"{where}: nothing parsed")
    check()
    if dom.too_deep(root, config.sources.max_depth):
        raise Skip("html.too_deep", f"{where}: DOM deeper than {config.sources.max_depth}")
    doc = dom.extract_tree(
        root, page.url, config.dom, check=check, max_images=config.images.max_images_per_doc
    )
    doc.source_file = page.source_file
    doc.source_offset = page.source_offset
    doc.fetched = page.date
    doc.stats["html_bytes"] = len(body)
    doc.stats["charset"] = charset
    if not doc.nodes:
        raise Skip(
            "html.no_content", f"{where}: no text or image survived the DOM rules", doc.drops
        )
    if filter_text:
        code = apply_text_filters(doc, config.text)
        if code is not None:
            raise Skip(code, where, drops=doc.drops)
    return doc
