"""The build at scale: does the cost per page stay flat and the driver's memory stay put as N grows?

For each N, a seeded generated crawl is written as gzipped WARC files (1,000 pages a file, so a unit
each), pages *and* their images archived, shaped like a real crawl: 500 hosts, each with a logo on
every page (the job-wide image-URL frequency rule drops it) and a footer paragraph on every page (the
per-domain paragraph rule), recaptures of the same URL a month later (page-URL dedup), copies under
another URL (identical documents), near copies with an edited date line and one paragraph changed
(near-duplicate dedup). The text is a small English grammar over a few thousand words, varied enough
to pass the Gopher rules. It is then built offline with the local Ray (2 CPUs) in a child process,
while the benchmark samples the RSS of the driver and of every Ray worker.

Printed per N: wall time, pages/s, seconds per phase (extract, decide, write, finalize), peak RSS of
the driver and of the largest worker, bytes under `_work/` and `shards/`, documents kept and
near-duplicates removed; the cost per page is given relative to the smallest N, the baseline of the
same run. `--json OUT` writes one object per N with at least `pages`, `pages_per_s`,
`driver_peak_rss_mb`, `worker_peak_rss_mb`, `docs_kept`, `near_duplicates`.

    python benchmarks/scale.py --pages 10000,100000,500000 [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.crawl_archive import CrawlArchive  # noqa: E402

HOSTS = 500
PAGES_PER_FILE = 1000
_STOP = "the of and to in that with for is was on as by at from have be".split()
_SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni "
_SYLLABLES += "no nu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu"


def _vocabulary(rng: random.Random, n: int = 4000) -> list[str]:
    syl = _SYLLABLES.split()
    words = {"".join(rng.choice(syl) for _ in range(rng.randint(2, 4))) for _ in range(n * 2)}
    return sorted(words)[:n]


class _Text:
    """Sentences of the shape "The <noun> of the <noun> <verb> with <noun> and <noun>."."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = _vocabulary(rng)

    def sentence(self) -> str:
        r, w = self.rng, self.words
        parts = [
            "the",
            r.choice(w),
            r.choice(_STOP),
            "the",
            r.choice(w),
            r.choice(w) + "s",
            r.choice(_STOP),
            r.choice(w),
            "and",
            r.choice(w),
        ]
        parts += [r.choice(w) for _ in range(r.randint(2, 8))]
        text = " ".join(parts)
        return text[0].upper() + text[1:] + "."

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 6)))


def _images(rng: random.Random, n: int = 400) -> list[bytes]:
    """A pool of drawn pictures (drawing a million would take longer than the build)."""
    from PIL import Image, ImageDraw

    out = []
    for _ in range(n):
        w, h = rng.randint(120, 320), rng.randint(100, 240)
        im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = rng.randrange(w), rng.randrange(h)
            draw.ellipse((x, y, x + rng.randint(10, w), y + rng.randint(10, h)),
                         fill=tuple(rng.randrange(256) for _ in range(3)))  # fmt: skip
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _page(title: str, paragraphs: list[str], images: list[str], host: int) -> bytes:
    body = [f"<h1>{title}</h1>"]
    for i, p in enumerate(paragraphs):
        body.append(f"<p>{p}</p>")
        if i < len(images):
            body.append(f'<figure><img src="{images[i]}" alt="figure {i}"></figure>')
    body.append(f'<p><img src="/assets/mark-{host}.jpg" alt=""></p>')
    body.append(f"<p>Footer of site {host}: every article here is written by our own desk.</p>")
    return (
        "<!doctype html><html><head><title>" + title + "</title></head><body>"
        "<nav><a href='/'>Home</a></nav><article>" + "".join(body) + "</article></body></html>"
    ).encode()


def write_crawl(dest: Path, pages: int, seed: int = 0) -> list[Path]:
    """The crawl of `pages` page captures; returns the WARC files."""
    rng = random.Random(seed)
    text = _Text(rng)
    pool = _images(rng)
    logos = {h: pool[h % len(pool)] for h in range(HOSTS)}
    files: list[Path] = []
    made: list[tuple[int, str, list[str]]] = []  # (host, title, paragraphs) for copies
    n = 0
    while n < pages:
        path = dest / f"crawl-{len(files):05d}.warc.gz"
        files.append(path)
        with CrawlArchive(path) as warc:
            logged: set[int] = set()
            for _ in range(min(PAGES_PER_FILE, pages - n)):
                host = rng.randrange(HOSTS)
                kind = rng.random()
                if made and kind < 0.05:  # a near copy: another date line, one paragraph new
                    h, title, paras = rng.choice(made)
                    paras = [*paras[:-1], text.paragraph(), f"Updated on day {n}."]
                    host = h
                elif made and kind < 0.08:  # a copy under another URL
                    _, title, paras = rng.choice(made)
                else:
                    title = f"Notes {n}"
                    paras = [text.paragraph() for _ in range(rng.randint(3, 6))]
                    made.append((host, title, paras))
                    if len(made) > 2000:
                        made.pop(rng.randrange(len(made)))
                url = f"http://h{host}.example/p{n}.html"
                images = [f"/img/{n}-{i}.jpg" for i in range(rng.randint(1, 2))]
                body = _page(title, paras, images, host)
                warc.response(url, body, "text/html; charset=utf-8")
                if rng.random() < 0.05:  # a recapture of the same URL a month later
                    warc.response(
                        url, body.replace(b"Footer of", b"Footer (updated) of"), "text/html"
                    )
                for src in images:
                    warc.response(f"http://h{host}.example{src}", rng.choice(pool), "image/jpeg")
                if host not in logged:
                    warc.response(
                        f"http://h{host}.example/assets/mark-{host}.jpg", logos[host], "image/jpeg"
                    )
                    logged.add(host)
                n += 1
    return files


