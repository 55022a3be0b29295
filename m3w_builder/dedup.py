"""Dedup primitives the build composes: URL keys, image (near-)duplicates, corpus-level counters.

Two kinds of state live here:

- **Per document** (no sharing needed): `ImageDedup` drops an image whose stored bytes (sha256) or
  perceptual hash (Hamming distance ≤ k) repeat an earlier image of the same document.
- **Per corpus** (shared across Ray workers): `KeyCounts` counts 64-bit keys, merges with `+`, and
  splits by `shard_of(key, n)` so each of n reducers (or actors) owns a disjoint slice of the key space.
  `image_url_key` feeds it for OBELICS's image-URL cut-off (URLs seen > 10 times are logos and
  buttons, Laurençon et al. 2023 §3.2); `paragraph_key` feeds it for the per-domain boilerplate rule
  (a paragraph repeated ≥ 3 times within one domain). Keys are 8-byte blake2b digests, not strings,
  so a counter of 100 M URLs is ~100 M small ints, and the birthday bound at 64 bits (~1 collision per
  4 billion pairs squared) is far below the counts' own noise.

`url_key` is the one URL normaliser (RFC 3986 §6.2.2–6.2.3 plus the web's own equivalences): the
archive index uses it to find an image captured under a slightly different spelling of its URL, and
page dedup uses it to find the same page crawled twice.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from m3w_builder.document import Document, TextNode

# RFC 3986 §2.3: percent-encoded unreserved characters are equivalent to the characters themselves.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters that may appear literally in a path or query (RFC 3986 §3.3–3.4), plus "%".
_ALLOWED = frozenset(b"!$&'()*+,;=:@/?%") | _UNRESERVED
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Query parameters that only track the visitor; they never change the page (utm_* by Google Analytics).
_TRACKING_PARAMS = re.compile(r"^(utm_[a-z]+|fbclid|gclid|mc_cid|mc_eid)$", re.IGNORECASE)


def _normalise_component(text: str) -> str:
    """Percent-encoding normal form: decode unreserved, upper-case the hex of the rest, encode
    anything not allowed literally (spaces, non-ASCII as UTF-8). `%2F` stays `%2F`: it is not '/'."""
    raw = text.encode("utf-8", "surrogatepass")

    def fix(m: re.Match[bytes]) -> bytes:
        byte = int(m.group(1), 16)
        return bytes([byte]) if byte in _UNRESERVED else b"%" + m.group(1).upper()

    raw = _PCT.sub(fix, raw)
    out = bytearray()
    for i, b in enumerate(raw):
        if b in _ALLOWED and not (b == 0x25 and not _PCT.match(raw, i)):
            out.append(b)
        else:
            out += b"%%%02X" % b
    return out.decode("ascii")


def url_key(url: str, *, keep_scheme: bool = False, drop_tracking: bool = False) -> str:
    """A normalised URL for equality tests (never for fetching).

    Equivalences: case of scheme and host, a trailing dot on the host, default ports, userinfo,
    percent-encoding (RFC 3986 §6.2.2), empty path = "/", a trailing slash, the fragment (never sent
    to the server), and, unless `keep_scheme`, http vs https (crawlers capture both spellings of one
    resource). `drop_tracking` also removes utm_* style parameters (for page dedup).
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = _normalise_component(parts.path) or "/"
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    query = parts.query
    if drop_tracking and query:
        query = "&".join(
            p for p in query.split("&") if p and not _TRACKING_PARAMS.match(p.split("=", 1)[0])
        )
    query = _normalise_component(query) if query else ""
    prefix = f"{scheme}://" if keep_scheme else "//"
    return f"{prefix}{host}{path}" + (f"?{query}" if query else "")


def page_url_key(url: str) -> str:
    """Page dedup key: `url_key` without the scheme and without tracking parameters."""
    return url_key(url, drop_tracking=True)


def domain_of(url: str) -> str:
    """Host without a leading `www.` (the unit of the paragraph-boilerplate rule)."""
    try:
        host = (urlsplit(url.strip()).hostname or "").rstrip(".")
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host


def hash64(text: str) -> int:
    """A stable 64-bit key (blake2b; Python's hash() is salted per process, useless across workers)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    )


_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Whitespace-collapsed, lower-cased text: two copies of a page differing only in layout or case
    are the same document."""
    return _WS.sub(" ", text).strip().lower()


def image_url_key(url: str) -> int:
    return hash64(url_key(url))


def paragraph_key(domain: str, paragraph: str) -> int:
    return hash64(f"{domain}\x00{normalise_text(paragraph)}")


