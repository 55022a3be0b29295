"""Bytes from the web, safely: an asyncio HTTP fetcher with an SSRF guard.

`Fetcher` is an async context manager around one aiohttp session:

- **Bounded**: a global and a per-host request limit (requests beyond them wait for a slot, and
  their timeouts start only once they have one), connect/read/total timeouts, a redirect limit,
  and a streaming byte cut-off (`Content-Length` is a hint, the counted bytes decide), so a slow or
  endless server costs one slot for at most the timeout.
- **Retried only where it can help**: timeouts and 5xx, with exponential backoff and jitter; a 404
  or a refused address will not change on retry.
- **Redirects followed by hand**, one hop at a time, so every hop is checked by the guard (aiohttp's
  own redirect following would connect to the new host before we could look at it).
- **SSRF guard** (OWASP SSRF Prevention Cheat Sheet): http/https only; private, loopback,
  link-local, multicast, reserved and unspecified addresses refused. The check runs inside the DNS
  resolver the connector uses, on the addresses it is about to connect to, so a name that resolves to
  a public address when checked and to 169.254.169.254 when connected (DNS rebinding) cannot slip
  through; IP literals, which aiohttp never resolves, are checked before the request. Resolved and
  filtered addresses are cached (aiohttp's DNS cache), so a crawl of many images per host costs one
  lookup per host. `allowed_hosts` exempts named hosts, IPs or networks (tests allow 127.0.0.1 only).
- **Content sniffed, not trusted**: with `sniff=True` the body's magic bytes must name an image
  format (checked on the first bytes, so an HTML error page is abandoned early).
- **X-Robots-Tag: noai / noimageai** honoured (the opt-out used by DeviantArt and others, 2022).

Every failure is `Skip("<stage>.<why>")`, `stage` being "image" or, when the build fetches pages
from URL lists, "page": `image.fetch_timeout`, `image.http_404`, `image.ssrf_blocked`, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from m3w_builder.config import FetchConfig
from m3w_builder.dedup import url_key
from m3w_builder.reasons import Counts, Skip
from m3w_builder.sources import ArchiveRecord, iter_records, read_record_at

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SNIFF_BYTES = 32  # enough for every signature in _MAGIC (AVIF's brand ends at byte 12)
_CHUNK = 64 * 1024


# Magic bytes → format id (Pillow's format name, lower-cased). Order matters only for prefixes.
# Sources: JPEG ITU T.81 (SOI + marker), PNG spec §5.2, GIF89a, RIFF/WebP container, ISO BMFF `ftyp`
# brands for AVIF/HEIC, BMP `BM`, ICO reserved=0/type=1, TIFF byte-order marks.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"BM", "bmp"),
    (0, b"\x00\x00\x01\x00", "ico"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
)


def sniff_image_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None (HTML, SVG, text, unknown binary).

    Servers mislabel images often enough (text/html error pages sent as image/jpeg, images sent as
    application/octet-stream) that the Content-Type header is not evidence (WHATWG MIME Sniffing §7.1
    sniffs images by these same signatures)."""
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1"):
        return "heic"  # an image, but no Pillow plugin decodes it: image.unsupported_format
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "svg"  # vector: an image to a browser, not to a pixel model
    return None


class BlockedAddress(OSError):
    """Raised by the guarded resolver: every address of a host is refused by the SSRF policy.
    An OSError so aiohttp's connector wraps it like any DNS failure, without connecting."""


@dataclass(slots=True)
class AddressPolicy:
    """Which destinations may be connected to.

    `allowed` exempts what the URL names, never what a name resolves to: host names (all their
    addresses are then allowed), and IPs or CIDR networks that match an IP-literal URL host. So
    `allowed=["127.0.0.1"]` lets a test reach `http://127.0.0.1:PORT/` while `http://localhost/` or
    an attacker's name resolving to 127.0.0.1 stays refused. `allow_private` lifts the rule."""

    allow_private: bool = False
    allowed: list[str] = field(default_factory=list)
    _hosts: set[str] = field(default_factory=set, init=False, repr=False)
    _networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, init=False, repr=False
    )

    def __post_init__(self) -> None:
        for entry in self.allowed:
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._hosts.add(entry.lower().rstrip("."))

    @classmethod
    def from_config(cls, config: FetchConfig) -> AddressPolicy:
        return cls(allow_private=config.allow_private_hosts, allowed=list(config.allowed_hosts))

    def host_allowed(self, host: str) -> bool:
        """The URL's host (a name or an IP literal) is exempt from the address rule."""
        if self.allow_private:
            return True
        host = host.lower().rstrip(".").strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host in self._hosts
        return any(ip.version == net.version and ip in net for net in self._networks)

    def ip_allowed(self, ip: IPAddress) -> bool:
        return self.allow_private or is_public_address(ip)


