"""The build job's units of work, free of Ray: plan, extract, decide dedup, write, finalize.

The job is datatrove's executor shape (STYLE (b) pipelines/, datatrove executor/base.py): the inputs
are cut into numbered work units; a task processes one unit, writes its output atomically, then its
stats file, which is also its completion marker; a rerun skips units whose marker exists. Global dedup
needs counts over *all* inputs before any document can be kept, so the job has two data stages with a
decision step between them (DESIGN §2, issue 4):

1. **extract** (per unit): read pages → `page_to_document` → documents without image bytes into
   `_work/extract/NNNNN.docs.jsonl.gz`; per document its dedup keys (page URL, capture time,
   content hash, document key) and, with near-dedup on, its MinHash signature and LSH bands, into
   tables partitioned by key (pipelines/build/tables.py); the unit's archived images into a partitioned
   index (pipelines/build/archive_parts.py); small stats (`NNNNN.stats.json`, the completion marker).
2. **decide** (one task per partition, pipelines/build/decide.py): page-URL dedup keeps the newest
   capture, identical-document dedup the first in input order, near-duplicate clusters one
   survivor; then the surviving documents' image URLs and per-domain paragraphs are counted (one
   light task per unit, a parse-free pass over the extract files) and the frequent ones are listed
   per partition. Counting *after* dedup means ten captures of one page do not make its images
   "frequent". The archive index is merged per partition. Decisions are files under `_work/decide/`.
3. **write** (per group of units): apply the decisions, resolve/validate images, draw attachments,
   write part shards into `_work/write/NNNNN/`; the folder is renamed into place when complete, then
   the marker.
4. **finalize** (driver): rename parts, in (unit, part) order, to the contiguous `shards/000000.tar`,
   `000001.tar`, ... (renames only, idempotent), then write `manifest.jsonl` and `report.json`.

The driver holds only the plan, a few numbers per unit and the counters' running totals: its
memory does not grow with the pages (benchmarks/scale.py).

Everything is a pure function of (inputs, config, seed), and units are cut from the inputs alone (never
from the number of workers), so two builds, a resumed build and a 1- or 8-worker build give the same
bytes.

A page that kills its worker (a crash in C code) or hangs it is handled by a per-unit journal: before
parsing page `seq` the task appends `s seq`, after it `e`; a hard watchdog (`faulthandler`'s C thread,
which fires even while C code holds the GIL) writes its traceback into the journal and `_exit`s the
worker when a page runs past `page_kill_timeout_s`. Ray retries the task; the retry reads the journal
and skips a page that timed out once (`html.parse_timeout`) or crashed twice in this run
(`html.parse_crash`; twice, so a worker killed from outside at random does not lose a good page).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3w_builder.atomic import attempt_tmp
from m3w_builder.config import BuildConfig
from m3w_builder.document import Document, RawPage
from m3w_builder.reasons import Counts, Skip, reason, split_counts
from m3w_builder.shards import RollingShardWriter, ShardInfo
from pipelines import storage
from pipelines.build.stats import CountStats, ExtractStats, WriteStats

log = logging.getLogger(__name__)

PAGE_FETCH_BATCH = 64  # pages fetched concurrently by a URL-list task (bounded memory)
IMAGE_BATCH = 32  # documents per resolve_images call: enough concurrent fetches, bounded memory


# ---------------------------------------------------------------------------------------------------
# layout and small I/O helpers


class JobDir:
    """Paths of one job folder: `shards/`, `manifest.jsonl`, `report.json`, and `_work/` (resume state)."""

    def __init__(self, root: str | Path) -> None:
        self.root = storage.job_path(root)  # a Path, or a UPath for an fsspec URL (s3://...)
        self.remote = storage.is_remote(self.root)
        self.shards = self.root / "shards"
        self.manifest = self.root / "manifest.jsonl"
        self.report = self.root / "report.json"
        self.work = self.root / "_work"
        self.job = self.work / "job.json"
        self.decisions = self.work / "decide" / "decisions.json"
        self.finalized = self.work / "finalized.json"

    def extract_docs(self, unit: int) -> Path:
        return self.work / "extract" / f"{unit:05d}.docs.jsonl.gz"

    def extract_stats(self, unit: int) -> Path:
        return self.work / "extract" / f"{unit:05d}.stats.json"

    def marker(self, stage: str, index: int) -> Path:
        """The completion marker of one task of a decide or index stage."""
        return self.work / "markers" / stage / f"{index:05d}.json"

    def journal(self, unit: int) -> Path:
        return self.work / "extract" / f"{unit:05d}.journal"

    def write_dir(self, unit: int) -> Path:
        return self.work / "write" / f"{unit:05d}"

    def write_stats(self, unit: int) -> Path:
        return self.work / "write" / f"{unit:05d}.json"


STALE_ATTEMPT_S = 600.0  # an attempt's temporary file untouched this long belongs to a dead task
# After a finished build every attempt of its own is over; a leftover idle this long is a killed
# one (a concurrent build on the same --out would still be writing its files).
FINISHED_STALE_S = 60.0


def remove_stale_attempts(job: JobDir, older_than_s: float = STALE_ATTEMPT_S) -> int:
    """Remove the temporary files and part folders (`*.tmp`, attempt_tmp) that killed attempts
    left under `_work/` — a write attempt killed with its node leaves a partial tar of tens of MB.
    Only leftovers untouched for `older_than_s` go: a live attempt (of this run, or of another
    build on the same `--out`) writes its file continuously. Returns how many were removed."""
    if job.remote or not job.work.is_dir():
        return 0  # object storage: every write is one complete PUT, no temporary names
    now, removed = time.time(), 0
    for path in list(job.work.rglob("*.tmp")):
        try:
            paths = [path, *path.rglob("*")] if path.is_dir() else [path]
            newest = max(p.stat().st_mtime for p in paths)
        except OSError:
            continue
        if now - newest < older_than_s:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
        log.info("removed a stale attempt's leftover %s", path)
    return removed


atomic_write = storage.atomic_write


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, sort_keys=True, indent=1).encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run_logged(
    fn: Any, stage: str, log_level: int, log_dir: str, unit: WorkUnit, *shared: Any
) -> Any:
    """Run one task with the job's logging: records at `log_level` and above go to the console
    (a Ray worker's stderr, which Ray forwards to the driver) and to the task's own file,
    `_work/logs/{stage}-{unit:05d}.log`, so why page X was skipped can be looked up afterwards.

    Why here and not once per worker: Ray workers are separate processes that never ran the
    CLI's `logging.basicConfig`, and a worker runs many tasks; each task attaches its file
    handler for its own duration. An earlier attempt's file is appended to, not replaced."""
    root = logging.getLogger()
    root.setLevel(log_level)
    if not any(getattr(h, "_m3w_console", False) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        console._m3w_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    for handler in root.handlers:
        if getattr(handler, "_m3w_console", False):
            handler.setLevel(log_level)
    folder = storage.job_path(log_dir)
    if storage.is_remote(folder):  # a log file is appended to: it stays on the node
        folder = storage.node_local(folder, "logs")
    folder.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(folder / f"{stage}-{unit.index:05d}.log")
    file_handler.setLevel(log_level)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    try:
        return fn(unit, *shared)
    finally:
        root.removeHandler(file_handler)
        file_handler.close()


# ---------------------------------------------------------------------------------------------------
# plan


@dataclass(slots=True)
class WorkUnit:
    """One task's slice of the work: a few page files, a line range of one URL list, or (write stage)
    a run of consecutive extract units."""

    index: int
    kind: (
        str  # "pages" (WARC/ARC/HTML files) | "urls" (lines [start, stop) of a URL list) | "write"
    )
    paths: list[str]
    start: int = 0
    stop: int = 0
    members: list[int] = field(default_factory=list)  # "write": the extract units, in order

    def describe(self) -> str:
        if self.kind == "partition":
            return f"partition {self.index}"
        if self.kind == "write":
            return f"extract units {self.members[0]}-{self.members[-1]}"
        if self.kind == "urls":
            return f"{self.paths[0]} lines {self.start}-{self.stop}"
        if self.kind == "range":
            return f"{self.paths[0]} bytes {self.start}-"
        return (
            self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} (+{len(self.paths) - 1})"
        )


def plan_units(
    inputs: list[str],
    *,
    files_per_unit: int = 64,
    urls_per_unit: int = 256,
    archive_split_bytes: int = 0,
) -> list[WorkUnit]:
    """Cut the inputs into units: an archive per unit (a `.warc.gz` larger than
    `archive_split_bytes`, when set, in byte ranges starting at record boundaries: one unit per WARC
    would cap a crawl of few large files at as many tasks as files), HTML files in groups, URL lists
    in line ranges. Depends on the inputs only, so the plan is the same on any cluster.

    A file is cut by its name (`sources.kind_by_name`: no file is opened to plan): a file whose
    name says neither URL list nor archive joins an HTML group, and its reader decides what it is
    by its bytes (`sources.classify`), so a `.warc.gz.bad` is read as the archive it is."""
    from m3w_builder.sources import expand_inputs, kind_by_name
    from m3w_builder.warc import archive_ranges

    units: list[WorkUnit] = []
    html_group: list[str] = []

    def add(kind: str, paths: list[str], start: int = 0, stop: int = 0) -> None:
        units.append(WorkUnit(len(units), kind, paths, start, stop))

    for path in _expand_dirs(expand_inputs(inputs)):
        kind = kind_by_name(path)
        if kind == "url_list":
            n = sum(1 for _ in _read_url_lines(path))
            for start in range(0, n, urls_per_unit):
                add("urls", [path], start, min(n, start + urls_per_unit))
        elif kind == "archive":
            ranges = archive_ranges(path, archive_split_bytes)
            if len(ranges) == 1:
                add("pages", [path])
            else:
                for start, stop in ranges:
                    add("range", [path], start, stop)
        else:
            html_group.append(path)
            if len(html_group) == files_per_unit:
                add("pages", html_group)
                html_group = []
    if html_group:
        add("pages", html_group)
    return units


_SNIFF_IN_DIR = 32  # files of a folder sniffed when none has a known suffix


def check_inputs(inputs: list[str]) -> list[str]:
    """The expanded inputs, or an InputError naming the first one that can never yield a document:
    a path that matches nothing, an empty folder, a folder with no archive/HTML/URL-list file, a
    file that is none of those (a PNG, a PDF), a URL list with no http(s) URL in it (a text file
    holding one word would otherwise be fetched as a URL and dropped as page.ssrf_blocked).

    Files *inside* a folder that are none of these stay counted skips (input.unsupported): one
    stray file does not fail a crawl. Remote (fsspec) inputs are left to the readers.

    What a file is: `sources.classify`; a file named as a URL list is one (`sources.kind_by_name`,
    as the plan reads it), whatever its bytes."""
    from m3w_builder.errors import InputError
    from m3w_builder.sources import classify, expand_inputs, kind_by_name

    try:
        paths = expand_inputs(inputs)
    except ValueError as e:
        raise InputError(str(e)) from None

    for path in paths:
        if "://" in path:
            continue
        if os.path.isdir(path):
            files = list(_expand_dirs([path]))
            if not files:
                raise InputError(f"{path} is an empty folder: nothing to build from")
            if not any(kind_by_name(f) for f in files) and not any(
                classify(f) != "unsupported" for f in files[:_SNIFF_IN_DIR]
            ):
                raise InputError(
                    f"{path} holds no WARC/ARC, HTML or URL-list file ({len(files)} other files)"
                )
            continue
        if kind_by_name(path) == "url_list":
            if not any("://" in url for url in _read_url_lines(path)):
                raise InputError(
                    f"{path} is read as a URL list (by its name) but holds no http(s) URL"
                )
            continue
        if classify(path) == "unsupported":
            raise InputError(
                f"{path} is neither a WARC/ARC file, an HTML file nor a URL list "
                f"({_describe_bytes(path)}); give .warc[.gz], .arc[.gz], .html or .txt/.urls inputs"
            )
    return paths


def _describe_bytes(path: str) -> str:
    """A few words on what a file looks like, for the error message."""
    from m3w_builder.fetch import sniff_image_format

    with open(path, "rb") as f:
        head = f.read(256)
    image = sniff_image_format(head)
    if image is not None:
        return f"it looks like a{'n' if image[0] in 'aeiou' else ''} {image.upper()} image"
    for magic, name in ((b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip archive")):
        if head.startswith(magic):
            return f"it looks like {name}"
    if not head:
        return "it is empty"
    return "its first bytes are no HTML"


def _expand_dirs(paths: list[str]) -> Iterator[str]:
    """Local directories → their files in `sources.walk` order (the order `iter_pages` reads a
    folder in), so a folder of a million pages becomes many units instead of one. A remote
    (fsspec) folder stays one input; `iter_pages` walks it."""
    from m3w_builder.sources import walk

    for path in paths:
        if "://" in path or not os.path.isdir(path):
            yield path
            continue
        yield from walk(path)


def _read_url_lines(path: str) -> Iterator[str]:
    """Non-empty, non-comment lines of a URL list (local, gzip, or fsspec)."""
    from m3w_builder.sources import iter_url_list

    yield from iter_url_list(path)


# ---------------------------------------------------------------------------------------------------
# stage 1: extract


@dataclass(slots=True)
class ExtractOptions:
    run_id: str = ""  # distinguishes this driver run's attempts in the journal
    page_kill_timeout_s: float = 0.0  # 0 = no hard watchdog
    parts: int = 1  # partitions of the job-wide state (pipelines/build/tables.py)
    near: Any = None  # minhash.MinHashConfig when near-duplicate dedup is on


@dataclass(slots=True)
class JournalState:
    """What earlier attempts of a unit left in its journal: pages to skip, with their code."""

    skip: dict[int, str] = field(default_factory=dict)
    attempts: int = 0


def read_journal(text: str, run_id: str) -> JournalState:
    """Parse a unit journal. Lines: `a RUN` (attempt starts), `s SEQ` (page starts), `e` (page done);
    anything else is faulthandler's timeout traceback, which blames the page started last."""
    state = JournalState()
    crashes: Counter[int] = Counter()
    current_run = None
    open_page: int | None = None

    def close_attempt() -> None:
        if open_page is not None and current_run == run_id:
            crashes[open_page] += 1

    for line in text.splitlines():
        if line.startswith("a "):
            close_attempt()
            current_run, open_page = line[2:], None
            state.attempts += 1
        elif line.startswith("s "):
            open_page = int(line[2:])
        elif line == "e":
            open_page = None
        elif line.startswith("Timeout") and open_page is not None:
            state.skip[open_page] = "html.parse_timeout"
            open_page = None
    close_attempt()
    for seq, n in crashes.items():
        if n >= 2 and seq not in state.skip:
            state.skip[seq] = "html.parse_crash"
    return state


class Journal:
    """Unbuffered appends (a crash loses nothing already written) and the hard per-page watchdog."""

    def __init__(self, path: Path, run_id: str, timeout_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self.timeout_s = timeout_s
        self.file.write(f"a {run_id}\n".encode())

    @contextlib.contextmanager
    def page(self, seq: int) -> Iterator[None]:
        self.file.write(f"s {seq}\n".encode())
        if self.timeout_s > 0:
            faulthandler.dump_traceback_later(self.timeout_s, exit=True, file=self.file)
        try:
            yield
        finally:
            if self.timeout_s > 0:
                faulthandler.cancel_dump_traceback_later()
            self.file.write(b"e\n")

    def close(self) -> None:
        self.file.close()


def extract_unit(
    unit: WorkUnit, config: BuildConfig, job: JobDir, options: ExtractOptions
) -> ExtractStats:
    """Stage 1 for one unit; returns (and stores) its stats. Idempotent: a finished unit is read back."""
    from m3w_builder.extract import page_to_document
    from pipelines.build.decide import UnitKeys

    stats_path = job.extract_stats(unit.index)
    if stats_path.exists():
        return ExtractStats.read(stats_path)
    started = time.perf_counter()
    journal_path = storage.node_local(job.journal(unit.index), job.journal(unit.index).name)
    previous = read_journal(
        journal_path.read_text(errors="replace") if journal_path.exists() else "", options.run_id
    )
    journal = Journal(journal_path, options.run_id, options.page_kill_timeout_s)
    counts = Counts()
    # Any "pages" unit may hold archives (a directory of WARCs, an archive with an odd name).
    index = _new_archive_index() if unit.kind in ("pages", "range") else None
    keys = UnitKeys(options.near)  # what the decide stage needs of each document
    langs: Counter[str] = Counter()
    pages = 0
    docs_path = job.extract_docs(unit.index)
    try:
        with (
            storage.open_atomic(docs_path) as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out,
        ):
            for seq, page in enumerate(iter_unit_pages(unit, config, counts, index)):
                pages += 1
                counts["yield.html"] += 1
                if seq in previous.skip:
                    _count_skip(counts, previous.skip[seq], page)
                    continue
                doc = None
                with journal.page(seq):
                    try:
                        doc = page_to_document(page, config)
                    except Skip as skip:
                        counts[skip.code] += 1
                        counts.update(skip.drops)  # the page's images and paragraphs, too
                        if reason(skip.code).step == "text":
                            counts["yield.extracted"] += 1
                        log.debug("%s: %s", skip.code, skip.detail)  # detail names file@offset
                    except Exception as exc:  # noqa: BLE001 - a parser bug drops one page, counted
                        _count_skip(counts, "html.parser_error", page, exc)
                if doc is None:
                    continue
                counts["yield.extracted"] += 1
                counts["yield.text_ok"] += 1
                counts.update(doc.drops)
                record = doc.to_json()
                record["ord"] = keys.add(doc)
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")
                langs[doc.lang or "unknown"] += 1
            out.close()  # open_atomic publishes the file whole, or removes it on an error
    finally:
        journal.close()
    keys.write(job.work, unit.index, options.parts)
    has_index = index is not None and bool(
        len(index) or index.redirects or index.revisits or index.failures
    )
    if has_index:
        from pipelines.build import archive_parts

        rows = archive_parts.unit_rows(index, unit.index, unit.paths)
        archive_parts.write_unit_index(job.work, unit.index, rows, options.parts)
    stats = ExtractStats(
        unit=unit.index,
        pages=pages,
        docs=len(keys),
        archive_index=has_index,
        counts=Counts(counts.as_dict()),
        langs=Counter(dict(sorted(langs.items()))),
        seconds=round(time.perf_counter() - started, 3),
    )
    atomic_write_json(stats_path, stats.to_json())  # the completion marker: written last
    journal_path.unlink(missing_ok=True)
    return stats


def _new_archive_index() -> Any:
    """An empty index of the unit's archived images (warc.ArchiveIndex: URL → record offset),
    filled during the page pass itself, so each archive is read once and each record counted
    once; the extract tasks index in parallel, and partition tasks merge the indexes
    (pipelines/build/archive_parts.py)."""
    from m3w_builder.warc import ArchiveIndex

    return ArchiveIndex()


def _count_skip(counts: Counts, code: str, page: RawPage, exc: BaseException | None = None) -> None:
    counts[code] += 1
    log.warning(
        "%s: skipped page %s (%s offset %d)%s",
        code,
        page.url,
        page.source_file,
        page.source_offset,
        f": {type(exc).__name__}: {exc}" if exc else "",
    )


def iter_unit_pages(
    unit: WorkUnit, config: BuildConfig, counts: Counts, index: Any = None
) -> Iterator[RawPage]:
    """The unit's pages in a fixed order. An input that fails mid-read is counted and logged with its
    name; the pages read before the failure are kept (the same ones on every attempt). `index`
    (an ArchiveIndex) is given every archive record on the way."""
    if unit.kind == "urls":
        yield from _fetch_url_pages(unit, config, counts)
        return
    from m3w_builder.sources import iter_pages

    on_record = None if index is None else (lambda record: index.add(record, counts))
    byte_range = (unit.start, unit.stop) if unit.kind == "range" else None
    for path in unit.paths:
        try:
            yield from iter_pages(path, counts, config.sources, on_record, byte_range)
        except Exception as exc:  # noqa: BLE001 - one bad input never stops the job
            counts["input.error"] += 1
            log.error("input.error: %s: %s: %s", path, type(exc).__name__, exc)


def _fetch_url_pages(unit: WorkUnit, config: BuildConfig, counts: Counts) -> Iterator[RawPage]:
    """Fetch lines [start, stop) of a URL list with the job's safe fetcher (SSRF guard, per-host
    connection cap, size and time caps); pages come out in list order whatever order they arrive in.

    A fetched page records no capture date: the record stays a function of the page bytes, so two
    builds of the same URL list give byte-identical shards."""
    from m3w_builder.fetch import run_async

    path = unit.paths[0]
    urls = list(_read_url_lines(path))[unit.start : unit.stop]
    counts["yield.read"] += len(urls)
    for batch_start in range(0, len(urls), PAGE_FETCH_BATCH):
        batch = urls[batch_start : batch_start + PAGE_FETCH_BATCH]
        offset = unit.start + batch_start
        yield from (
            p for p in run_async(_fetch_pages(batch, offset, path, config, counts)) if p is not None
        )


async def _fetch_pages(
    urls: list[str], first_line: int, path: str, config: BuildConfig, counts: Counts
) -> list[RawPage | None]:
    import asyncio

    from m3w_builder.fetch import Fetcher

    async with Fetcher(config.fetch) as fetcher:

        async def one(line: int, url: str) -> RawPage | None:
            try:
                result = await fetcher.fetch(
                    url, sniff=False, stage="page", max_bytes=config.sources.max_html_bytes
                )
            except Skip as skip:
                counts[skip.code] += 1
                log.info("%s: %s (%s line %d) %s", skip.code, url, path, line, skip.detail)
                return None
            return RawPage(
                url=result.final_url,
                body=result.body,
                headers=result.headers,
                source_file=path,
                source_offset=line,
            )

        return await asyncio.gather(*(one(first_line + i, u) for i, u in enumerate(urls)))


# ---------------------------------------------------------------------------------------------------
# stage 2: decide


def iter_extracted(job: JobDir, unit: int) -> Iterator[dict[str, Any]]:
    with job.extract_docs(unit).open("rb") as raw, gzip.GzipFile(fileobj=raw) as f:
        for line in f:
            yield json.loads(line)


def count_unit(unit: WorkUnit, job: JobDir, decisions: Any) -> CountStats:
    """Image-URL and per-domain paragraph counts of one unit's surviving documents (each counted
    once per document), written partitioned by key for `build_decide.frequent_partition`."""
    from pipelines.build import tables
    from pipelines.build.decide import DropIndex, count_path, count_unit_keys, unit_records

    marker = job.marker("count", unit.index)
    if marker.exists():
        return CountStats.read(marker)
    drops = DropIndex(job.work, decisions)
    docs = [
        Document.from_json(record)
        for record, code in unit_records(iter_extracted(job, unit.index), unit.index, drops)
        if code is None
    ]
    rows = count_unit_keys(docs)
    tables.write_partitioned(count_path(job.work, unit.index), rows, rows["key"], decisions.parts)
    result = CountStats(unit=unit.index, docs=len(docs), keys=len(rows))
    atomic_write_json(marker, result.to_json())
    return result


# ---------------------------------------------------------------------------------------------------
# stage 3: write


def plan_write_groups(survivors: Any, target_docs: int) -> list[WorkUnit]:
    """Consecutive extract units grouped until they hold `target_docs` surviving documents
    (`survivors[u]`: unit u's documents left by the decide stage).

    Why regroup: an extract unit is sized for reading (one WARC, 64 files, 256 URLs), which for small
    files leaves far fewer documents than a shard holds; writing per extract unit would end every
    unit with a short shard. Grouping to one shard's worth keeps shards near their target (each group
    still ends with one part shard, short by the documents the images stage drops) and still gives
    one write task per shard for parallelism. A pure function of the stored stats and decisions, so a
    resumed job regroups identically."""
    groups: list[WorkUnit] = []
    members: list[int] = []
    docs = 0
    for unit, n in enumerate(survivors):
        members.append(unit)
        docs += int(n)
        if docs >= target_docs:
            groups.append(WorkUnit(len(groups), "write", [], members=members))
            members, docs = [], 0
    if members:
        groups.append(WorkUnit(len(groups), "write", [], members=members))
    return groups


@dataclass(slots=True)
class JobDedup:
    """The job-wide frequency decisions a write task applies: image URLs on too many documents
    (logos, buttons) and paragraphs repeated across a domain (boilerplate). Few keys, as sets."""

    frequent_images: set[int] = field(default_factory=set)
    repeated_paragraphs: set[int] = field(default_factory=set)

    @classmethod
    def load(cls, job: JobDir, parts: int) -> JobDedup:
        from pipelines.build.decide import frequent_keys

        return cls(
            set(frequent_keys(job.work, parts, "images").tolist()),
            set(frequent_keys(job.work, parts, "paragraphs").tolist()),
        )


def _group_records(
    job: JobDir, group: WorkUnit, decisions: Any
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """The group's extracted records in input order, each with its dedup drop code (or None)."""
    from pipelines.build.decide import DropIndex, unit_records

    drops = DropIndex(job.work, decisions)
    for unit in group.members:
        yield from unit_records(iter_extracted(job, unit), unit, drops)


def write_unit(
    unit: WorkUnit,
    config: BuildConfig,
    job: JobDir,
    decisions: Any,
    unit_paths: list[list[str]] | None = None,
) -> WriteStats:
    """Apply the job-wide decisions, resolve images, draw attachments and write this write group's
    part shards. Idempotent; a failed attempt leaves only its own `.tmp` folder, never a part
    folder, and the stats file (the completion marker) is written after the rename."""
    stats_path = job.write_stats(unit.index)
    if stats_path.exists():
        return WriteStats.read(stats_path)
    started = time.perf_counter()
    final_dir = job.write_dir(unit.index)
    # parts are written on local disk (a tar is not appended to object storage), then published
    tmp_dir = (
        attempt_tmp(final_dir)
        if not job.remote
        else storage.node_local(
            final_dir, f"{final_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        )
    )
    counts = Counts()
    langs: Counter[str] = Counter()
    images = 0
    archive = None
    if decisions.archive:
        from pipelines.build.archive_parts import PartitionedArchiveIndex

        archive = PartitionedArchiveIndex(job.work, decisions.parts, unit_paths or [])
    job_dedup = JobDedup.load(job, decisions.parts)
    try:
        with RollingShardWriter(
            tmp_dir,
            docs_per_shard=config.shards.docs_per_shard,
            max_shard_bytes=config.shards.max_shard_bytes,
        ) as writer:
            for doc in iter_written_docs(
                _group_records(job, unit, decisions), job_dedup, config, counts, archive
            ):
                writer.write(doc)
                counts["yield.docs_kept"] += 1
                images += len(doc.image_nodes)
                langs[doc.lang or "unknown"] += 1
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # this attempt's parts; a retry writes its own
        raise
    infos = writer.infos
    if not infos:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    if job.remote:  # each part uploaded whole; the marker below is what makes them count
        for info in infos:
            storage.upload(tmp_dir / info.name, final_dir / info.name)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    else:
        # A part folder already there is an earlier or concurrent attempt's identical output, or
        # one whose marker was lost: replace it (a directory cannot be renamed onto a non-empty one).
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp_dir, final_dir)
    stats = WriteStats(
        unit=unit.index,
        docs=sum(i.docs for i in infos),
        images=images,
        bytes=sum(i.bytes for i in infos),
        shards=list(infos),
        counts=Counts(counts.as_dict()),
        langs=Counter(dict(sorted(langs.items()))),
        seconds=round(time.perf_counter() - started, 3),
    )
    atomic_write_json(stats_path, stats.to_json())
    return stats


def iter_written_docs(
    records: Iterable[tuple[dict[str, Any], str | None]],
    decisions: JobDedup,
    config: BuildConfig,
    counts: Counts,
    archive: Any = None,
) -> Iterator[Document]:
    """The write stage as a chain of generators: dedup decisions → images (in batches) → attachment."""
    from m3w_builder.attach import sample
    from m3w_builder.images import resolve_images

    batch: list[Document] = []

    def flush() -> Iterator[Document]:
        for doc in resolve_images(batch, config, counts, archive):
            yield sample(
                doc, seed=config.seed, mode=config.attach.mode, p_next=config.attach.p_next
            )
        batch.clear()

    for record, code in records:
        if code is not None:
            counts[code] += 1
            continue
        doc = apply_job_dedup(Document.from_json(record), decisions, counts)
        if doc is None:
            continue
        counts["yield.deduped"] += 1
        if not doc.image_nodes:
            counts["doc.no_images"] += 1
            continue
        counts["yield.with_images"] += 1
        counts["yield.image_candidates"] += len(doc.image_nodes)
        batch.append(doc)
        if len(batch) >= IMAGE_BATCH:
            yield from flush()
    if batch:
        yield from flush()


def apply_job_dedup(doc: Document, decisions: JobDedup, counts: Counts) -> Document | None:
    """Remove boilerplate paragraphs and frequent image URLs; a document left without text is dropped
    (`doc.no_text`); one left without images is dropped later by the images stage (`doc.no_images`)."""
    from m3w_builder.dedup import domain_of, image_url_key, paragraph_key
    from m3w_builder.document import ImageNode, TextNode

    domain = domain_of(doc.url)
    nodes = []
    for node in doc.nodes:
        if (
            isinstance(node, TextNode)
            and paragraph_key(domain, node.text) in decisions.repeated_paragraphs
        ):
            counts["dedup.paragraph_repeat"] += 1
            continue
        if isinstance(node, ImageNode) and image_url_key(node.src) in decisions.frequent_images:
            counts["dedup.image_url_frequent"] += 1
            continue
        nodes.append(node)
    doc.nodes = nodes
    if not doc.text_nodes:
        counts["doc.no_text"] += 1
        return None
    return doc


# ---------------------------------------------------------------------------------------------------
# stage 4: finalize


def finalize(job: JobDir, write_stats: list[WriteStats]) -> list[ShardInfo]:
    """Rename part shards to contiguous global names in (unit, part) order and write manifest.jsonl.

    Idempotent: a part already moved (destination present, source gone) is skipped, so a driver killed
    half-way through renaming finishes the job on the next run."""
    storage.mkdirs(job.shards)
    infos: list[ShardInfo] = []
    for stats in sorted(write_stats, key=lambda s: s.unit):
        for part in stats.shards:
            src = job.write_dir(stats.unit) / part.name
            dst = job.shards / f"{len(infos):06d}.tar"
            if src.exists():
                storage.move(src, dst)  # a rename; on object storage a server-side copy
            elif not dst.exists():
                raise FileNotFoundError(f"part shard {src} is missing and {dst} was never written")
            infos.append(ShardInfo(**{**part.to_json(), "name": f"shards/{dst.name}"}))
    manifest = "".join(json.dumps(i.to_json(), sort_keys=True) + "\n" for i in infos)
    atomic_write(job.manifest, manifest.encode())
    return infos


def clean_work(job: JobDir) -> None:
    """After a finished build, remove what only a running build needs: extracted documents, key
    tables, signatures, index partitions, decide-stage files, emptied part folders. Left are the
    small markers and stats that let a rerun say "already done" without recomputing anything,
    and no attempt's leftover: a task killed and retried during this run left its temporary file."""
    work = job.work
    remove_stale_attempts(job, older_than_s=FINISHED_STALE_S)
    for sub in ("extract/keys", "extract/minhash", "extract/index", "index", "decide/count"):
        storage.remove_tree(work / sub)
    for pattern in ("extract/*.docs.jsonl.gz", "decide/*.npy"):
        for path in list(work.glob(pattern)):
            storage.remove(path)
    if job.remote:
        return
    for part in (work / "write").glob("[0-9]*"):
        if part.is_dir() and not any(part.iterdir()):
            part.rmdir()


def build_report(
    counts: Counts,
    pages: int,
    documents_extracted: int,
    write_stats: list[WriteStats],
    infos: list[ShardInfo],
    *,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """report.json: every reason code's count (also split into inputs / progress / drops), the
    yield funnel, what was kept, speed and languages; `warning` names the largest loss of a build
    that kept no document."""
    from pipelines.build.funnel import compute_funnel, largest_loss

    written = sum(write_stats, WriteStats())
    counts = Counts({k: v for k, v in counts.items() if v})
    counts.update(written.counts)
    langs = written.langs
    docs = sum(i.docs for i in infos)
    funnel = compute_funnel(counts.as_dict())
    return {
        "pages": pages,
        "documents_extracted": documents_extracted,
        "documents": docs,
        "images": sum(i.images for i in infos),
        "bytes": sum(i.bytes for i in infos),
        "shards": len(infos),
        "seconds": round(seconds, 3),
        "pages_per_s": round(pages / seconds, 2) if seconds > 0 else None,
        "docs_per_s": round(docs / seconds, 2) if seconds > 0 else None,
        "languages": dict(langs.most_common()),
        "counts": counts.as_dict(),
        **split_counts(counts.as_dict()),  # the same counts as inputs / progress / drops
        "funnel": funnel,
        "warning": largest_loss(funnel) if docs == 0 else None,
        **(extra or {}),
    }


__all__ = [
    "JobDedup",
    "ExtractOptions",
    "JobDir",
    "WorkUnit",
    "build_report",
    "count_unit",
    "extract_unit",
    "finalize",
    "plan_units",
    "read_journal",
    "write_unit",
]
