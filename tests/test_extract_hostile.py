"""`m3w extract` against hostile inputs (issue 14 §2): bounded memory, and a deadline it keeps.

Memory is checked as a bound, not a measurement: the command runs with its address space limited to
1 GiB (RLIMIT_AS, inherited by its parser process), which the old code overran by gigabytes (it
inflated a whole `.html.gz`, and a whole 1 GiB image record to peek past it). The peak RSS numbers
are benchmarks/hostile_memory.py's job.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import html_gz_bomb, many_attributes_page, zero_image_warc

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _extract(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "extract", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        preexec_fn=_limited,
    )


@pytest.mark.slow
def test_a_gzip_bomb_page_is_too_large_within_1_gib(tmp_path):
    path = tmp_path / "bomb.html.gz"
    html_gz_bomb(path)  # 1.2 MB that inflates to 1.2 GB
    result = _extract(str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["dropped"] == "html.too_large"


@pytest.mark.slow
def test_a_warc_with_a_1_gib_zero_image_is_read_within_1_gib(tmp_path):
    crawl = zero_image_warc(tmp_path / "zeros.warc.gz")
    result = _extract(str(crawl.path), "--no-filter")
    assert result.returncode == 0, result.stderr[-2000:]
    urls = [json.loads(line)["url"] for line in result.stdout.splitlines()]
    assert urls == crawl.pages
    assert '"warc.not_html": 4' in result.stderr  # the images, the 1 GiB one read past


@pytest.mark.slow
def test_a_page_libxml2_cannot_finish_is_killed_at_the_deadline(tmp_path):
    """One element with 300,000 attributes: > 300 s in libxml2, beyond the cooperative deadline.
    The parser process is killed at --page-kill-timeout and the page is html.parse_timeout."""
    path = tmp_path / "attrs.html"
    path.write_bytes(many_attributes_page())
    started = time.monotonic()
    result = _extract(str(path), "--page-kill-timeout", "3", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["dropped"] == "html.parse_timeout"
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_after_a_killed_page_the_next_pages_are_still_extracted(tmp_path):
    """In a WARC the parser process that was killed is replaced for the following pages."""
    import random

    from hostile import HOST, page_html, warc_response

    rng = random.Random(5)
    records = [
        warc_response(f"{HOST}/a.html", "text/html", page_html(rng, 0, [])),
        warc_response(f"{HOST}/attrs.html", "text/html", many_attributes_page(), n=1),
        warc_response(f"{HOST}/b.html", "text/html", page_html(rng, 1, []), n=2),
    ]
    path = tmp_path / "mixed.warc"
    path.write_bytes(b"".join(records))
    result = _extract(str(path), "--no-filter", "--page-kill-timeout", "3", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["url"].rsplit("/", 1)[-1] for d in lines] == ["a.html", "attrs.html", "b.html"]
    assert lines[1]["dropped"] == "html.parse_timeout"
    assert lines[0]["texts"] and lines[2]["texts"]
