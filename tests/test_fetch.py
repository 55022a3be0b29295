"""The async fetcher against a real 127.0.0.1 server: every outcome and its reason code.

No traffic leaves 127.0.0.1: redirects to 10.0.0.1 / 169.254.169.254 must be refused before any
connection (the fetcher's request counter proves it), and names resolve through the local resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from httpserver import LocalServer

from m3w_builder.config import FetchConfig
from m3w_builder.fetch import (
    AddressPolicy,
    BlockedAddress,
    Fetcher,
    FetchResult,
    GuardedResolver,
    is_public_address,
    robots_noai,
)
from m3w_builder.reasons import Skip


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def config(**overrides: Any) -> FetchConfig:
    """Test config: 127.0.0.1 alone is exempt from the SSRF guard; short timeouts and backoff."""
    base: dict[str, Any] = {
        "allowed_hosts": ["127.0.0.1"],
        "connect_timeout_s": 2.0,
        "read_timeout_s": 0.5,
        "total_timeout_s": 3.0,
        "backoff_s": 0.01,
    }
    base.update(overrides)
    return FetchConfig(**base)


def fetch(url: str, cfg: FetchConfig | None = None, **kwargs: Any) -> tuple[FetchResult, Fetcher]:
    async def go() -> tuple[FetchResult, Fetcher]:
        async with Fetcher(cfg or config()) as f:
            return await f.fetch(url, **kwargs), f

    return asyncio.run(go())


def skip_code(url: str, cfg: FetchConfig | None = None, **kwargs: Any) -> tuple[str, Fetcher]:
    """The reason code of a fetch that must fail, and the fetcher (for its request counters)."""
    fetcher = Fetcher(cfg or config())

    async def go() -> str:
        async with fetcher as f:
            try:
                await f.fetch(url, **kwargs)
            except Skip as e:
                return e.code
        raise AssertionError(f"{url} was fetched but should have failed")

    return asyncio.run(go()), fetcher


def test_normal_image(server: LocalServer) -> None:
    result, fetcher = fetch(server.url("/image.jpg"))
    assert result.status == 200 and result.body == server.image
    assert result.sniffed == "jpeg" and result.final_url == server.url("/image.jpg")
    assert result.headers["Content-Type"] == "image/jpeg"
    assert fetcher.stats["fetch.requests"] == 1
    assert server.headers["/image.jpg"]["User-Agent"] == FetchConfig().user_agent


@pytest.mark.slow
def test_timeout_is_retried_then_counted(server: LocalServer) -> None:
    code, fetcher = skip_code(server.url("/slow?s=1.5"), config(retries=1))
    assert code == "image.fetch_timeout"
    assert fetcher.stats["fetch.requests"] == 2 and fetcher.stats["fetch.retries"] == 1


def test_404_is_not_retried(server: LocalServer) -> None:
    code, fetcher = skip_code(server.url("/status/404"), config(retries=3))
    assert code == "image.http_404" and fetcher.stats["fetch.requests"] == 1
    assert skip_code(server.url("/status/403"))[0] == "image.http_403"


def test_500_retried_until_retries_run_out(server: LocalServer) -> None:
    before = server.hits("/status/500")
    code, fetcher = skip_code(server.url("/status/500"), config(retries=2))
    assert code == "image.http_500"
    assert server.hits("/status/500") - before == 3 and fetcher.stats["fetch.retries"] == 2


def test_503_then_200_succeeds_on_retry(server: LocalServer) -> None:
    result, fetcher = fetch(server.url("/flaky/a?fail=2"), config(retries=2))
    assert result.body == server.image and server.hits("/flaky/a") == 3
    assert fetcher.stats["fetch.retries"] == 2
    # With fewer retries than failures the 503 is what gets counted.
    assert skip_code(server.url("/flaky/b?fail=2"), config(retries=1))[0] == "image.http_503"


def test_redirect_chain_and_limit(server: LocalServer) -> None:
    result, fetcher = fetch(server.url("/redirect/3"), config(max_redirects=3))
    assert result.final_url == server.url("/redirect/0") and result.body == server.image
    assert fetcher.stats["fetch.redirects"] == 3
    code, fetcher = skip_code(server.url("/redirect/4"), config(max_redirects=3))
    assert code == "image.redirect_limit" and fetcher.stats["fetch.requests"] == 4


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:80/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
    ],
)
def test_redirect_to_private_address_refused_before_connecting(
    server: LocalServer, target: str
) -> None:
    url = server.url(f"/redirect-to?url={target}")
    code, fetcher = skip_code(url)
    assert code == "image.ssrf_blocked"
    assert fetcher.stats["fetch.requests"] == 1  # the first hop only; the target never requested


def test_redirect_to_private_host_name_refused_by_resolver(server: LocalServer) -> None:
    # `localhost` is not an IP literal: the guarded resolver refuses its 127.0.0.1 answer, and the
    # server proves no connection was made for the second hop.
    before = server.hits("/image.jpg")
    url = server.url(f"/redirect-to?url=http://localhost:{server.port}/image.jpg")
    code, fetcher = skip_code(url)
    assert code == "image.ssrf_blocked" and fetcher.stats["fetch.redirects"] == 1
    assert server.hits("/image.jpg") == before


def test_loopback_refused_without_exemption(server: LocalServer) -> None:
    before = server.hits("/image.jpg")
    assert skip_code(server.url("/image.jpg"), config(allowed_hosts=[]))[0] == "image.ssrf_blocked"
    assert server.hits("/image.jpg") == before
    # The exemption can name a network, a host name, or lift the rule entirely.
    assert fetch(server.url("/image.jpg"), config(allowed_hosts=["127.0.0.0/8"]))[0].status == 200
    local = f"http://localhost:{server.port}/image.jpg"
    assert fetch(local, config(allowed_hosts=["localhost"]))[0].status == 200
    assert fetch(local, config(allowed_hosts=[], allow_private_hosts=True))[0].status == 200


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1/", "data:,x"]
)
def test_only_http_and_https(url: str) -> None:
    assert skip_code(url)[0] == "image.ssrf_blocked"


def test_redirect_to_other_scheme_refused(server: LocalServer) -> None:
    code, _ = skip_code(server.url("/redirect-to?url=file:///etc/passwd"))
    assert code == "image.ssrf_blocked"


@pytest.mark.parametrize("length", ["1", "0"])
def test_body_over_the_cap(server: LocalServer, length: str) -> None:
    # length=1: refused on Content-Length; length=0 (chunked): cut off while streaming.
    url = server.url(f"/big?bytes={3 * 1024 * 1024}&length={length}")
    code, fetcher = skip_code(url, config(max_response_bytes=1024 * 1024))
    assert code == "image.too_large_bytes"
    assert fetcher.stats["fetch.bytes"] == 0  # nothing kept
    # Under the cap it arrives whole.
    result, _ = fetch(url, config(max_response_bytes=4 * 1024 * 1024))
    assert len(result.body) == 3 * 1024 * 1024


def test_wrong_content_type_is_sniffed(server: LocalServer) -> None:
    assert skip_code(server.url("/html-as-image"))[0] == "image.bad_content_type"
    # Page fetches (URL-list inputs) turn sniffing off and name their own stage.
    page, _ = fetch(server.url("/html-as-image"), sniff=False, stage="page")
    assert page.body.startswith(b"<!doctype html>") and page.sniffed is None
    assert skip_code(server.url("/status/410"), stage="page")[0] == "page.http_410"


@pytest.mark.parametrize("path", ["/noai", "/noimageai"])
def test_x_robots_tag_noai(server: LocalServer, path: str) -> None:
    assert skip_code(server.url(path))[0] == "image.robots_noai"
    assert fetch(server.url(path), config(honour_robots_noai=False))[0].body == server.image


def test_robots_noai_parsing() -> None:
    assert robots_noai(["noindex, noai"])
    assert robots_noai(["otherbot: noimageai"])
    assert robots_noai(["noindex", "NoAI"])
    assert not robots_noai(["noindex, nofollow"])
    assert not robots_noai([])


@pytest.mark.slow
@pytest.mark.parametrize(("total", "per_host"), [(64, 4), (3, 64)])
def test_connection_limits_hold_under_load(total: int, per_host: int) -> None:
    limit = min(total, per_host)
    with LocalServer(latency_s=0.05) as slow:
        cfg = config(concurrency=total, per_host_concurrency=per_host)

        async def go() -> list[FetchResult]:
            async with Fetcher(cfg) as f:
                return await asyncio.gather(*(f.fetch(slow.url("/image.jpg")) for _ in range(24)))

        start = time.perf_counter()
        results = asyncio.run(go())
        elapsed = time.perf_counter() - start
        assert all(r.body == slow.image for r in results)
        assert 1 < slow.max_inflight <= limit
        assert elapsed >= 24 / limit * 0.05 * 0.9  # 24 requests of 50 ms, at most `limit` wide


def test_connection_refused_is_counted() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert skip_code(f"http://127.0.0.1:{port}/x.jpg")[0] == "image.connect_error"


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),
    ],
)
def test_is_public_address(ip: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(ip)) is public


class _Answers:
    """A stand-in for the system resolver (the dependency, not the guard under test): answers a
    rebinding name with whatever address the test scripts, without touching DNS."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        ip = self.answers.pop(0)
        return [
            {"hostname": host, "host": ip, "port": port, "family": family, "proto": 0, "flags": 0}
        ]

    async def close(self) -> None:
        pass


