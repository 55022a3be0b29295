"""Images/s end to end (fetch + decode + filter + re-encode + hash) against a local server that adds
latency to every response, versus a plain sequential urllib + Pillow loop; plus peak RSS with 1,000
requests in flight.

    python benchmarks/image_fetch.py [--images 2000] [--latency-ms 20] [--inflight 1000]

The server is an aiohttp app in its own process (so its CPU is not the client's GIL), bound to
127.0.0.1, serving ~50 KB JPEGs (640×480 photo-like blocks) under distinct URLs. Each scenario runs
in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_jpegs(n: int = 64, seed: int = 0) -> list[bytes]:
    """Photo-like 640×480 JPEGs of about 50 KB: smooth gradients plus random 16-px blocks."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        blocks = rng.random((30, 40, 3)) * 120
        base = np.kron(blocks, np.ones((16, 16, 1)))
        grad = np.stack([xx / 640 * 100, yy / 480 * 100, (xx + yy) / 1120 * 100], -1)
        noise = rng.normal(0, 9, (480, 640, 3))
        arr = np.clip(base + grad + noise + i, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def serve(port_queue: mp.Queue, latency_s: float, n_images: int) -> None:
    """aiohttp server process: /img/<i>.jpg → image i % 64, after `latency_s`."""
    from aiohttp import web

    images = make_jpegs()
    state = {"inflight": 0, "max_inflight": 0}

    async def handle(request: web.Request) -> web.Response:
        state["inflight"] += 1
        state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        try:
            await asyncio.sleep(latency_s)
        finally:
            state["inflight"] -= 1
        i = int(request.match_info["i"])
        return web.Response(body=images[i % len(images)], content_type="image/jpeg")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**state, "cpu_s": time.process_time()})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/img/{i}.jpg", handle)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port_queue.put(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads: unlike wall time, not inflated when
    other jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_m3w(
    port: int,
    n: int,
    concurrency: int,
    per_host: int,
    workers: int,
    passthrough: bool,
    stream: bool = False,
) -> dict:
    """resolve_images over n one-image documents (each image its own document, so no dedup), or
    with `stream` iter_resolved in batches of 32 documents, 8 batches in flight (the build's use)."""
    from m3w_builder.config import BuildConfig
    from m3w_builder.document import Document, ImageNode
    from m3w_builder.images import iter_resolved, resolve_images
    from m3w_builder.reasons import Counts

    config = BuildConfig()
    config.fetch.allowed_hosts = ["127.0.0.1"]
    config.fetch.concurrency = concurrency
    config.fetch.per_host_concurrency = per_host
    config.fetch.total_timeout_s = 120
    config.fetch.read_timeout_s = 60
    config.images.decode_workers = workers
    config.images.jpeg_passthrough = passthrough
    docs = [
        Document(f"http://p/{i}", [ImageNode(f"http://127.0.0.1:{port}/img/{i}.jpg")])
        for i in range(n)
    ]
    counts = Counts()
    rss0, cpu0 = rss_mb(), cpu_s()
    start = time.perf_counter()
    if stream:
        kept = list(iter_resolved(docs, config, counts, batch_docs=32, window=8))
    else:
        kept = resolve_images(docs, config, counts)
    elapsed = time.perf_counter() - start
    return {
        "images": counts["image.kept"],
        "docs": len(kept),
        "seconds": elapsed,
        "rate": counts["image.kept"] / elapsed,
        "rss_start_mb": rss0,
        "rss_peak_mb": rss_mb(),
        "cpu_s": cpu_s() - cpu0,
        "drops": {k: v for k, v in counts.items() if k not in ("image.kept", "image.from_web")},
    }


def run_baseline(port: int, n: int) -> dict:
    """What one would write first: urllib, one image at a time, decode, shrink, re-encode, hash."""
    rss0, cpu0 = rss_mb(), cpu_s()
    start = time.perf_counter()
    ok = 0
    for i in range(n):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/img/{i}.jpg", timeout=30) as resp:
            data = resp.read()
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((1024, 1024))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
        hashlib.sha256(out.getvalue()).hexdigest()
        ok += 1
    elapsed = time.perf_counter() - start
    return {
        "images": ok,
        "seconds": elapsed,
        "rate": ok / elapsed,
        "rss_start_mb": rss0,
        "rss_peak_mb": rss_mb(),
        "cpu_s": cpu_s() - cpu0,
    }


def run_cpu_only(n: int, workers: int, passthrough: bool) -> dict:
    """process_image alone (no network) on the same JPEGs: the CPU ceiling of this machine."""
    from concurrent.futures import ThreadPoolExecutor

    from m3w_builder.config import ImageConfig
    from m3w_builder.images import process_image

    images = make_jpegs()
    config = ImageConfig(jpeg_passthrough=passthrough)
    rss0, cpu0 = rss_mb(), cpu_s()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: process_image(images[i % len(images)], config), range(n)))
    elapsed = time.perf_counter() - start
    return {
        "images": n,
        "seconds": elapsed,
        "rate": n / elapsed,
        "rss_start_mb": rss0,
        "rss_peak_mb": rss_mb(),
        "cpu_s": cpu_s() - cpu0,
    }