def is_public_address(ip: IPAddress) -> bool:
    """A globally routable unicast address. IPv4-mapped/compatible IPv6 addresses (::ffff:10.0.0.1)
    are judged by the IPv4 address they carry; NAT64 and 6to4 prefixes are refused outright."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in ipaddress.ip_network("64:ff9b::/96") or ip in ipaddress.ip_network("2002::/16"):
            return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


class GuardedResolver(AbstractResolver):
    """The system resolver, with every address the policy refuses removed from its answer.

    The connector connects only to addresses this returns, so the check is on the address actually
    connected to (no time-of-check/time-of-use gap for DNS rebinding)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = DefaultResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if self._policy.host_allowed(host):
            return answers
        kept = [a for a in answers if self._policy.ip_allowed(ipaddress.ip_address(a["host"]))]
        if not kept:
            refused = ", ".join(a["host"] for a in answers)
            raise BlockedAddress(f"{host} resolves only to refused addresses ({refused})")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass(slots=True)
class FetchResult:
    body: bytes
    final_url: str
    headers: dict[str, str]
    status: int
    sniffed: str | None = None  # image format by magic bytes, when sniffing was asked for


def robots_noai(values: list[str]) -> bool:
    """True if an X-Robots-Tag header forbids AI use. Directives are comma separated and may be
    scoped to a user agent (`X-Robots-Tag: otherbot: noindex, noai`); any noai/noimageai counts,
    whatever the scope, because we cannot know which bots the publisher meant to include."""
    for value in values:
        for directive in value.lower().split(","):
            token = directive.strip().rsplit(":", 1)[-1].strip()
            if token in ("noai", "noimageai"):
                return True
    return False


class _Slots:
    """Global and per-host request slots, taken before a request starts (so its timeouts measure
    the server, not our own queue). A host's semaphore lives only while requests for it exist,
    so a crawl over millions of hosts does not keep millions of semaphores."""

    def __init__(self, total: int, per_host: int) -> None:
        self._total = asyncio.Semaphore(max(1, total))
        self._per_host = max(1, per_host)
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, host: str) -> AsyncIterator[None]:
        sem, users = self._hosts.get(host, (None, 0))
        if sem is None:
            sem = asyncio.Semaphore(self._per_host)
        self._hosts[host] = (sem, users + 1)
        try:
            async with sem, self._total:  # host first: a queued host never holds a global slot
                yield
        finally:
            sem, users = self._hosts[host]
            if users == 1:
                del self._hosts[host]
            else:
                self._hosts[host] = (sem, users - 1)


