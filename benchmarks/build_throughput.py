"""End-to-end build throughput: the Ray job against the single-process library loop, same inputs, same run.

Each row is the best of `--repeats` runs (the machine is shared: the best run is the least disturbed),
after one untimed warm-up of the library (imports, the language-id model).

Input: the generated sample site (pipelines/demo/sample_site.py) written as a crawl of gzipped WARC files, pages
*and* images inside, so the build is CPU-bound (parse, text filters, image decode/re-encode, tar writing)
with no network. Rows, all over the same WARCs:

- `library loop`: the plain loop a user would write with the library: iter_pages → page_to_document →
  resolve_images (archive) → attach.sample → RollingShardWriter; no dedup, no resume state. The baseline.
- `m3w build, no Ray`: the job's own stages run one after another in this process (run_build(use_ray=False)):
  what the job machinery itself costs (extract files, dedup pass, part shards, renames).
- `m3w build, Ray N CPU`: the job on a local Ray with N CPUs; Ray's start-up is timed separately and left
  out of the rate (a cluster is started once for many jobs).

Pages/s counts pages read; documents/s counts documents written. The machine, its load and the date are
printed with the table. Usage:

    python benchmarks/build_throughput.py [--pages 400] [--warcs 8] [--cpus 1,2] [--write-md PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3w_builder.config import BuildConfig  # noqa: E402
from pipelines.build.job import JobOptions, run_build  # noqa: E402
from pipelines.demo.sample_site import make_site, write_warcs  # noqa: E402


def config() -> BuildConfig:
    c = BuildConfig.for_profile("m3w")
    c.fetch.offline = True  # every image comes from the archives
    c.shards.docs_per_shard = 100
    return c


def library_loop(warcs: list[str], out: Path) -> tuple[int, int]:
    """The baseline: the library's stages chained by hand in one process."""
    from m3w_builder.attach import sample
    from m3w_builder.extract import page_to_document
    from m3w_builder.images import resolve_images
    from m3w_builder.reasons import Counts, Skip
    from m3w_builder.shards import RollingShardWriter
    from m3w_builder.sources import iter_pages
    from m3w_builder.warc import ArchiveIndex

    c, counts = config(), Counts()
    archive = ArchiveIndex.build(warcs, counts)
    pages = docs = 0
    batch = []
    keys: set[str] = set()  # a URL captured twice is one document (a shard holds a key once)
    with RollingShardWriter(out, docs_per_shard=100, max_shard_bytes=10**9) as writer:

        def flush() -> int:
            written = 0
            for doc in resolve_images(batch, c, counts, archive):
                writer.write(sample(doc, seed=0))
                written += 1
            batch.clear()
            return written

        for path in warcs:
            for page in iter_pages(path, counts, c.sources):
                pages += 1
                try:
                    doc = page_to_document(page, c)
                except Skip:
                    continue
                if doc.key in keys:
                    continue
                keys.add(doc.key)
                batch.append(doc)
                if len(batch) == 32:
                    docs += flush()
        docs += flush()
    return pages, docs


def timed_job(warcs: list[str], out: Path, *, use_ray: bool) -> tuple[float, int, int]:
    start = time.perf_counter()
    report = run_build(warcs, config(), JobOptions(out=str(out), progress=False), use_ray=use_ray)
    return time.perf_counter() - start, report["pages"], report["documents"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--warcs", type=int, default=8, help="WARC files = units of parallel work")
    parser.add_argument("--cpus", default="1,2", help="local Ray sizes to run")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per row")
    parser.add_argument("--write-md", help="also write the table and conditions to this file")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="m3w-bench-build-"))
    try:
        make_site(work / "site", pages=args.pages, seed=0)
        warcs = [str(p) for p in write_warcs(work / "site", work / "warc", files=args.warcs)]
        rows: list[tuple[str, float, int, int, str]] = []
        library_loop(warcs[:1], work / "warm-up")  # imports, language-id model, Pillow plugins
        rep = range(args.repeats)

        def loop_once(i: int) -> tuple[float, int, int]:
            start = time.perf_counter()
            pages, docs = library_loop(warcs, work / f"loop{i}")
            return time.perf_counter() - start, pages, docs

        rows.append(("library loop (1 process)", *min(loop_once(i) for i in rep), "-"))
        best = min(timed_job(warcs, work / f"local{i}", use_ray=False) for i in rep)
        rows.append(("m3w build, no Ray (1 process)", *best, "-"))

        import ray

        from pipelines.build.ray_local import init_ray

        for n in [int(x) for x in args.cpus.split(",")]:
            start = time.perf_counter()
            init_ray(num_cpus=n, log_to_driver=False)
            startup = time.perf_counter() - start
            try:
                best = min(timed_job(warcs, work / f"ray{n}-{i}", use_ray=True) for i in rep)
            finally:
                ray.shutdown()
            rows.append((f"m3w build, Ray {n} CPU", *best, f"{startup:.1f}"))
        table = render(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    conditions = (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average before the run {os.getloadavg()[0]:.2f}; "
        f"{args.pages} pages in {args.warcs} WARC files, best of {args.repeats}"
    )
    print(table)
    print()
    print(conditions)
    if args.write_md:
        Path(args.write_md).write_text(f"{table}\n\n{conditions}\n")


def render(rows: list[tuple[str, float, int, int, str]]) -> str:
    base = rows[0][2] / rows[0][1]
    lines = [
        "| run | seconds | pages | docs | pages/s | docs/s | vs library loop | Ray start-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, pages, docs, startup in rows:
        rate = pages / seconds
        lines.append(
            f"| {name} | {seconds:.2f} | {pages} | {docs} | {rate:.1f} | {docs / seconds:.1f} "
            f"| {rate / base:.2f}× | {startup} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
