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
from m3w_builder.reasons import Counts, Skip

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