def test_guarded_resolver_checks_every_answer() -> None:
    """DNS rebinding: the same name answers public first, private next; the second is refused
    because the check runs on each answer the connector would connect to."""

    async def go() -> None:
        resolver = GuardedResolver(AddressPolicy())
        resolver._inner = _Answers("93.184.216.34", "169.254.169.254")  # type: ignore[assignment]
        assert (await resolver.resolve("rebind.example", 80))[0]["host"] == "93.184.216.34"
        with pytest.raises(BlockedAddress):
            await resolver.resolve("rebind.example", 80)

    asyncio.run(go())


@pytest.mark.slow
def test_queued_requests_do_not_time_out_waiting_for_a_slot() -> None:
    """12 requests of 100 ms through 2 per-host slots take ~0.6 s; each request's own timeouts
    (0.2 s connect, 0.5 s total) start only when it gets a slot, so none of them fails."""
    with LocalServer(latency_s=0.1) as slow:
        cfg = config(per_host_concurrency=2, connect_timeout_s=0.2, total_timeout_s=0.5, retries=0)

        async def go() -> list[FetchResult]:
            async with Fetcher(cfg) as f:
                return await asyncio.gather(*(f.fetch(slow.url("/image.jpg")) for _ in range(12)))

        start = time.perf_counter()
        results = asyncio.run(go())
        assert all(r.status == 200 for r in results)
        assert time.perf_counter() - start >= 0.5 and slow.max_inflight <= 2
