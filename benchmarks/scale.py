"""The build at scale: does the cost per page stay flat and the driver's memory stay put as N grows?

For each N, a seeded generated crawl is written as gzipped WARC files (1,000 pages a file, so a unit
each), pages *and* their images archived, shaped like a real crawl: 500 hosts, each with a logo on
every page (the job-wide image-URL frequency rule drops it) and a footer paragraph on every page (the
per-domain paragraph rule), recaptures of the same URL a month later (page-URL dedup), copies under
another URL of the same site, same images (identical documents), and near copies with small edits (near-duplicate dedup): every
page opens with a date line; a near copy has another date line and one word changed, or one short
paragraph more, and is kept only when the word 5-gram Jaccard similarity to its original is at
least 0.85 (otherwise only the date line changes), so each should be removed. The text is a small English grammar over a few thousand words, varied enough
to pass the Gopher rules. It is then built offline with the local Ray (2 CPUs) in a child process,
while the benchmark samples the RSS of the driver and of the Ray workers of that build (the
child's descendants: its raylet and the workers the raylet starts; other jobs' Ray workers on the
same machine are not counted).

Printed per N: wall time, pages/s, seconds per phase (extract, decide, write, finalize), peak RSS of
the driver and of the largest worker, bytes under `_work/` (its largest, sampled every 5 s during
the build, less `write/`, which holds shard parts in flight, and what is left after it) and
`shards/`, documents kept and
near-duplicates removed beside the near copies generated; the cost per page is given relative to
the smallest N, the baseline of the same run. `--json OUT` writes JSON Lines: one object per N, on
one line, appended as soon as that N finishes (a single-N run's file is exactly one JSON object),
with at least `pages`, `pages_per_s`, `driver_peak_rss_mb`, `worker_peak_rss_mb`, `docs_kept`,
`near_duplicates` (and `near_copies`, the near copies the crawl holds).

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

from m3w_builder.minhash import jaccard  # noqa: E402
from pipelines.demo.crawl_archive import CrawlArchive  # noqa: E402

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


def _dated(paras: list[str], day: int, verb: str = "Published") -> list[str]:
    """The paragraphs with the date line opening the first one."""
    return [f"{verb} on day {day}. {paras[0]}", *paras[1:]]


def _near_copy(rng: random.Random, text: _Text, paras: list[str], day: int, n: int) -> list[str]:
    """A small edit of the dated paragraphs: another date line and one word changed, or one short
    paragraph more; only the date line when that leaves the word 5-gram Jaccard below 0.85."""
    original = _dated(paras, day)
    if rng.random() < 0.5:
        edited = _dated(paras, n, "Updated")
        i = rng.randrange(len(edited))
        words = edited[i].split()
        j = rng.randrange(4 if i == 0 else 0, len(words))
        words[j] = rng.choice(text.words)
        edited[i] = " ".join(words)
    else:
        edited = [*original, text.sentence()]
    if jaccard(" ".join(original), " ".join(edited)) < 0.85:
        edited = _dated(paras, n, "Updated")
    return edited


def write_crawl(dest: Path, pages: int, seed: int = 0) -> tuple[list[Path], int]:
    """The crawl of `pages` page captures; returns the WARC files and the number of near copies."""
    rng = random.Random(seed)
    text = _Text(rng)
    pool = _images(rng)
    logos = {h: pool[h % len(pool)] for h in range(HOSTS)}
    files: list[Path] = []
    # (host, title, paragraphs, day, image paths) of earlier pages, for copies
    made: list[tuple[int, str, list[str], int, list[str]]] = []
    near_copies = 0
    n = 0
    while n < pages:
        path = dest / f"crawl-{len(files):05d}.warc.gz"
        files.append(path)
        with CrawlArchive(path) as warc:
            logged: set[int] = set()
            for _ in range(min(PAGES_PER_FILE, pages - n)):
                host = rng.randrange(HOSTS)
                kind = rng.random()
                images = [f"/img/{n}-{i}.jpg" for i in range(rng.randint(1, 2))]
                if made and kind < 0.05:  # a near copy: a small edit (see _near_copy)
                    host, title, paras, day, _ = rng.choice(made)
                    paras = _near_copy(rng, text, paras, day, n)
                    near_copies += 1
                elif made and kind < 0.08:  # a copy under another URL of the same site: identical
                    host, title, paras, day, images = rng.choice(made)
                    paras = _dated(paras, day)
                else:
                    title = f"Notes {n}"
                    raw = [text.paragraph() for _ in range(rng.randint(3, 6))]
                    made.append((host, title, raw, n, images))
                    paras = _dated(raw, n)
                    if len(made) > 2000:
                        made.pop(rng.randrange(len(made)))
                url = f"http://h{host}.example/p{n}.html"
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
    return files, near_copies


# ------------------------------------------------------------------------ measuring a build

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from m3w_builder.config import BuildConfig
from pipelines.build.job import JobOptions, run_build
from pipelines.build.ray_local import init_ray
init_ray(num_cpus=2, log_to_driver=False)
config = BuildConfig.for_profile("m3w")
config.fetch.offline = True
start = time.perf_counter()
report = run_build({inputs!r}, config, JobOptions(out={out!r}, progress=False))
wall = time.perf_counter() - start
print(json.dumps({{"report": report, "wall_s": wall,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _descendants(root: int) -> list[int]:
    """The PIDs below `root` in the process tree (from /proc/*/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


class _WorkerSampler(threading.Thread):
    """The largest peak RSS (VmHWM, from /proc) of the Ray worker processes (`ray::...`) of one
    build, read every 0.5 s while it runs: only descendants of the build's process count (a local
    Ray's raylet is the driver's child, its workers the raylet's), so other jobs' Ray workers on the
    same machine do not; a worker's high-water mark survives between two reads."""

    def __init__(self, root: int, work: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.work = work
        self.peak_mb = 0.0
        self.workers: set[int] = set()
        self.work_peak: dict[str, int] = {}  # the largest bytes seen under each _work/ subfolder
        self.stop = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self.stop.is_set():
            if ticks % 10 == 0:  # _work/ is cleaned at the end: sample its size every 5 s
                for key, size in _bytes_by_folder(self.work).items():
                    self.work_peak[key] = max(size, self.work_peak.get(key, 0))
            ticks += 1
            for pid in _descendants(self.root):
                proc = Path("/proc") / str(pid)
                try:
                    cmd = (
                        (proc / "cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                    if not (cmd.startswith("ray::") or "default_worker.py" in cmd):
                        continue
                    self.workers.add(pid)
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            self.stop.wait(0.5)


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bytes_by_folder(path: Path) -> dict[str, int]:
    """Bytes under each first-level entry of `path`, tolerating files that vanish meanwhile."""
    out: dict[str, int] = {}
    for top, _, names in os.walk(path):
        rel = Path(top).relative_to(path).parts
        key = rel[0] if rel else "."
        for name in names:
            try:
                out[key] = out.get(key, 0) + os.stat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return out


def measure(pages: int, work: Path) -> dict:
    crawl = work / f"crawl-{pages}"
    started = time.perf_counter()
    files, near_copies = write_crawl(crawl, pages)
    generate_s = time.perf_counter() - started
    out = work / f"job-{pages}"
    code = _CHILD.format(repo=str(REPO), inputs=[str(f) for f in files], out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = _WorkerSampler(proc.pid, out / "_work")
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"build of {pages} pages failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
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
        "worker_processes": len(sampler.workers),
        "work_bytes": _bytes_under(out / "_work"),  # after the build (it cleans _work/)
        # the job-wide state during the build: the largest size seen of each _work/ subfolder,
        # summed, less write/ (the shards' tar parts in flight, moved into shards/ when complete)
        "work_peak_bytes": sum(v for k, v in sampler.work_peak.items() if k != "write"),
        "work_peak_by_folder": sampler.work_peak,
        "shard_bytes": _bytes_under(out / "shards"),
        "docs_kept": report["documents"],
        "near_duplicates": near.get("removed", 0),
        "near_copies": near_copies,
        "near_cluster_sizes": near.get("sizes"),
        "partitions": report.get("partitions"),
        "units": report.get("units"),
        "generate_s": round(generate_s, 1),
    }


def render(rows: list[dict]) -> str:
    base = rows[0]["wall_s"] / rows[0]["pages"]
    head = ("pages", "wall s", "pages/s", "cost/page vs first", "extract s", "decide s", "write s",
            "finalize s", "driver MB", "worker MB", "_work MB peak / end", "shards MB", "docs kept",
            "near dups removed / near copies made")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ph = r["phases_s"]
        lines.append(
            "| " + " | ".join(str(x) for x in (
                f"{r['pages']:,}", r["wall_s"], r["pages_per_s"],
                f"{r['wall_s'] / r['pages'] / base:.2f}", ph.get("extract"), ph.get("decide"),
                ph.get("write"), ph.get("finalize"), r["driver_peak_rss_mb"], r["worker_peak_rss_mb"],
                f"{r['work_peak_bytes'] / 1e6:,.1f} / {r['work_bytes'] / 1e6:,.1f}",
                f"{r['shard_bytes'] / 1e6:,.0f}",
                f"{r['docs_kept']:,}", f"{r['near_duplicates']:,} / {r['near_copies']:,}",
            )) + " |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", default="10000,100000,500000", help="comma-separated Ns")
    parser.add_argument("--keep", help="keep crawls and jobs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the rows here, JSON Lines: one object per N")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="m3w-scale-"))
    if args.json:
        Path(args.json).write_text("")
    rows = []
    try:
        for n in (int(x) for x in args.pages.split(",")):
            rows.append(measure(n, work))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
