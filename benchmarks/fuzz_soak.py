"""Fuzz soak (issue 14 §8): mutational fuzzing of what reads untrusted bytes, for a time budget.

Targets, each fed mutants of real files from the dev corpus (/work/shared/corpus/dev):

- `warc`: the WARC/ARC reader (warc.iter_records over every record type, iter_pages, then
  warc.ArchiveIndex.build and .read of every indexed URL), seeded with the 19 corpus archives;
- `html`: the HTML → Document path (extract.page_to_document with the text filters), seeded with the
  readability and postlight pages (≤ 400 KB, for speed);
- `image`: the image decode guards (images.process_image), seeded with the 36 Pillow test images,
  bombs and broken ones included;
- `shard`: the shard readers: `m3w inspect` (verify_shard, compute_stats, Sample.view, show's
  render) and the trainer's loader (data.read_shard + data.decode), seeded with shards written here
  by ShardWriter from corpus images and page texts.

Mutations are drawn by hypothesis (`given` over a seed index and a list of operations: bit flips,
byte sets, inserts, deletes, duplicated and spliced runs, truncation, and "interesting numbers"
written over digit runs, so lengths, sizes and offsets lie), in batches round-robin over the
targets until `--minutes` are spent. Each target runs in its own child process (a fresh one after
a hang): a case that raises anything but the target's documented skip is a *crash*, one that runs
past the target's deadline a *hang* (the child is killed). A crash is shrunk by hypothesis and its
smallest input written to `--crash-dir`; every crash ever found becomes a regression test
(tests/test_fuzz_regressions.py). Peak RSS is each child's VmHWM.

    python benchmarks/fuzz_soak.py [--minutes 10] [--seed 0] [--crash-dir DIR]

Prints cases tried, crashes, hangs and peak RSS per target, with the machine and its load.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))

DEADLINE_S = {"warc": 60.0, "html": 35.0, "image": 20.0, "shard": 60.0}  # html: the build's kill
RSS_CAP_MB = 512  # issue 14's memory target for a worker
INTERESTING = [b"0", b"-1", b"1", b"65536", b"2147483648", b"9223372036854775808",
               b"100000000000000000", b"", b"ab", b"999999999999999999999999"]  # fmt: skip


# --------------------------------------------------------------------------------- the targets


def run_warc(data: bytes, scratch: Path) -> None:
    from m3w_builder.reasons import Counts, Skip
    from m3w_builder.sources import iter_pages
    from m3w_builder.warc import ArchiveIndex, iter_records

    path = scratch / ("case.warc.gz" if data[:2] == b"\x1f\x8b" else "case.warc")
    path.write_bytes(data)
    types = frozenset({"response", "resource", "revisit", "request", "metadata", "warcinfo"})
    for _ in iter_records(str(path), Counts(), types=types):
        pass
    for _ in iter_pages(str(path), Counts()):
        pass
    index = ArchiveIndex.build([str(path)])
    for url in list(index.entries)[:20]:
        try:
            index.read(url, max_bytes=1_000_000)
        except Skip:
            pass


def run_html(data: bytes, scratch: Path) -> None:
    from m3w_builder.config import BuildConfig
    from m3w_builder.document import RawPage
    from m3w_builder.extract import page_to_document
    from m3w_builder.reasons import Skip

    config = _CONFIG.setdefault("build", BuildConfig.for_profile("m3w"))
    page = RawPage(url="https://fuzz.m3w.test/page", body=data, source_file="fuzz")
    try:
        page_to_document(page, config)
    except Skip:
        pass


def run_image(data: bytes, scratch: Path) -> None:
    from m3w_builder.config import BuildConfig
    from m3w_builder.images import process_image
    from m3w_builder.reasons import Skip

    config = _CONFIG.setdefault("build", BuildConfig.for_profile("m3w"))
    try:
        process_image(data, config.images)
    except Skip:
        pass


def run_shard(data: bytes, scratch: Path) -> None:
    from pipelines.inspect.read import TarFormatError, iter_samples, resolve_target
    from pipelines.inspect.show import render
    from pipelines.inspect.stats import compute_stats
    from pipelines.inspect.verify import verify_shard
    from pipelines.train import data as loader

    path = scratch / "000000.tar"
    path.write_bytes(data)
    verify_shard(path)
    compute_stats(resolve_target(path))
    try:
        for sample in iter_samples(path):
            render(sample, 80)
    except TarFormatError:
        pass
    counts = loader.Counts()
    for i, raw in enumerate(loader.read_shard(str(path), counts)):
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        sample = loader.RawSample(str(raw.get("__key__")), members, str(path), 0, 0, i)
        loader.decode(sample, counts)


TARGETS = {"warc": run_warc, "html": run_html, "image": run_image, "shard": run_shard}
_CONFIG: dict[str, Any] = {}


# ------------------------------------------------------------------------------------ the seeds


def seeds(target: str, scratch: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the target's seeds; a name is a corpus path (or `shard-N`), so that a crash
    can be rebuilt from the corpus by tests/test_fuzz_regressions.py without copying corpus bytes."""
    if target == "warc":
        files = sorted(
            p for p in (CORPUS / "warc").rglob("*") if p.is_file() and p.suffix != ".jsonl"
        )
        return [(str(p.relative_to(CORPUS)), p.read_bytes()) for p in files]
    if target == "html":
        readability = sorted((CORPUS / "html" / "readability").glob("*/source.html"))
        postlight = sorted((CORPUS / "html" / "postlight").glob("*.html.gz"))
        pages = [(p, p.read_bytes()) for p in readability]
        pages += [(p, gzip.decompress(p.read_bytes())) for p in postlight]
        return [(str(p.relative_to(CORPUS)), d) for p, d in pages if len(d) <= 400_000]
    if target == "image":
        files = [
            p for p in sorted((CORPUS / "images" / "pillow").iterdir()) if p.suffix != ".jsonl"
        ]
        return [(str(p.relative_to(CORPUS)), p.read_bytes()) for p in files]
    return [(f"shard-{i}", data) for i, data in enumerate(_seed_shards(scratch))]