# ------------------------------------------------------------------------ measuring a build

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from m3w_builder.config import BuildConfig
from pipelines.build import JobOptions, run_build
from pipelines.ray_local import init_ray
init_ray(num_cpus=2, log_to_driver=False)
config = BuildConfig.for_profile("m3w")
config.fetch.offline = True
start = time.perf_counter()
report = run_build({inputs!r}, config, JobOptions(out={out!r}, progress=False))
wall = time.perf_counter() - start
print(json.dumps({{"report": report, "wall_s": wall,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


class _WorkerSampler(threading.Thread):
    """The largest peak RSS (VmHWM, from /proc) of any Ray worker process (`ray::...`), read every
    0.5 s while the build runs: a worker's high-water mark survives between two reads."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmd = (
                        (proc / "cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                    if not (cmd.startswith("ray::") or "default_worker.py" in cmd):
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            self.stop.wait(0.5)


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(pages: int, work: Path) -> dict:
    crawl = work / f"crawl-{pages}"
    started = time.perf_counter()
    files = write_crawl(crawl, pages)
    generate_s = time.perf_counter() - started
    out = work / f"job-{pages}"
    code = _CHILD.format(repo=str(REPO), inputs=[str(f) for f in files], out=str(out))
    sampler = _WorkerSampler()
    sampler.start()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"build of {pages} pages failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = result["report"]
    near = report.get("near_duplicates") or {}
    return {
        "pages": pages,
        "captures": report["funnel"]["documents"][0]["count"],
        "wall_s": round(result["wall_s"], 1),
        "pages_per_s": round(pages / result["wall_s"], 1),
        "phases_s": report.get("phases_s", {}),
        "driver_peak_rss_mb": round(result["driver_peak_rss_mb"], 1),
        "worker_peak_rss_mb": round(sampler.peak_mb, 1),
        "work_bytes": _bytes_under(out / "_work"),
        "shard_bytes": _bytes_under(out / "shards"),
        "docs_kept": report["documents"],
        "near_duplicates": near.get("removed", 0),
        "partitions": report.get("partitions"),
        "units": report.get("units"),
        "generate_s": round(generate_s, 1),
    }


def render(rows: list[dict]) -> str:
    base = rows[0]["wall_s"] / rows[0]["pages"]
    head = ("pages", "wall s", "pages/s", "cost/page vs first", "extract s", "decide s", "write s",
            "finalize s", "driver MB", "worker MB", "_work MB", "shards MB", "docs kept", "near dups")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ph = r["phases_s"]
        lines.append(
            "| " + " | ".join(str(x) for x in (
                f"{r['pages']:,}", r["wall_s"], r["pages_per_s"],
                f"{r['wall_s'] / r['pages'] / base:.2f}", ph.get("extract"), ph.get("decide"),
                ph.get("write"), ph.get("finalize"), r["driver_peak_rss_mb"], r["worker_peak_rss_mb"],
                f"{r['work_bytes'] / 1e6:,.0f}", f"{r['shard_bytes'] / 1e6:,.0f}",
                f"{r['docs_kept']:,}", f"{r['near_duplicates']:,}",
            )) + " |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", default="10000,100000,500000", help="comma-separated Ns")
    parser.add_argument("--keep", help="keep crawls and jobs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="m3w-scale-"))
    rows = []
    try:
        for n in (int(x) for x in args.pages.split(",")):
            rows.append(measure(n, work))
            print(json.dumps(rows[-1]), flush=True)
            if not args.keep:
                shutil.rmtree(work / f"crawl-{n}", ignore_errors=True)
                shutil.rmtree(work / f"job-{n}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(render(rows))
    load = os.getloadavg()
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cpus, load {load[0]:.1f}/{load[2]:.1f}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