class Fetcher:
    """Async HTTP fetcher; `async with Fetcher(config) as f: result = await f.fetch(url)`."""

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.policy = AddressPolicy.from_config(config)
        self.stats = Counts()  # requests, retries, redirects, bytes: progress, not drops
        self._session: aiohttp.ClientSession | None = None
        self._slots: _Slots | None = None

    async def __aenter__(self) -> Fetcher:
        c = self.config
        connector = aiohttp.TCPConnector(
            limit=c.concurrency,
            limit_per_host=c.per_host_concurrency,
            resolver=GuardedResolver(self.policy),
            use_dns_cache=True,
            ttl_dns_cache=c.dns_cache_ttl_s,
        )
        timeout = aiohttp.ClientTimeout(
            # sock_connect, not connect: aiohttp's `connect` also counts the wait for a pool slot,
            # so a request queued behind a busy host would time out without ever being sent.
            total=c.total_timeout_s,
            sock_connect=c.connect_timeout_s,
            sock_read=c.read_timeout_s,
        )
        self._slots = _Slots(c.concurrency, c.per_host_concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": c.user_agent, "Accept": "image/*,*/*;q=0.8"},
            trust_env=False,  # never route through an environment proxy we did not choose
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, url: str, *, sniff: bool = True, stage: str = "image", max_bytes: int | None = None
    ) -> FetchResult:
        """GET `url` following redirects; raises Skip(f"{stage}.<why>") on any failure."""
        attempt = 0
        while True:
            try:
                return await self._follow(url, sniff=sniff, stage=stage, max_bytes=max_bytes)
            except _Retryable as e:
                if attempt >= self.config.retries:
                    raise Skip(e.code, e.detail) from None
                # Exponential backoff with full jitter (AWS Architecture Blog, 2015): spreads the
                # retries of many images of one struggling host instead of synchronising them.
                delay = self.config.backoff_s * (2**attempt)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                attempt += 1
                self.stats["fetch.retries"] += 1

    async def _follow(
        self, url: str, *, sniff: bool, stage: str, max_bytes: int | None
    ) -> FetchResult:
        for _hop in range(self.config.max_redirects + 1):
            self._check_url(url, stage)
            host = urlsplit(url).netloc.lower()
            assert self._slots is not None, "use `async with Fetcher(...)`"
            async with self._slots.hold(host):  # the timeouts start once a slot is ours
                status, headers, location, body, sniffed = await self._get(
                    url, sniff, stage, max_bytes
                )
            if status in _REDIRECTS and location:
                self.stats["fetch.redirects"] += 1
                url = urljoin(url, location)
                continue
            return FetchResult(
                body=body, final_url=url, headers=headers, status=status, sniffed=sniffed
            )
        raise Skip(f"{stage}.redirect_limit", f"more than {self.config.max_redirects} redirects")

    def _check_url(self, url: str, stage: str) -> None:
        """Scheme and IP-literal checks before connecting (host names are checked by the resolver)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as e:
            raise Skip(f"{stage}.bad_url", str(e)) from None
        if parts.scheme not in ("http", "https"):
            raise Skip(f"{stage}.ssrf_blocked", f"scheme {parts.scheme!r} in {url[:200]}")
        if not host:
            raise Skip(f"{stage}.bad_url", url[:200])
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        if not self.policy.host_allowed(host) and not self.policy.ip_allowed(ip):
            raise Skip(f"{stage}.ssrf_blocked", f"address {ip} in {url[:200]}")

    async def _get(
        self, url: str, sniff: bool, stage: str, max_bytes: int | None
    ) -> tuple[int, dict[str, str], str | None, bytes, str | None]:
        """One request, no redirects followed: (status, headers, Location, body, sniffed format)."""
        assert self._session is not None, "use `async with Fetcher(...)`"
        cap = max_bytes if max_bytes is not None else self.config.max_response_bytes
        self.stats["fetch.requests"] += 1
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                status = resp.status
                headers = dict(resp.headers)
                if status in _REDIRECTS:
                    return status, headers, resp.headers.get("Location"), b"", None
                if status >= 500:
                    raise _Retryable(f"{stage}.http_{status}", url[:200])
                if status >= 300 or status < 200:
                    raise Skip(f"{stage}.http_{status}", url[:200])
                if self.config.honour_robots_noai and robots_noai(
                    resp.headers.getall("X-Robots-Tag", [])
                ):
                    raise Skip(f"{stage}.robots_noai", url[:200])
                if resp.content_length is not None and resp.content_length > cap:
                    raise Skip(f"{stage}.too_large_bytes", f"Content-Length {resp.content_length}")
                body, sniffed = await self._read_capped(resp, cap, sniff, stage)
                return status, headers, None, body, sniffed
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise _Retryable(f"{stage}.fetch_timeout", f"{type(e).__name__} {url[:200]}") from None
        except aiohttp.ClientConnectorDNSError as e:
            if isinstance(e.os_error, BlockedAddress):
                raise Skip(f"{stage}.ssrf_blocked", str(e.os_error)) from None
            raise Skip(f"{stage}.dns_error", str(e)) from None
        except aiohttp.InvalidURL as e:
            raise Skip(f"{stage}.bad_url", str(e)) from None
        except aiohttp.ClientConnectorError as e:
            raise Skip(f"{stage}.connect_error", str(e)) from None
        except aiohttp.ClientError as e:
            raise Skip(f"{stage}.fetch_error", f"{type(e).__name__}: {e}") from None

    async def _read_capped(
        self, resp: aiohttp.ClientResponse, cap: int, sniff: bool, stage: str
    ) -> tuple[bytes, str | None]:
        buf = bytearray()
        sniffed: str | None = None
        async for chunk in resp.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > cap:
                raise Skip(f"{stage}.too_large_bytes", f"more than {cap} bytes streamed")
            if sniff and sniffed is None and len(buf) >= _SNIFF_BYTES:
                sniffed = _sniff_or_skip(bytes(buf[:_SNIFF_BYTES]), stage)
        if sniff and sniffed is None:
            sniffed = _sniff_or_skip(bytes(buf), stage)
        self.stats["fetch.bytes"] += len(buf)
        return bytes(buf), sniffed


def _sniff_or_skip(head: bytes, stage: str) -> str:
    fmt = sniff_image_format(head)
    if fmt is None:
        raise Skip(f"{stage}.bad_content_type", f"not an image by its magic bytes: {head[:16]!r}")
    return fmt


class _Retryable(Exception):
    """A failure worth retrying (timeout, 5xx); becomes Skip(code) once retries run out."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code, in its own event loop; if this thread
    already runs a loop (an async Ray actor, a notebook), in a fresh thread instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --------------------------------------------------------------------------------------------------