def _seed_shards(scratch: Path) -> list[bytes]:
    """Shards of documents made of corpus page text and corpus images (JPEG/PNG/WebP as stored)."""
    import hashlib as h

    from m3w_builder.document import Document, ImageNode, TextNode
    from m3w_builder.shards import ShardWriter

    exts = {".jpg": "jpg", ".png": "png", ".webp": "webp"}
    images = [(p.read_bytes(), exts[p.suffix]) for p in sorted((CORPUS / "images" / "pillow").iterdir())
              if p.suffix in exts and p.stat().st_size < 60_000]  # fmt: skip
    texts = [" ".join(p.read_text(errors="replace").split())[:400]
             for p in sorted((CORPUS / "html" / "readability").glob("*/expected.html"))[:40]]  # fmt: skip
    rng = random.Random(0)
    out = []
    for s in range(3):
        path = scratch / f"seed{s}.tar"
        with ShardWriter(path) as writer:
            for d in range(3):
                nodes: list[Any] = [TextNode(rng.choice(texts))]
                for _ in range(rng.randint(1, 2)):
                    data, ext = rng.choice(images)
                    node = ImageNode(src="https://fuzz.m3w.test/i", data=data, ext=ext, width=32,
                                     height=32, sha256=h.sha256(data).hexdigest(), attach="following")  # fmt: skip
                    nodes += [node, TextNode(rng.choice(texts))]
                writer.write(Document(url=f"https://fuzz.m3w.test/{s}/{d}", nodes=nodes, lang="en"))
        out.append(path.read_bytes())
    return out


# ------------------------------------------------------------------------------------ mutations