def scenario_main(argv: list[str]) -> None:
    """Child process entry: run one scenario, print its JSON on the last line."""
    name, port, n, conc, per_host, workers, passthrough = argv[0], *map(int, argv[1:7])
    if name in ("m3w", "m3w-stream"):
        stream = name == "m3w-stream"
        result = run_m3w(port, n, conc, per_host, workers, bool(passthrough), stream)
    elif name == "baseline":
        result = run_baseline(port, n)
    else:
        result = run_cpu_only(n, workers, bool(passthrough))
    print(json.dumps(result))


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())


def child(
    name: str,
    port: int,
    n: int,
    conc: int = 0,
    per_host: int = 0,
    workers: int = 0,
    passthrough: bool = False,
) -> dict:
    args = [name, port, n, conc, per_host, workers, int(passthrough)]
    cmd = [sys.executable, __file__, "--scenario", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(seconds: float | None, n: int) -> str:
    return "–" if seconds is None else f"{1000 * seconds / n:.2f}"


def _ms(seconds: float | None, n: int) -> str:
    return "–" if seconds is None else f"{1000 * seconds / n:.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--scenario":
        return scenario_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--baseline-images", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--inflight", type=int, default=1000)
    args = parser.parse_args()

    load_before = os.getloadavg()
    sizes = [len(b) for b in make_jpegs()]
    ports: mp.Queue = mp.Queue()
    server = mp.Process(
        target=serve, args=(ports, args.latency_ms / 1000, args.images), daemon=True
    )
    server.start()
    port = ports.get(timeout=30)
    # A slower server for the memory run: 1,000 requests must really be open at the same time.
    mem_ports: mp.Queue = mp.Queue()
    mem_server = mp.Process(target=serve, args=(mem_ports, 1.0, args.inflight), daemon=True)
    mem_server.start()
    mem_port = mem_ports.get(timeout=30)
    try:
        rows = []
        cpu = os.cpu_count() or 1
        server_cpu0 = server_stats(port)["cpu_s"]
        base = child("baseline", port, args.baseline_images)
        base["server_cpu_s"] = server_stats(port)["cpu_s"] - server_cpu0
        rows.append(("sequential urllib + Pillow (baseline)", base, "1 request at a time"))
        for workers in (1, cpu):
            r = child("cpu", 0, 400, workers=workers)
            rows.append(("process_image only, no network", r, f"{workers} thread(s)"))
        r = child("cpu", 0, 400, workers=cpu, passthrough=True)
        rows.append(("process_image only, no network", r, f"{cpu} threads, jpeg_passthrough"))
        for conc, per_host, passthrough in ((256, 16, False), (256, 64, False), (256, 64, True)):
            server_cpu0 = server_stats(port)["cpu_s"]
            r = child("m3w", port, args.images, conc, per_host, 0, passthrough)
            r["server_cpu_s"] = server_stats(port)["cpu_s"] - server_cpu0
            settings = f"concurrency {conc}, per host {per_host}, {cpu} decode threads"
            rows.append(("m3w resolve_images", r, settings + (", jpeg_passthrough" * passthrough)))
        server_cpu0 = server_stats(port)["cpu_s"]
        r = child("m3w-stream", port, args.images, 256, 64, 0)
        r["server_cpu_s"] = server_stats(port)["cpu_s"] - server_cpu0
        rows.append(("m3w iter_resolved", r, "batches of 32 docs, 8 in flight, per host 64"))
        mem = child("m3w", mem_port, args.inflight, args.inflight, args.inflight, 0)
        label = f"m3w resolve_images, {args.inflight} in flight (1 s latency)"
        server_max = server_stats(mem_port)["max_inflight"]
        rows.append((label, mem, f"concurrency {args.inflight}; server saw {server_max} at once"))
    finally:
        server.terminate()
        mem_server.terminate()
        server.join()
        mem_server.join()

    load = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load[0]:.1f}")
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Pillow {Image.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"images: 640x480 JPEG, {min(sizes) // 1024}-{max(sizes) // 1024} KB (mean {sum(sizes) // len(sizes) // 1024} KB); "
        f"server latency {args.latency_ms:.0f} ms per response\n"
    )
    print(
        "| run | settings | images | seconds | images/s | vs baseline | client CPU ms/img "
        "| server CPU ms/img | RSS start → peak MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r, settings in rows:
        print(
            f"| {name} | {settings} | {r['images']} | {r['seconds']:.2f} | {r['rate']:.0f} | "
            f"{r['rate'] / base['rate']:.1f}× | {1000 * r['cpu_s'] / r['images']:.2f} | "
            f"{_ms(r.get('server_cpu_s'), r['images'])} | "
            f"{r.get('rss_start_mb', 0):.0f} → {r['rss_peak_mb']:.0f} |"
        )
    for name, r, _ in rows:
        if r.get("drops"):
            print(f"drops in '{name}': {r['drops']}")


if __name__ == "__main__":
    main()
