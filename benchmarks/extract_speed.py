"""Extraction speed over every dev page: page_to_document vs bare lxml parse vs BeautifulSoup, same run.

Pages: html/readability/*/source.html (130) + html/postlight/*.html.gz (170), read into memory first
(gzip is not timed). Single process, one page at a time, each system over all pages in turn:

- `lxml.html.fromstring` — the floor: a parse and nothing else;
- `BeautifulSoup(html, "lxml")` — the parse OBELICS-era pipelines start from;
- `page_to_document(filter_text=False)` — our whole DOM stage: size cap, charset decode, bounded
  parse, clean, main content, linearise (what `m3w extract --no-filter` runs);
- `page_to_document` — the same plus the text filters (language id and Gopher rules).

Timing is per-page CPU time (`time.process_time`: the dev machine is shared by eight builders, and
wall time there measures their load more than our code); each page runs through every system in turn, `--repeat` rounds, and each page keeps its best
time per system — on a shared machine the load then hits all systems alike. Peak RSS is
`ru_maxrss` after one untimed pass of each system, lightest first (it only grows, so each row is
the high-water mark so far). Targets: ≥ 150 pages/s, DOM stage ≤ 3× the bare lxml time.

Usage: python benchmarks/extract_speed.py [--corpus DIR] [--repeat N] [--no-bs4]
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3w_builder.config import BuildConfig  # noqa: E402
from m3w_builder.document import RawPage  # noqa: E402
from m3w_builder.extract import page_to_document  # noqa: E402
from m3w_builder.reasons import Skip  # noqa: E402


def load_pages(corpus: Path) -> list[RawPage]:
    pages = []
    for path in sorted((corpus / "html" / "readability").glob("*/source.html")):
        pages.append(RawPage("http://fakehost/test/page.html", path.read_bytes(), {}, str(path)))
    for path in sorted((corpus / "html" / "postlight").glob("*.html.gz")):
        url = f"https://{path.name.split('--')[0].removesuffix('.html.gz')}/"
        pages.append(RawPage(url, gzip.decompress(path.read_bytes()), {}, str(path)))
    return pages


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_systems(
    systems: dict[str, Callable[[RawPage], object]], pages: list[RawPage], repeat: int
) -> dict[str, tuple[list[float], Counter]]:
    """Per-page minimum seconds over `repeat` rounds, systems interleaved page by page so that the
    load of a shared machine hits every system alike; plus each system's outcome counts."""
    best = {name: [float("inf")] * len(pages) for name in systems}
    outcomes = {name: Counter() for name in systems}
    for round_ in range(repeat):
        for i, page in enumerate(pages):
            for name, fn in systems.items():
                start = time.process_time()
                try:
                    fn(page)
                    outcome = "ok"
                except Skip as skip:
                    outcome = skip.code
                elapsed = time.process_time() - start
                best[name][i] = min(best[name][i], elapsed)
                if round_ == 0:
                    outcomes[name][outcome] += 1
    return {name: (best[name], outcomes[name]) for name in systems}


def rss_of(fn: Callable[[RawPage], object], pages: list[RawPage]) -> float:
    """Peak RSS after running `fn` over every page (ru_maxrss only grows: call lightest first)."""
    for page in pages:
        try:
            fn(page)
        except Skip:
            pass
    return peak_rss_mb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))
    parser.add_argument("--corpus", type=Path, default=default)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per system")
    parser.add_argument("--no-bs4", action="store_true", help="skip the slow BeautifulSoup row")
    args = parser.parse_args(argv)

    import lxml.html
    from bs4 import BeautifulSoup

    pages = load_pages(args.corpus)
    mb = sum(len(p.body) for p in pages) / 1e6
    config = BuildConfig.for_profile("m3w")
    systems: dict[str, Callable[[RawPage], object]] = {
        "lxml.html.fromstring (floor)": lambda p: lxml.html.fromstring(p.body),
        "page_to_document, no filter": lambda p: page_to_document(p, config, filter_text=False),
        "page_to_document + text filters": lambda p: page_to_document(p, config),
    }
    if not args.no_bs4:
        systems['BeautifulSoup(html, "lxml")'] = lambda p: BeautifulSoup(p.body, "lxml")
    rss = {name: rss_of(fn, pages) for name, fn in systems.items()}
    timed = time_systems(systems, pages, args.repeat)
    rows = [(name, sum(per_page), per_page, outcomes, rss[name])
            for name, (per_page, outcomes) in timed.items()]  # fmt: skip
    floor = rows[0][1]
    print(f"{len(pages)} pages, {mb:.1f} MB, per-page best of {args.repeat} (interleaved)\n")
    print("| system | pages/s | MB/s | total s | × lxml | p50 ms | p99 ms | max ms | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, per_page, _, rss_mb in rows:
        ms = sorted(1000 * t for t in per_page)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        print(
            f"| {name} | {len(pages) / seconds:.0f} | {mb / seconds:.1f} | {seconds:.2f} | "
            f"{seconds / floor:.2f} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.0f} | "
            f"{rss_mb:.0f} |"
        )
    print()
    for name, _, _, outcomes, _ in rows[1:3]:
        print(f"{name}: {dict(outcomes.most_common())}")
    slow = sorted(zip(rows[1][2], pages, strict=True), key=lambda x: -x[0])[:5]
    print("\nslowest pages (no filter):")
    for t, page in slow:
        print(f"  {1000 * t:7.1f} ms  {len(page.body) / 1e3:7.0f} KB  {Path(page.source_file).parent.name}"
              f"/{Path(page.source_file).name}")  # fmt: skip
    print(
        f"\nmachine: {platform.machine()} {os.cpu_count()} cpus (load avg "
        f"{os.getloadavg()[0]:.1f}), python {platform.python_version()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
