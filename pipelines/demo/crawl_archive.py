"""Write pages and their images into WARC files the way real crawlers archive them.

A crawler archives what its browser fetched, not what an extractor would prefer: the `src` of an
`<img>` (Heritrix, wget), the 1x candidate of a `srcset` (a browser at 1x density), the URL a lazy
loader swapped in (a browser-driven crawler such as Browsertrix that runs the page's scripts), the
`<noscript>` copy (a crawler without JavaScript), a placeholder beside it, and a *revisit* record
instead of a second copy of bytes it has already stored (deduplication by payload digest, WARC/1.1
§6.7, possibly pointing into an earlier crawl's file). The yield benchmark and the build tests use
this to check that a build finds every archived image offline, whichever of its URLs was archived.

`CrawlArchive(path)` writes one gzipped WARC/1.1 file (fixed dates and record ids, so the bytes are
reproducible); `archived_url(img, shape)` says which URL of an `<img>` a crawler of that shape
fetched.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin

from lxml import etree

SHAPES = ("src", "x1", "lazy", "noscript", "revisit")
_DATE = "2024-05-01T12:00:00Z"
_LAZY_ATTRS = ("data-src", "data-original", "data-lazy-src", "data-url", "data-hi-res-src")


def payload_digest(body: bytes) -> str:
    """WARC-Payload-Digest in the usual `sha1:BASE32` form."""
    return "sha1:" + base64.b32encode(hashlib.sha1(body).digest()).decode()


class CrawlArchive:
    """One gzipped WARC file: pages, images, error responses and revisit records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = None
        self._writer = None
        self.urls: set[str] = set()  # every URL with a record in this file

    def __enter__(self) -> CrawlArchive:
        from warcio.warcwriter import WARCWriter

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        self._writer = WARCWriter(self._file, gzip=True, warc_version="WARC/1.1")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def response(self, url: str, body: bytes, content_type: str, status: int = 200) -> str:
        """A response record; returns its payload digest."""
        from warcio.statusandheaders import StatusAndHeaders

        reason = {200: "OK", 404: "Not Found", 410: "Gone"}.get(status, "Status")
        http = StatusAndHeaders(
            f"{status} {reason}",
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
            protocol="HTTP/1.1",
        )
        digest = payload_digest(body)
        record = self._writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            http_headers=http,
            warc_headers_dict=self._headers(url, "response", {"WARC-Payload-Digest": digest}),
        )
        self._writer.write_record(record)
        self.urls.add(url)
        return digest

    def revisit(self, url: str, digest: str, refers_to: str, content_type: str) -> None:
        """A revisit record (profile identical-payload-digest): `url`'s bytes are those of the
        record with `digest`, captured as `refers_to`, maybe in another file."""
        from warcio.statusandheaders import StatusAndHeaders

        http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
        extra = {
            "WARC-Payload-Digest": digest,
            "WARC-Refers-To-Target-URI": refers_to,
            "WARC-Refers-To-Date": _DATE,
            "WARC-Profile": "http://netpreserve.org/warc/1.1/revisit/identical-payload-digest",
        }
        record = self._writer.create_warc_record(
            url,
            "revisit",
            payload=io.BytesIO(b""),
            http_headers=http,
            warc_headers_dict=self._headers(url, "revisit", extra),
        )
        self._writer.write_record(record)
        self.urls.add(url)

    def _headers(self, url: str, kind: str, extra: dict[str, str]) -> dict[str, str]:
        record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.path.name} {kind} {url}")
        return {"WARC-Date": _DATE, "WARC-Record-ID": f"<urn:uuid:{record_id}>", **extra}


def image_type(url: str) -> str:
    low = url.lower().split("?", 1)[0]
    for ext, ctype in ((".png", "image/png"), (".gif", "image/gif"), (".webp", "image/webp")):
        if low.endswith(ext):
            return ctype
    return "image/jpeg"


def _smallest_srcset(value: str) -> str | None:
    """The smallest candidate of a srcset (the HTML parsing rules: URLs may hold commas)."""
    from m3w_builder.dom import srcset_by_size

    urls = srcset_by_size(value)
    return urls[-1] if urls else None


def archived_url(img: etree._Element, base: str, shape: str) -> str | None:
    """The absolute URL a crawler of `shape` fetched for this `<img>` (None: nothing usable).
    "revisit" fetches what "src" does (the benchmark writes its bytes as a revisit)."""
    src = (img.get("src") or "").strip()
    choice: str | None = None
    if shape == "x1":
        srcset = img.get("srcset") or img.get("data-srcset")
        choice = _smallest_srcset(srcset) if srcset else None
    elif shape == "lazy":  # a JSON blob (some loaders keep their settings there) is no URL
        values = [(img.get(a) or "").strip() for a in _LAZY_ATTRS]
        choice = next((v for v in values if v and not v.startswith(("{", "["))), None)
    elif shape == "noscript":
        nxt = img.getnext()
        if nxt is not None and nxt.tag == "noscript":
            copy = next(nxt.iter("img"), None)
            choice = (copy.get("src") or "").strip() if copy is not None else None
    choice = choice or src
    if not choice or choice.startswith(("data:", "javascript:")):
        return None
    try:
        url = urljoin(base, choice)
    except ValueError:
        return None
    return url if url.startswith(("http://", "https://")) else None