# Archive first: images captured in the same WARC files as their pages
# --------------------------------------------------------------------------------------------------

# HTML pages are read by the page reader in file order; indexing them would only grow the index.
_NOT_INDEXED_TYPES = ("text/html", "application/xhtml")
_MAX_ARCHIVE_REDIRECTS = 5
# Bytes of each record's block the indexing pass keeps: enough for any HTTP header block, so
# status, Content-Type and Location are known without holding image or page bodies in memory.
_HEADER_BYTES = 16 * 1024
_INDEXED_RECORDS = frozenset({"response", "resource"})
_READ_RECORDS = frozenset({*_INDEXED_RECORDS, "revisit"})  # a revisit points at a payload


@dataclass(slots=True)
class ArchiveIndex:
    """URL → (file id, record offset) for the non-HTML responses of a set of WARC/ARC files.

    An image captured next to its page (a crawler that fetched page requisites, as Heritrix and
    Archive-It do) is read back from the archive instead of from the web: no network, no SSRF
    exposure, and the bytes the page had on the day it was crawled. Keys are `dedup.url_key` (no
    fragment, default port, percent-encoding, http/https and trailing-slash variants folded), so
    `<img src>` spellings find their capture. Archived redirects (3xx with Location) are followed
    within the archive. A revisit record (WARC/1.1 §6.7) has no payload of its own: crawlers that
    deduplicate by content write one when a URL's bytes equal an earlier capture's, which may be
    another URL in another file of the crawl. It resolves through its `WARC-Payload-Digest` to a
    record with that digest, else through `WARC-Refers-To-Target-URI`, among all the job's inputs
    (the per-unit indexes are merged before lookup). The index is plain dicts of str/int tuples:
    picklable, ~100 bytes per entry, so a Ray driver can build it and ship it to workers.

    Records are read with `sources.iter_records` (WARC and ARC, gzipped or not; corrupt records are
    counted there as `warc.corrupt_record` and skipped). A build that already reads every record
    for its pages can call `add(record)` in that same pass instead of `build`."""

    files: list[str] = field(default_factory=list)
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # url_key → absolute Location
    digests: dict[str, tuple[int, int]] = field(default_factory=dict)  # payload digest → record
    revisits: dict[str, tuple[str, str]] = field(default_factory=dict)  # url_key → (digest, URI)
    failures: dict[str, int] = field(default_factory=dict)  # url_key → archived 4xx/5xx status

    @classmethod
    def build(cls, paths: list[str] | list[Any], counts: Counts | None = None) -> ArchiveIndex:
        index = cls()
        counts = counts if counts is not None else Counts()
        for path in paths:
            for record in iter_records(
                str(path), counts, types=_READ_RECORDS, max_body_bytes=_HEADER_BYTES
            ):
                index.add(record, counts)
        return index

    def add(self, record: ArchiveRecord, counts: Counts | None = None) -> bool:
        """Index one archive record if it can hold an image; True if it was indexed."""
        url = record.url
        if record.record_type not in _READ_RECORDS or not url.startswith(("http://", "https://")):
            return False
        key = url_key(url)
        if record.record_type == "revisit":
            if record.payload_digest or record.refers_to:
                self.revisits.setdefault(key, (record.payload_digest, record.refers_to))
                if counts is not None:
                    counts["archive.revisits"] += 1
            return False
        status = 200 if record.status is None else record.status  # resource records: no HTTP
        if 300 <= status < 400:
            location = next((v for k, v in record.headers.items() if k.lower() == "location"), "")
            if location:
                self.redirects.setdefault(key, urljoin(url, location.strip()))
            return False
        if status >= 400:  # the crawler was told the URL is gone: a dead link, not "not archived"
            self.failures.setdefault(key, status)
            return False
        if not 200 <= status < 300 or record.content_type.startswith(_NOT_INDEXED_TYPES):
            return False
        where = (self._file_id(record.source_file), record.offset)
        if record.payload_digest:
            self.digests.setdefault(record.payload_digest, where)
        if key in self.entries:
            return False  # the first capture wins
        self.entries[key] = where
        if counts is not None:
            counts["archive.indexed"] += 1
        return True

    def _file_id(self, path: str) -> int:
        # Files are few (one per input archive): a linear search keeps the record a plain list.
        if self.files and self.files[-1] == path:
            return len(self.files) - 1
        if path in self.files:
            return self.files.index(path)
        self.files.append(path)
        return len(self.files) - 1

    def merge(self, other: ArchiveIndex) -> ArchiveIndex:
        """Union of two indexes (built by different workers); entries of `self` win on conflict."""
        for key, (file_id, offset) in other.entries.items():
            if key not in self.entries:
                self.entries[key] = (self._file_id(other.files[file_id]), offset)
        for key, target in other.redirects.items():
            self.redirects.setdefault(key, target)
        for digest, (file_id, offset) in other.digests.items():
            if digest not in self.digests:
                self.digests[digest] = (self._file_id(other.files[file_id]), offset)
        for key, pointer in other.revisits.items():
            self.revisits.setdefault(key, pointer)
        for key, status in other.failures.items():
            self.failures.setdefault(key, status)
        return self

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, url: str) -> tuple[str, int] | None:
        """(archive path, record offset) of the capture of `url`, following archived redirects and
        revisit records (by payload digest, else by the URI they refer to)."""
        key = url_key(url)
        for _ in range(_MAX_ARCHIVE_REDIRECTS + 1):
            if key in self.entries:
                file_id, offset = self.entries[key]
                return self.files[file_id], offset
            if key in self.revisits:
                digest, refers_to = self.revisits[key]
                if digest in self.digests:
                    file_id, offset = self.digests[digest]
                    return self.files[file_id], offset
                if not refers_to or url_key(refers_to) == key:
                    return None
                key = url_key(refers_to)
                continue
            if key not in self.redirects:
                return None
            key = url_key(self.redirects[key])
        return None

    def failure(self, url: str) -> int | None:
        """The error status the crawl archived for `url` (a 404 page), if it has no capture."""
        return None if self.lookup(url) is not None else self.failures.get(url_key(url))

    def read(self, url: str, max_bytes: int | None = None) -> bytes | None:
        """The archived payload of `url` (HTTP body, transfer/content encodings removed), or None if
        it is not archived. Raises Skip("image.archive_error") for an unreadable record and
        Skip("image.too_large_bytes") past `max_bytes`."""
        where = self.lookup(url)
        if where is None:
            return None
        return self.read_at(where[0], where[1], max_bytes)

    @staticmethod
    def read_at(path: str, offset: int, max_bytes: int | None = None) -> bytes:
        """The payload of the record at `offset` of `path` (see `read`); shared with the build's
        partitioned index (pipelines/build/archive_parts.py)."""
        try:
            # bounded before reading: an archived 1 GiB image is never read whole to be refused
            record = read_record_at(path, offset, max_bytes=max_bytes)
        except Skip as e:
            raise Skip("image.archive_error", e.detail or e.code) from None
        except OSError as e:
            raise Skip("image.archive_error", f"{path}@{offset}: {e}") from None
        body = record.body
        if record.truncated or (max_bytes is not None and len(body) > max_bytes):
            raise Skip("image.too_large_bytes", f"archived {path}@{offset}: over {max_bytes} bytes")
        return body
