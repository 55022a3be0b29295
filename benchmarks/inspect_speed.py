"""`m3w inspect stats` and `verify` throughput (MB/s) against bare tar reads, measured in the same run.

Generates ~200 MB of m3w/1 shards (noise JPEG/PNG/WebP images of realistic sizes, so they do not compress
away, written with the real ShardWriter) into a scratch dir outside git, warms the page cache, then times
each reader over all shards (best of --repeat):

  raw read         f.read(1 MiB) to EOF: the disk/page-cache ceiling
  tarfile stream   bare `tarfile` stream iteration reading every member: the baseline of the issue
  iter_shard       m3w_builder.shards.iter_shard (tarfile grouped into samples)
  webdataset       webdataset.WebDataset(urls) samples, undecoded: what a training loader pays
  stats            pipelines.inspect.stats.compute_stats (reads 16-byte image heads, seeks the rest)
  stats (read all) the same aggregation with every image byte read (what a pipe would force)
  verify -j1/-jN   pipelines.inspect.verify.verify: reads, hashes and fully decodes every image
  verify --no-decode   the same with image headers parsed but pixels not decoded

Usage: python benchmarks/inspect_speed.py [--mb 200] [--dir /tmp/m3w-inspect-bench] [--jobs 2]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import os
import platform
import random
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m3w_builder.document import Document, ImageNode, TextNode  # noqa: E402
from m3w_builder.shards import ShardWriter, iter_shard  # noqa: E402
from pipelines.inspect.read import iter_target, resolve_target  # noqa: E402
from pipelines.inspect.stats import Stats, compute_stats, whitespace_tokens  # noqa: E402
from pipelines.inspect.verify import verify  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while river light falls on stone".split()


def image_pool(rng: random.Random, n: int = 48) -> list[tuple[bytes, str, int, int]]:
    """Noise images (incompressible, so stored sizes look like real photos: ~20-150 kB)."""
    pool = []
    for i in range(n):
        w, h = rng.randrange(160, 480), rng.randrange(120, 360)
        noise = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
        img = Image.new("RGB", (w, h), (rng.randrange(256),) * 3)
        img = Image.blend(img, noise, 0.35)
        ext, fmt = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")][i % 3]
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=85)
        pool.append((buf.getvalue(), ext, w, h))
    return pool


def generate(out: Path, megabytes: int, docs_per_shard: int = 100, seed: int = 0) -> list[Path]:
    """Shards until ~`megabytes` MB are written (kept across runs when the size matches)."""
    stamp = out / f".complete-{megabytes}-{docs_per_shard}"
    if stamp.exists():
        return sorted((out / "shards").glob("*.tar"))
    rng = random.Random(seed)
    pool = image_pool(rng)
    total, s, d = 0, 0, 0
    shards = []
    while total < megabytes * 1e6:
        path = out / "shards" / f"{s:06d}.tar"
        with ShardWriter(path) as writer:
            for _ in range(docs_per_shard):
                nodes: list[TextNode | ImageNode] = []
                for k in range(rng.randrange(1, 5)):
                    nodes.append(TextNode(" ".join(rng.choices(WORDS, k=rng.randrange(20, 200)))))
                    data, ext, w, h = rng.choice(pool)
                    nodes.append(
                        ImageNode(
                            src=f"https://x/{d}/{k}.{ext}",
                            width=w,
                            height=h,
                            data=data,
                            ext=ext,
                            sha256=hashlib.sha256(data).hexdigest(),
                            attach="following",
                        )
                    )
                nodes.append(TextNode(" ".join(rng.choices(WORDS, k=50))))
                writer.write(Document(url=f"https://example.org/{d}", nodes=nodes, lang="en"))
                d += 1
        total += path.stat().st_size
        shards.append(path)
        s += 1
    stamp.touch()
    return shards


def raw_read(shards: list[Path]) -> None:
    for p in shards:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def bare_tarfile(shards: list[Path]) -> None:
    for p in shards:
        with tarfile.open(p, mode="r|") as tar:
            for m in tar:
                tar.extractfile(m).read()  # type: ignore[union-attr]


def m3w_iter_shard(shards: list[Path]) -> None:
    for p in shards:
        for _ in iter_shard(p):
            pass


def webdataset_iter(shards: list[Path]) -> None:
    import webdataset as wds

    for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        pass


def stats_read_all(target) -> None:
    stats = Stats()
    for s in iter_target(target, images=True):
        stats.add(s, whitespace_tokens)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--dir", default="/tmp/m3w-inspect-bench")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t = time.perf_counter()
    shards = generate(Path(args.dir), args.mb)
    gen_s = time.perf_counter() - t
    size_mb = sum(p.stat().st_size for p in shards) / 1e6
    target = resolve_target(
        str(Path(args.dir) / "shards" / f"{{000000..{len(shards) - 1:06d}}}.tar")
    )
    raw_read(shards)  # warm the page cache: every row reads from memory, not from the disk

    stats = compute_stats(target)
    rows = [
        ("raw read (1 MiB chunks)", lambda: raw_read(shards), args.repeat),
        ("tarfile stream (baseline)", lambda: bare_tarfile(shards), args.repeat),
        ("m3w iter_shard", lambda: m3w_iter_shard(shards), args.repeat),
        ("webdataset (no decode)", lambda: webdataset_iter(shards), args.repeat),
        ("inspect stats", lambda: compute_stats(target), args.repeat),
        ("inspect stats (read all)", lambda: stats_read_all(target), args.repeat),
        ("inspect verify -j1", lambda: verify(target, jobs=1), 1),
        ("inspect verify --no-decode", lambda: verify(target, decode=False), args.repeat),
    ]
    if args.jobs > 1:
        rows.append((f"inspect verify -j{args.jobs}", lambda: verify(target, jobs=args.jobs), 1))
    results = []
    for name, fn, repeat in rows:
        secs = best_of(fn, repeat)
        results.append((name, secs, size_mb / secs))
    base = next(r[2] for r in results if r[0].startswith("tarfile"))

    print(
        f"# inspect speed: {len(shards)} shards, {size_mb:.0f} MB, {stats.docs:,} docs, "
        f"{stats.images:,} images (generated in {gen_s:.0f} s)"
    )
    print(
        f"# {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · warm page cache"
    )
    print()
    print(f"| {'reader':<26} | {'seconds':>8} | {'MB/s':>8} | {'vs tarfile':>10} |")
    print(f"|{'-' * 28}|{'-' * 9}:|{'-' * 9}:|{'-' * 11}:|")
    for name, secs, rate in results:
        print(f"| {name:<26} | {secs:8.2f} | {rate:8.0f} | {rate / base:9.2f}× |")

    # Streaming check: peak Python heap over the whole set (untimed runs; tracemalloc slows them).
    print()
    print(f"| {'reader':<26} | {'peak heap MB':>12} | {'largest sample MB':>17} |")
    print(f"|{'-' * 28}|{'-' * 13}:|{'-' * 18}:|")
    largest = max(sum(s.sizes.values()) for s in iter_target(target, images=False)) / 1e6
    for name, fn in (
        ("inspect stats", lambda: compute_stats(target)),
        ("inspect verify --no-decode", lambda: verify(target, decode=False)),
    ):
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        print(f"| {name:<26} | {peak:12.1f} | {largest:17.2f} |")


if __name__ == "__main__":
    main()