def document_hash(doc: Document) -> str:
    """Content hash for identical-document dedup: normalised texts and image URLs in order, so the
    same article served under two URLs (mirrors, print views) collides and a re-layout does not."""
    h = hashlib.sha256()
    for node in doc.nodes:
        if isinstance(node, TextNode):
            h.update(b"T" + normalise_text(node.text).encode("utf-8", "surrogatepass") + b"\x00")
        else:
            h.update(b"I" + url_key(node.src).encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def shard_of(key: int, num_shards: int) -> int:
    """Which of `num_shards` reducers owns `key` (keys are uniform hashes, so modulo balances)."""
    return key % num_shards


class KeyCounts(Counter):
    """Counts of 64-bit keys; mergeable with `+`/`update`, splittable by `partition` for sharing.

    The build counts locally per task, then either merges all counts (small corpora) or sends each
    `partition(n)[i]` to reducer i (large ones); reducer i answers `frequent()` for its slice."""

    def __add__(self, other: Counter) -> KeyCounts:
        # Counter.__add__ returns a plain Counter; keep the type so merged counts still partition.
        out = KeyCounts(self)
        out.update(other)
        return out

    def add_all(self, keys: Iterable[int]) -> None:
        self.update(keys)

    def partition(self, num_shards: int) -> list[KeyCounts]:
        parts = [KeyCounts() for _ in range(num_shards)]
        for key, n in self.items():
            parts[shard_of(key, num_shards)][key] = n
        return parts

    def frequent(self, min_count: int) -> set[int]:
        """Keys counted at least `min_count` times."""
        return {k for k, n in self.items() if n >= min_count}


def image_url_counts(docs: Iterable[Document]) -> KeyCounts:
    """Each image URL counted once per document (a page repeating its own icon is one vote)."""
    counts = KeyCounts()
    for doc in docs:
        counts.update({image_url_key(n.src) for n in doc.image_nodes})
    return counts


def paragraph_counts(docs: Iterable[Document]) -> KeyCounts:
    """Per-domain paragraph counts, each paragraph counted once per document."""
    counts = KeyCounts()
    for doc in docs:
        domain = domain_of(doc.url)
        counts.update({paragraph_key(domain, n.text) for n in doc.text_nodes})
    return counts


def hamming(a: str, b: str) -> int:
    """Bit distance between two hex hashes of equal length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(slots=True)
class ImageDedup:
    """Within one document: the first copy of an image is kept, later copies are dropped.

    `check` returns None (keep, and remember it) or a reason code. Exact copies are caught by the
    sha256 of the stored bytes; near copies (the same picture as a thumbnail and full size) by the
    perceptual hash within `max_distance` bits. A document holds ≤ 100 images, so the linear scan
    is cheaper than any index."""

    max_distance: int = 4
    seen_sha: set[str] = field(default_factory=set)
    seen_phash: list[int] = field(default_factory=list)

    def check(self, sha256: str, phash: str | None) -> str | None:
        if sha256 in self.seen_sha:
            return "image.duplicate"
        if phash is not None and self.max_distance >= 0:
            value = int(phash, 16)
            if any((value ^ p).bit_count() <= self.max_distance for p in self.seen_phash):
                return "image.near_duplicate"
            self.seen_phash.append(value)
        self.seen_sha.add(sha256)
        return None


# --------------------------------------------------------------------------------------------------
# Job-wide policy over key tables (the build's decide stage runs these on one partition each)
# --------------------------------------------------------------------------------------------------

# One row per extracted document: what the job-wide dedup rules look at.
DOC_KEYS = np.dtype(
    [
        ("ord", "<u4"),  # the document's number in its unit
        ("page", "<u8"),  # hash64(page_url_key(url))
        ("date", "<i8"),  # capture time, µs since the epoch (NO_DATE if unknown)
        ("content_hi", "<u8"),  # document_hash, 128 bits
        ("content_lo", "<u8"),
        ("doc_hi", "<u8"),  # the document key (32 hex chars) as 128 bits: "smallest key"
        ("doc_lo", "<u8"),
    ]
)
NO_DATE = -(1 << 62)  # older than any capture


def capture_time(date: str | None) -> int:
    """A capture date (WARC-Date, ISO 8601, or a 14-digit ARC stamp) as µs since the epoch;
    NO_DATE when missing or unreadable. Comparing numbers, not strings, orders `…:00Z` and
    `…:00.5Z` correctly."""
    from datetime import datetime, timezone

    if not date:
        return NO_DATE
    text = date.strip()
    try:
        if text.isdigit() and len(text) >= 8:
            stamp = datetime.strptime(text[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
        else:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return NO_DATE
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return int(stamp.timestamp() * 1_000_000)


def doc_key_row(doc: Document, ord_: int) -> tuple[int, ...]:
    """The DOC_KEYS row of one document."""
    content = int(document_hash(doc)[:32], 16)
    key = int(doc.key, 16)
    return (
        ord_,
        hash64(page_url_key(doc.url)),
        capture_time(doc.fetched),
        content >> 64,
        content & ((1 << 64) - 1),
        key >> 64,
        key & ((1 << 64) - 1),
    )


def page_url_losers(rows: np.ndarray) -> np.ndarray:
    """Page-URL dedup over DOC_KEYS rows with a `src` (unit) column: among captures of one
    normalised URL the newest wins, equal dates go to the first in input order. Returns a mask of
    the losers. A pure function of the rows, whatever their order or partition."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    order = np.lexsort((rows["ord"], rows["src"], -rows["date"], rows["page"]))
    page = rows["page"][order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = page[1:] != page[:-1]
    losers = np.ones(len(rows), dtype=bool)
    losers[order[first]] = False
    return losers


def content_losers(rows: np.ndarray) -> np.ndarray:
    """Identical-document dedup: among rows with one content hash, the first in input order
    (unit, then ord) wins; returns the losers' mask."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    order = np.lexsort((rows["ord"], rows["src"], rows["content_lo"], rows["content_hi"]))
    hi, lo = rows["content_hi"][order], rows["content_lo"][order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    losers = np.ones(len(rows), dtype=bool)
    losers[order[first]] = False
    return losers


def cluster_survivor(dates: np.ndarray, key_hi: np.ndarray, key_lo: np.ndarray) -> int:
    """Index of the document a near-duplicate cluster keeps: the newest capture, then the smallest
    document key — a rule that does not depend on which task finished first."""
    order = np.lexsort((key_lo, key_hi, -dates))
    return int(order[0])


class UnionFind:
    """Connected components over integer ids (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            parent[x] = x
            self.size[x] = 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def components(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return out
