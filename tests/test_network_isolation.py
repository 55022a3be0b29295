"""Nothing a build sends goes beyond loopback (issue "Loopback only").

A tiny `m3w build` of a generated site served on 127.0.0.1 runs under `strace -f`, which records every
`connect`/`sendto`/`sendmsg` of the CLI and of every process it starts (the local Ray's GCS, raylet,
dashboard and workers). Any AF_INET/AF_INET6 destination that is not loopback fails the test: Ray's
cloud-metadata probe (169.254.169.254), the system resolver asked for metadata.google.internal, the
public-resolver probe Ray uses to find its LAN address (8.8.8.8:53). The build itself must still work:
its image fetcher ignores the proxy variables conftest.py sets and reaches the 127.0.0.1 server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nettrace import outside_destinations, strace_problem

from pipelines.demo.sample_site import make_site, serve_site, write_url_list

pytestmark = pytest.mark.slow


def test_outside_destinations_parser_flags_what_it_must():
    log = "\n".join(
        [
            '12 connect(24, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}, 16) = -1 ENETUNREACH',
            '12 connect(5, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
            '12 connect(7, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:4860:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = -1',
            '12 connect(7, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED',
            '12 connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '12 connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '12 sendto(3, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = 1',
            '12 connect(3, {sa_family=AF_UNIX, sun_path="/tmp/ray/session/sockets/raylet"}, 110) = 0',
        ]
    )
    outside = [d.split()[0] for d in outside_destinations(log)]
    assert outside == [
        "169.254.169.254:80",
        "10.255.255.53:53",
        "2001:4860:4860::8888:53",
        "8.8.8.8:53",
    ]


def test_a_build_connects_to_nothing_but_loopback(tmp_path: Path):
    reason = strace_problem()
    if reason:
        pytest.skip(reason)
    m3w = Path(sys.executable).with_name("m3w")
    command = [str(m3w)] if m3w.exists() else [sys.executable, "-m", "pipelines.cli"]
    root = tmp_path / "site"
    make_site(root, pages=6, seed=3)
    config = tmp_path / "build.yaml"
    config.write_text(json.dumps({"fetch": {"allowed_hosts": ["127.0.0.1"]}}))
    out = tmp_path / "job"
    log = tmp_path / "strace.log"
    with serve_site(root) as base:
        urls = write_url_list(root, base, tmp_path / "site.urls")
        proc = subprocess.run(
            [
                "strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(log),
                *command, "build", str(urls), "--out", str(out), "--config", str(config),
                "--num-cpus", "1", "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_ADDRESS": ""},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # the fetcher reached the 127.0.0.1 server although the proxy variables point elsewhere
    assert report["counts"].get("image.from_web", 0) > 0, report["counts"]
    assert report["documents"] > 0
    # Ray did not look for a LAN address through a public resolver
    assert "external connectivity" not in proc.stderr, proc.stderr[-2000:]
    outside = outside_destinations(log.read_text(errors="replace"))
    assert not outside, "non-loopback destinations:\n" + "\n".join(outside[:20])
