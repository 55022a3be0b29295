"""End-to-end yield of real crawls: what a build keeps from archives that hold pages *with* their images.

Inputs, all built offline (`fetch.offline`: 0 network requests) with the local Ray:

- every WARC/ARC file of the dev corpus (`warc/aut`, `warc/warcio`), one job each;
- the dev corpus' real readability pages (those with main-content images in `expected.html`) written
  into WARC files with their images archived the way real crawlers archive them
  (`pipelines/demo/crawl_archive.py`), one job per shape:
  `src` (only each `<img src>`), `x1` (only the 1x/smallest `srcset` candidate), `lazy` (the URL a lazy
  loader swaps in), `noscript` (the `<noscript>` copy), `revisit` (the `src` bytes stored once in an
  earlier crawl's file under another URL, and as a revisit record in the pages' file).
  Image bytes are drawn (Pillow), sized from the tag's width/height where it has them.

Printed: the yield funnel of every job (pages read → HTML → extracted → text rules → dedup → with an
image → kept; image candidates → resolved → kept, with the top reason codes), and, per shape, the share
of **archived main-content images** resolved from the archive. Main-content images are the ground truth
of `expected.html`; one is "archived" when its `<img>` had the URL the shape's crawler stores. The share
is given against those the extraction found (the resolver's own rate, target ≥ 95%) and against all of
them (end to end, bounded by the extraction's image recall, see extract_quality.py).

    python benchmarks/crawl_yield.py [--corpus DIR] [--cases N] [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lxml.html  # noqa: E402

from m3w_builder.config import BuildConfig  # noqa: E402
from m3w_builder.document import Document  # noqa: E402
from m3w_builder.dom import srcset_by_size  # noqa: E402
from m3w_builder.extract import page_to_document  # noqa: E402
from m3w_builder.images import ImageResolver  # noqa: E402
from m3w_builder.reasons import Counts, Skip  # noqa: E402
from m3w_builder.sources import iter_pages  # noqa: E402
from m3w_builder.warc import ArchiveIndex  # noqa: E402
from pipelines.build.funnel import format_funnel  # noqa: E402
from pipelines.build.job import JobOptions, run_build  # noqa: E402
from pipelines.demo.crawl_archive import SHAPES, CrawlArchive, archived_url, image_type  # noqa: E402

_LAZY = ("data-src", "data-original", "data-lazy-src", "data-url", "data-hi-res-src", "data-srcset")


def offline_config() -> BuildConfig:
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    return config


# ------------------------------------------------------------------------ generated crawls


@dataclass
class Case:
    id: str
    page_url: str
    html: bytes
    truth: list[set[str]]  # per main-content image: its URLs
    elements: list[set[str]] = field(default_factory=list)  # per <img>: every URL it names
    archived: list[str | None] = field(default_factory=list)  # per <img>: what the shape stored


def _img_urls(img: lxml.html.HtmlElement, base: str) -> set[str]:
    raw = [img.get("src")] + [img.get(a) for a in _LAZY[:-1]]
    for attr in ("srcset", "data-srcset"):
        if img.get(attr):
            raw += srcset_by_size(img.get(attr))
    nxt = img.getnext()
    if nxt is not None and nxt.tag == "noscript":
        raw += [c.get("src") for c in nxt.iter("img")]
    out = set()
    for value in raw:
        if value and not value.strip().startswith("data:"):
            try:
                out.add(urljoin(base, value.strip()).split("#", 1)[0])
            except ValueError:
                pass
    return out


def load_cases(corpus: Path, limit: int | None) -> list[Case]:
    """Real readability captures with main-content images; each on a host of its own, so their
    relative image URLs never collide in one archive."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from extract_quality import load_truth

    folder = corpus / "html" / "readability"
    cases = []
    for line in (folder / "index.jsonl").read_text().splitlines():
        meta = json.loads(line)
        if meta["synthetic"] or not meta.get("img_main_gt"):
            continue
        host = f"{re.sub(r'[^a-z0-9-]', '-', meta['id'].lower())}.fakehost"
        page_url = f"http://{host}/test/page.html"
        truth = [
            {u.replace("http://fakehost/", f"http://{host}/", 1) for u in t}
            for t in load_truth(folder / meta["id"] / "expected.html").images
        ]
        html = (folder / meta["id"] / "source.html").read_bytes()
        cases.append(Case(meta["id"], page_url, html, [t for t in truth if t]))
        if limit and len(cases) >= limit:
            break
    return cases