def mutate(data: bytes, ops: list[tuple[int, int, int, int]], other: bytes) -> bytes:
    """Apply operations (kind, a, b, c) — positions are taken modulo the current length."""
    buf = bytearray(data)
    for kind, a, b, c in ops:
        n = len(buf)
        if kind == 0 and n:  # flip a bit
            buf[a % n] ^= 1 << (c % 8)
        elif kind == 1 and n:  # set a byte
            buf[a % n] = c % 256
        elif kind == 2:  # insert random bytes
            rnd = random.Random(c).randbytes(1 + b % 64)
            at = a % (n + 1)
            buf[at:at] = rnd
        elif kind == 3 and n:  # delete a run
            at = a % n
            del buf[at : at + 1 + b % 512]
        elif kind == 4 and n:  # duplicate a run
            at = a % n
            buf[at:at] = buf[at : at + 1 + b % 4096]
        elif kind == 5 and other:  # splice a run of another seed
            at, src = a % (n + 1), c % len(other)
            buf[at:at] = other[src : src + 1 + b % 4096]
        elif kind == 6 and n:  # truncate
            del buf[a % n :]
        elif kind == 7 and n:  # overwrite a digit run with an interesting number
            digits = [i for i in range(0, n, max(1, n // 4096)) if 48 <= buf[i] <= 57]
            if digits:
                at = digits[a % len(digits)]
                start, end = at, at
                while start > 0 and 48 <= buf[start - 1] <= 57:
                    start -= 1
                while end < n and 48 <= buf[end] <= 57:
                    end += 1
                buf[start:end] = INTERESTING[c % len(INTERESTING)]
    return bytes(buf)


# -------------------------------------------------------------------------------- the children


def _child(conn: Any, target: str) -> None:
    logging.disable(logging.CRITICAL)  # every skip logs a line; thousands of cases would flood
    fn = TARGETS[target]
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        scratch = Path(tmp)
        conn.send("ready")
        while True:
            try:
                data = conn.recv()
            except EOFError:
                return
            if data is None:
                return
            try:
                fn(data, scratch)
                conn.send(("ok", ""))
            except BaseException:  # noqa: BLE001 - the finding itself
                conn.send(("crash", traceback.format_exc(limit=12)))


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Runner:
    """One target's child process, its deadline, and what it found."""

    target: str
    crash_dir: Path
    cases: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    peak_mb: float = 0.0
    _proc: Any = None
    _conn: Any = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, self.target), daemon=True)
        self._proc.start()
        child.close()
        assert self._conn.poll(300) and self._conn.recv() == "ready"

    def _stop(self) -> None:
        if self._proc is not None:
            self.peak_mb = max(self.peak_mb, _vm_hwm_mb(self._proc.pid))
            self._proc.kill()
            self._proc.join()
            self._conn.close()
            self._proc = self._conn = None

    def run(self, data: bytes) -> tuple[str, str]:
        if self._proc is None:
            self._start()
        self.cases += 1
        try:
            self._conn.send(data)
            if self._conn.poll(DEADLINE_S[self.target]):
                outcome = self._conn.recv()
                self.peak_mb = max(self.peak_mb, _vm_hwm_mb(self._proc.pid))
                return outcome
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self._proc.exitcode
            self._stop()
            return "crash", f"the child process died (exit code {code})"
        self._stop()
        return "hang", f"over {DEADLINE_S[self.target]:g} s"

    def save(self, kind: str, data: bytes, detail: str, recipe: dict[str, Any]) -> Path:
        """The input, the traceback, and the recipe (seed names + operations) that rebuilds it
        from the corpus: add the recipe to tests/test_fuzz_regressions.py's REGRESSIONS."""
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.target}-{kind}-{hashlib.sha256(data).hexdigest()[:12]}"
        (self.crash_dir / f"{name}.bin").write_bytes(data)
        (self.crash_dir / f"{name}.txt").write_text(detail)
        (self.crash_dir / f"{name}.json").write_text(json.dumps({"target": self.target, **recipe}))
        return self.crash_dir / f"{name}.bin"

    def close(self) -> None:
        self._stop()