def drawn(url: str, width: int | None, height: int | None) -> bytes:
    """A picture that passes the M3W image rules, different for every URL."""
    from PIL import Image, ImageDraw

    rng = random.Random(hashlib.sha1(url.encode()).digest())
    w = width if width and 100 <= width <= 1600 else 480
    h = height if height and 100 <= height <= 1600 else 320
    w, h = max(w, h // 2), max(h, w // 2)  # aspect ≤ 2
    im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(8):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randint(10, w), y + rng.randint(10, h))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    fmt = {"image/png": "PNG", "image/gif": "GIF"}.get(image_type(url), "JPEG")
    im.save(out, fmt)
    return out.getvalue()


def _size(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def write_shape(cases: list[Case], shape: str, dest: Path) -> list[Path]:
    """The shape's WARC files; fills each case's `elements` and `archived`."""
    pages = CrawlArchive(dest / "pages.warc.gz")
    earlier = CrawlArchive(dest / "earlier.warc.gz")
    with pages, earlier:
        for case in cases:
            root = lxml.html.fromstring(case.html)
            case.elements, case.archived = [], []
            stored: set[str] = set()
            for img in root.iter("img"):
                if img.getparent() is not None and img.getparent().tag == "noscript":
                    continue  # a copy: counted with the visible <img> before it
                case.elements.append(_img_urls(img, case.page_url))
                url = archived_url(img, case.page_url, "src" if shape == "revisit" else shape)
                case.archived.append(url)
                if url is None or url in stored:
                    continue
                stored.add(url)
                body = drawn(url, _size(img.get("width")), _size(img.get("height")))
                if shape == "revisit":
                    first = f"{url}{'&' if '?' in url else '?'}crawl=earlier"
                    digest = earlier.response(first, body, image_type(url))
                    pages.revisit(url, digest, first, image_type(url))
                else:
                    pages.response(url, body, image_type(url))
            pages.response(case.page_url, case.html, "text/html; charset=utf-8")
    return [dest / "pages.warc.gz", dest / "earlier.warc.gz"]


@dataclass
class ShapeScore:
    archived: int = 0  # archived main-content images
    found: int = 0  # ... that the extraction turned into an ImageNode
    resolved: int = 0  # ... resolved from the archive
    first_only: int = 0  # ... whose first (preferred) URL alone is archived: one lookup per <img>
    failures: dict[str, int] = field(default_factory=dict)


def score_shape(cases: list[Case], warcs: list[Path], config: BuildConfig) -> ShapeScore:
    """The library path of the build (page_to_document, then the offline resolver with the
    shape's archive index), one image at a time, so each outcome maps to its truth image."""
    index = ArchiveIndex.build([str(p) for p in warcs], Counts())
    score = ShapeScore()
    pages = {p.url: p for p in iter_pages(str(warcs[0]), Counts(), config.sources)}
    with ImageResolver(config, index) as resolver:
        for case in cases:
            try:
                doc = page_to_document(pages[case.page_url], config, filter_text=False)
            except Skip:
                doc = Document(case.page_url)
            nodes = doc.image_nodes
            for truth in case.truth:
                element = next((i for i, e in enumerate(case.elements) if e & truth), None)
                if element is None or case.archived[element] is None:
                    continue
                score.archived += 1
                names = truth | case.elements[element]
                node = next((n for n in nodes if names & set(n.candidates or [n.src])), None)
                if node is None:
                    continue
                score.found += 1
                score.first_only += index.lookup(node.src) is not None
                one = Document(case.page_url, [node])
                counts = Counts()
                kept = resolver.resolve([one], counts)
                if kept and counts.get("image.from_archive"):
                    score.resolved += 1
                else:
                    code = next((d for d in one.drops), "image.unknown")
                    score.failures[code] = score.failures.get(code, 0) + 1
    return score


# ------------------------------------------------------------------------------- the run


def build(inputs: list[str], out: Path) -> dict:
    return run_build(inputs, offline_config(), JobOptions(out=str(out), progress=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "dev"))
    parser.add_argument("--cases", type=int, help="at most N readability cases")
    parser.add_argument("--keep", help="keep the WARCs and jobs here")
    parser.add_argument("--json", help="write every funnel and score here")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        print(f"dev corpus not found at {corpus}", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="m3w-yield-"))
    from pipelines.build.ray_local import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        for warc in sorted((corpus / "warc").rglob("*")):
            if warc.is_file() and warc.name != "index.jsonl":
                name = f"{warc.parent.name}/{warc.name}"
                report = build([str(warc)], work / "jobs" / name.replace("/", "__"))
                results[name] = {"report": report}
        cases = load_cases(corpus, args.cases)
        config = offline_config()
        for shape in SHAPES:
            warcs = write_shape(cases, shape, work / "warc" / shape)
            report = build([str(p) for p in warcs], work / "jobs" / f"shape-{shape}")
            results[f"shape:{shape}"] = {
                "report": report,
                "score": score_shape(cases, warcs, config).__dict__,
            }
    finally:
        import ray

        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print_tables(results, len(cases))
    requests = sum(r["report"]["counts"].get("fetch.requests", 0) for r in results.values())
    print(f"\nnetwork requests, all jobs: {requests}")
    load = os.getloadavg()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, load {load[0]:.1f}/{load[1]:.1f}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def print_tables(results: dict[str, dict], n_cases: int) -> None:
    rows = [("input", "captures", "HTML", "docs", "kept", "img cand.", "from archive", "img kept")]
    for name, r in results.items():
        steps = {s["step"]: s["count"] for s in r["report"]["funnel"]["documents"]}
        images = {s["step"]: s["count"] for s in r["report"]["funnel"]["images"]}
        src = r["report"]["funnel"]["images_resolved"]
        rows.append(
            (
                name,
                str(steps["captures read"]),
                str(steps["HTML pages"]),
                str(steps["passed text rules"]),
                str(steps["documents kept"]),
                str(images["image candidates"]),
                str(src["archive"]),
                str(images["kept"]),
            )
        )
    print(_md(rows))
    print(f"\narchived main-content images resolved from the archive ({n_cases} real pages):\n")
    rows = [
        (
            "shape",
            "archived",
            "found by extraction",
            "resolved",
            "of found",
            "of archived",
            "baseline: first URL only, of found",
            "failures",
        )
    ]
    for name, r in results.items():
        if "score" not in r:
            continue
        s = r["score"]
        of_found = s["resolved"] / s["found"] if s["found"] else float("nan")
        of_all = s["resolved"] / s["archived"] if s["archived"] else float("nan")
        fails = ", ".join(
            f"{k} {v}" for k, v in sorted(s["failures"].items(), key=lambda kv: -kv[1])
        )
        first = s["first_only"] / s["found"] if s["found"] else float("nan")
        rows.append(
            (name.split(":")[1], str(s["archived"]), str(s["found"]), str(s["resolved"]),
             f"{of_found:.1%}", f"{of_all:.1%}", f"{first:.1%}", fails or "-")
        )  # fmt: skip
    print(_md(rows))
    for name, r in results.items():
        print(f"\n### {name}\n")
        print(format_funnel(r["report"]["funnel"]))
        if r["report"].get("warning"):
            print(f"WARNING: {r['report']['warning']}")


def _md(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