class _Crash(Exception):
    pass


def soak_batch(
    runner: Runner, pool: list[tuple[str, bytes]], batch_seed: int, examples: int, stop_at: float
) -> None:
    """One hypothesis run of `examples` mutants; a crash is shrunk, then saved."""
    from hypothesis import HealthCheck, Phase, assume, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    op = st.tuples(
        st.integers(0, 7), st.integers(0, 1 << 30), st.integers(0, 1 << 16), st.integers(0, 1 << 16)
    )
    last: dict[str, Any] = {}

    @hseed(batch_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)  # fmt: skip
    @given(
        st.integers(0, len(pool) - 1),
        st.integers(0, len(pool) - 1),
        st.lists(op, min_size=1, max_size=8),
    )
    def case(index: int, splice: int, ops: list[tuple[int, int, int, int]]) -> None:
        assume(time.monotonic() < stop_at or "crash" in last)  # out of time: reject the rest
        data = mutate(pool[index][1], ops, pool[splice][1])
        recipe = {"seed": pool[index][0], "splice": pool[splice][0], "ops": [list(o) for o in ops]}
        kind, detail = runner.run(data)
        if kind == "hang":
            runner.hangs.append(str(runner.save("hang", data, detail, recipe)))
        elif kind == "crash":
            last["crash"] = (data, detail, recipe)
            raise _Crash(detail.strip().splitlines()[-1] if detail.strip() else "crash")

    try:
        case()
    except _Crash:
        data, detail, recipe = last["crash"]  # the last crash seen is the shrunk one
        path = runner.save("crash", data, detail, recipe)
        runner.crashes.append(f"{path}: {detail.strip().splitlines()[-1]}")
    except Exception as e:  # noqa: BLE001 - hypothesis' own errors (e.g. all rejected)
        if "Unsatisfiable" not in type(e).__name__:
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=40, help="mutants per hypothesis run")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument(
        "--crash-dir", default=str(Path(tempfile.gettempdir()) / "m3w-fuzz-crashes")
    )
    args = parser.parse_args(argv)
    if not CORPUS.is_dir():
        print(f"fuzz_soak: the dev corpus is not at {CORPUS} (set M3W_DEV_CORPUS)", file=sys.stderr)
        return 2
    targets = args.targets.split(",")
    started = datetime.now(timezone.utc)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        pools = {t: seeds(t, Path(tmp)) for t in targets}
    runners = {t: Runner(t, Path(args.crash_dir)) for t in targets}
    stop_at = time.monotonic() + args.minutes * 60
    batch = 0
    try:
        while time.monotonic() < stop_at:
            for t in targets:
                if time.monotonic() >= stop_at:
                    break
                soak_batch(runners[t], pools[t], args.seed * 100_003 + batch, args.batch, stop_at)
            batch += 1
    finally:
        for r in runners.values():
            r.close()
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    print(f"fuzz soak {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min, seed {args.seed}, "
          f"{platform.machine()} {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} at start")  # fmt: skip
    print()
    print("| target | seeds | cases | crashes | hangs | peak RSS MB | RSS cap MB | deadline s |")
    print("|---|---|---|---|---|---|---|---|")
    for t in targets:
        r = runners[t]
        print(f"| {t} | {len(pools[t])} | {r.cases} | {len(r.crashes)} | {len(r.hangs)} | "
              f"{r.peak_mb:.0f} | {RSS_CAP_MB} | {DEADLINE_S[t]:g} |")  # fmt: skip
    for r in runners.values():
        for line in r.crashes + r.hangs:
            print(f"  {r.target}: {line}")
    bad = sum(len(r.crashes) + len(r.hangs) for r in runners.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
