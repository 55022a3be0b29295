"""`m3w build INPUT... --out DIR`: the Ray build job (inputs → WebDataset shards), resumable.

Why Ray core tasks over files, not Ray Data: the job needs a global barrier (dedup counts over all
inputs before any document is kept, DESIGN §2), per-unit completion markers for resume (datatrove's
executor, STYLE (a)6), and byte-identical output from any number of workers. Tasks that each read one
unit and write one file give all three directly: a task's output exists only once complete (tmp +
rename), a rerun skips units with a marker, retries are idempotent, and nothing larger than a stats
dict travels through the object store. Memory stays bounded when inputs outrun the writers because
there is no in-memory stream between the stages to back up: each stage reads the previous stage's
files, and the driver keeps at most `max_in_flight` tasks submitted (2 per CPU) at a time.
Ray Data would stream blocks with backpressure, but its blocks carry no unit identity to resume from,
and its retry of a failed block re-runs work whose writes have already landed.

The stages themselves (extract, decide, write, finalize) are plain functions in build_stages.py;
this module only schedules them, shows progress and prints the summary. It is the only module that
imports Ray, lazily (STYLE (b) pipelines/).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3w_builder.config import PROFILES, BuildConfig
from m3w_builder.errors import OutputError, RunFailed
from m3w_builder.reasons import Counts
from m3w_builder.settings import Flag, add_flags, field_types, flag_values, on_off, set_path
from pipelines.build import stages
from pipelines.build.stats import (
    BandStats,
    ClusterStats,
    CountStats,
    DedupStats,
    ExtractStats,
    FrequentStats,
    WriteStats,
)
from pipelines.build.tables import partitions_for
from pipelines.cli_help import DefaultsFormatter

log = logging.getLogger(__name__)

JOB_VERSION = 1
TASK_RETRIES = (
    4  # Ray re-runs a task whose worker died; the journal needs 3 attempts to skip a crash
)


@dataclass(slots=True)
class JobOptions:
    """How the job runs (not what it builds: that is BuildConfig, part of the job's identity)."""

    out: str
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or a local Ray
    num_cpus: int | None = None  # local Ray only
    max_docs: int | None = None
    page_kill_timeout_s: float | None = None  # None: 3 × sources.parse_timeout_s + 5
    max_in_flight: int | None = None  # None: 2 × the cluster's CPUs
    files_per_unit: int = 64
    urls_per_unit: int = 256
    partitions: int | None = None  # of the job-wide state; None: from the input size
    keep_work: bool = False  # keep the bulky intermediate files of `_work/` after the build
    # a .warc.gz larger than this is read by several tasks, in byte ranges (0: one task per file)
    archive_split_bytes: int = 1 << 30
    progress: bool = True
    loopback_only: bool = False  # local Ray only: its HTTP probes go to a closed loopback port
    log_level: int | None = None  # the workers' (None: this process's root logger level)


# ---------------------------------------------------------------------------------------------------
# the job


def run_build(
    inputs: list[str], config: BuildConfig, options: JobOptions, *, use_ray: bool = True
) -> dict[str, Any]:
    """Build (or finish building) the job in `options.out`; returns the report (also report.json).

    `use_ray=False` runs the very same stages one after another in this process (the benchmark's
    baseline, and a debugging aid): the output is byte-identical to a Ray build.

    The driver keeps unit bookkeeping only — the plan, a few numbers per unit and the running
    totals of the counters: every per-page state (dedup keys, signatures, the archive index,
    frequency counts, decisions) lives in partitioned files under `_work/` that Ray tasks write
    and read (pipelines/build/decide.py, pipelines/build/archive_parts.py)."""
    started = time.perf_counter()
    _check_out(options.out)
    stages.check_inputs(inputs)
    job = stages.JobDir(options.out)
    units = stages.plan_units(
        inputs,
        files_per_unit=options.files_per_unit,
        urls_per_unit=options.urls_per_unit,
        archive_split_bytes=options.archive_split_bytes,
    )
    parts = options.partitions or partitions_for(_input_bytes(units))
    _check_or_record_job(job, inputs, config, options, units, parts)
    stages.remove_stale_attempts(job)
    extract_options = stages.ExtractOptions(
        run_id=uuid.uuid4().hex,
        page_kill_timeout_s=(
            options.page_kill_timeout_s
            if options.page_kill_timeout_s is not None
            else 3 * config.sources.parse_timeout_s + 5
        ),
        parts=parts,
        near=near_config(config),
    )
    if (
        not use_ray
    ):  # a watchdog _exit() would take the whole driver down: no retry to skip the page
        extract_options.page_kill_timeout_s = 0.0
    progress = _Progress(len(units), enabled=options.progress)  # phase 1 of 2: extract
    summary = _ExtractSummary(len(units))
    limit = _PrefixLimit(options.max_docs, job, summary) if options.max_docs else None
    phases: dict[str, float] = {}
    with _RayExecutor(options) if use_ray else _LocalExecutor() as executor:
        # stage 1: extract (and index archives, and record every document's dedup keys)
        clock = time.perf_counter()

        def extracted(stats: ExtractStats, resumed: bool) -> None:
            summary.add(stats)
            progress.extracted(stats, resumed)

        executor.map(
            stages.extract_unit,
            units,
            (config, job, extract_options),
            marker=lambda u: job.extract_stats(u.index),
            read=ExtractStats.read,
            on_done=extracted,
            stop=limit.reached if limit else None,
            keep=False,
        )
        executor.raise_failures("extract")
        if limit is not None:  # --max-docs: only the shortest prefix of units that holds N docs
            limit.reached()  # tasks that finished late
            units = units[: limit.prefix]
            summary.truncate(limit.prefix, job)
        phases["extract"] = time.perf_counter() - clock
        # stage 2: decide (the job-wide dedup, one task per partition) and merge the image index
        clock = time.perf_counter()
        decisions = _decide(executor, job, units, summary, config, options, parts)
        phases["decide"] = time.perf_counter() - clock
        # stage 3: write part shards, one task per shard's worth of documents
        clock = time.perf_counter()
        groups = stages.plan_write_groups(decisions.survivors, config.shards.docs_per_shard)
        progress.phase("write", len(groups))  # a new bar: each phase's total is known at its start
        write_stats = executor.map(
            stages.write_unit,
            groups,
            (config, job, decisions, [u.paths for u in units]),
            marker=lambda u: job.write_stats(u.index),
            read=WriteStats.read,
            on_done=progress.written,
        )
        executor.raise_failures("write")
        phases["write"] = time.perf_counter() - clock
    progress.close()
    # stage 4: contiguous shard names, manifest, report
    clock = time.perf_counter()
    infos = stages.finalize(job, write_stats)
    phases["finalize"] = time.perf_counter() - clock
    counts = summary.counts.copy()
    run_seconds = time.perf_counter() - started
    earlier = _earlier_runs_seconds(job)
    tasks = len(units) + len(groups)
    run_pages = summary.pages - progress.resumed_pages
    report = stages.build_report(
        counts,
        summary.pages,
        summary.docs_extracted,
        write_stats,
        infos,
        seconds=earlier + run_seconds,  # the job's: every run that finished, this one included
        extra={
            "units": len(units),
            "write_groups": len(groups),
            "partitions": parts,
            "tasks_resumed": progress.resumed,
            "last_run": {
                "seconds": round(run_seconds, 3),
                "tasks_done": tasks - progress.resumed,
                "tasks_already_done": progress.resumed,
                "pages": run_pages,
                "pages_per_s": round(run_pages / run_seconds, 2) if run_seconds > 0 else None,
            },
            "seed": config.seed,
            "profile": config.profile,
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "near_duplicates": _near_report(decisions),
        },
    )
    _record_run(job, run_seconds)
    stages.atomic_write_json(job.report, report)
    if not options.keep_work:
        stages.clean_work(job)
    return report


def _near_report(decisions: Any) -> dict[str, Any] | None:
    """report.json's `near_duplicates`: the clustering's stats ({} before any), None when off."""
    if not decisions.near:
        return None
    return decisions.near_stats.to_json() if decisions.near_stats is not None else {}


def near_config(config: BuildConfig) -> Any:
    """The MinHash settings of near-duplicate dedup, or None when it is off."""
    if not config.dedup.near_dedup:
        return None
    from m3w_builder.minhash import MinHashConfig

    d = config.dedup
    return MinHashConfig(
        shingle_words=d.near_shingle_words,
        num_perm=d.near_num_perm,
        bands=d.near_bands,
        rows=d.near_rows,
        threshold=d.near_threshold,
    )


def _input_bytes(units: list[stages.WorkUnit]) -> int:
    """Bytes of the job's input files (what P is chosen from); unreadable sizes count 0."""
    total = 0
    for unit in units:
        for path in unit.paths:
            try:
                total += os.path.getsize(path) if "://" not in path else _remote_size(path)
            except OSError:
                continue
    return total


def _remote_size(path: str) -> int:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return int(fs.size(p) or 0)


class _ExtractSummary:
    """What the driver keeps of the extract stage: a few numbers per unit and the totals
    (`total`: the units' counters, their ExtractStats folded with `+`)."""

    def __init__(self, n_units: int) -> None:
        self.docs = np.zeros(n_units, dtype=np.int64)
        self.indexed = np.zeros(n_units, dtype=bool)
        self.done = np.zeros(n_units, dtype=bool)
        self.pages_per_unit = np.zeros(n_units, dtype=np.int64)
        self.total = ExtractStats()

    def add(self, stats: ExtractStats) -> None:
        u = stats.unit
        self.docs[u] = stats.docs
        self.indexed[u] = stats.archive_index
        self.pages_per_unit[u] = stats.pages
        self.done[u] = True
        # the counters only: pages and documents are kept per unit above (--max-docs cuts them)
        self.total += ExtractStats(counts=stats.counts)

    @property
    def counts(self) -> Counts:
        return self.total.counts

    def truncate(self, prefix: int, job: stages.JobDir) -> None:
        """--max-docs: units past the prefix were read by tasks that finished anyway; their
        counts are taken out again (from their stats files: the driver keeps none per unit)."""
        counts = Counts(self.counts)
        for u in (np.flatnonzero(self.done[prefix:]) + prefix).tolist():
            counts.subtract(ExtractStats.read(job.extract_stats(u)).counts)
        self.total.counts = Counts({k: v for k, v in counts.items() if v})
        n = prefix
        self.docs, self.indexed, self.done = self.docs[:n], self.indexed[:n], self.done[:n]
        self.pages_per_unit = self.pages_per_unit[:n]

    @property
    def pages(self) -> int:
        return int(self.pages_per_unit.sum())

    @property
    def docs_extracted(self) -> int:
        return int(self.docs.sum())

    def survivors(self, job: stages.JobDir, decisions: Any) -> np.ndarray:
        """Documents each unit keeps after the decide stage (its drops counted in memory maps)."""
        from pipelines.build.decide import DropIndex

        left = self.docs - DropIndex(job.work, decisions).drops_per_unit(len(self.docs))
        cut = decisions.cut
        if cut is not None:
            unit, k = cut
            left[unit] = min(left[unit], k)
            left[unit + 1 :] = 0
        return left


def _earlier_runs_seconds(job: stages.JobDir) -> float:
    """Wall seconds of the earlier runs that finished this job's folder (`_work/runs.json`)."""
    path = job.work / "runs.json"
    return sum(stages.read_json(path)) if path.exists() else 0.0


def _record_run(job: stages.JobDir, seconds: float) -> None:
    path = job.work / "runs.json"
    runs = stages.read_json(path) if path.exists() else []
    stages.atomic_write_json(path, [*runs, round(seconds, 3)])


def _check_out(out: str) -> None:
    """`--out` must be a folder (new, or a job of this build to resume): never a file."""
    from m3w_builder.errors import OutputError
    from pipelines.storage import is_url

    if is_url(out):
        return  # object storage: no folders to be confused with files
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for the job")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"--out {out}: {parent} is a file, not a folder")


class _PrefixLimit:
    """`--max-docs N` without reading every input: the shortest prefix of units (in input order)
    whose documents, after page-URL and content dedup, number at least N. It depends only on the
    inputs, not on which tasks happened to finish first, so a resumed or re-run job picks the
    same prefix; units past it are cancelled or ignored. The prefix's dedup keys are read from
    the units' key files (at most about N documents' worth)."""

    def __init__(self, max_docs: int, job: stages.JobDir, summary: _ExtractSummary) -> None:
        self.max_docs = max_docs
        self.job = job
        self.summary = summary
        self.prefix = len(summary.docs)
        self.found = False
        self._checked = 0  # prefixes up to this length are known to hold fewer than N documents

    def reached(self, results: Any = None) -> bool:
        from m3w_builder import dedup
        from pipelines.build import decide as build_decide
        from pipelines.build import tables

        if self.found:
            return True
        done = self.summary.done
        while self._checked < len(done) and done[self._checked]:
            self._checked += 1
            if int(self.summary.docs[: self._checked].sum()) < self.max_docs:
                continue  # cheap bound: dedup only removes documents
            pieces = []
            for u in range(self._checked):
                path = build_decide.keys_path(self.job.work, u)
                rows = tables.load_npy(path, mmap=False)
                tagged = np.zeros(len(rows), dtype=[("src", np.int64), *dedup.DOC_KEYS.descr])
                tagged["src"] = u
                for name in dedup.DOC_KEYS.names:
                    tagged[name] = rows[name]
                pieces.append(tagged)
            rows = np.concatenate(pieces)
            rows = rows[~dedup.page_url_losers(rows)]
            kept = int((~dedup.content_losers(rows)).sum())
            if kept >= self.max_docs:
                self.prefix, self.found = self._checked, True
                return True
        return False


def _decide(
    executor: _LocalExecutor,
    job: stages.JobDir,
    units: list[stages.WorkUnit],
    summary: _ExtractSummary,
    config: BuildConfig,
    options: JobOptions,
    parts: int,
) -> Any:
    """Job-wide dedup decisions, computed once and stored (a rerun reads them back).

    Tasks over partitioned files rather than a streaming counter actor: an actor would see
    documents in completion order, so "keep the newest capture" and "the first copy" would depend
    on timing, and its state would be lost with it on a crash; one process holding every key
    would grow with the crawl. Each step below is a pure function of the inputs."""
    from pipelines.build import decide as dec

    if job.decisions.exists():
        return dec.Decisions.from_json(stages.read_json(job.decisions))
    partitions = [stages.WorkUnit(p, "partition", []) for p in range(parts)]
    with_docs = [int(u) for u in np.flatnonzero(summary.docs)]
    every = list(range(len(units)))

    def run(
        stage: str, kind: type, fn: Callable[..., Any], tasks: list[stages.WorkUnit], *args: Any
    ) -> list:
        results = executor.map(
            fn, tasks, (job, *args), marker=lambda u: job.marker(stage, u.index), read=kind.read
        )
        executor.raise_failures(stage)
        return results

    indexed = [int(u) for u in np.flatnonzero(summary.indexed)]
    if indexed:
        run("index", _JsonMarker, _index_task, partitions, indexed)
    run("page", DedupStats, _page_task, partitions, every, parts)
    run("content", DedupStats, _content_task, partitions, parts)
    near = near_config(config)
    near_stats = None
    if near is not None:
        run("bands", BandStats, _band_task, partitions, with_docs, near)
        cluster = [stages.WorkUnit(0, "partition", [])]
        near_stats = sum(
            run("cluster", ClusterStats, _cluster_task, cluster, parts), ClusterStats()
        )
    decisions = dec.Decisions(parts, near is not None, bool(indexed), None, near_stats)
    if options.max_docs:
        decisions.cut = dec.max_docs_cut(summary.survivors(job, decisions), options.max_docs)
    decisions.survivors = summary.survivors(job, decisions).tolist()
    run("count", CountStats, stages.count_unit, units, decisions)
    run(
        "frequent",
        FrequentStats,
        _frequent_task,
        partitions,
        every,
        config.dedup.image_url_max_count,
        config.dedup.para_boilerplate_min_repeats,
    )
    stages.atomic_write_json(job.decisions, decisions.to_json())
    return decisions


def _index_task(unit: stages.WorkUnit, job: stages.JobDir, indexed: list[int]) -> dict[str, Any]:
    from pipelines.build.archive_parts import merge_partition

    return _with_marker(
        job, "index", unit.index, _JsonMarker,
        lambda: _JsonMarker(merge_partition(unit.index, job.work, indexed)),
    )  # fmt: skip


def _page_task(
    unit: stages.WorkUnit, job: stages.JobDir, every: list[int], parts: int
) -> DedupStats:
    from pipelines.build.decide import page_partition

    return _with_marker(
        job, "page", unit.index, DedupStats,
        lambda: page_partition(unit.index, job.work, every, parts),
    )  # fmt: skip


def _content_task(unit: stages.WorkUnit, job: stages.JobDir, parts: int) -> DedupStats:
    from pipelines.build.decide import content_partition

    return _with_marker(
        job, "content", unit.index, DedupStats,
        lambda: content_partition(unit.index, job.work, parts),
    )  # fmt: skip


def _band_task(
    unit: stages.WorkUnit, job: stages.JobDir, with_docs: list[int], near: Any
) -> BandStats:
    from pipelines.build.decide import band_partition

    return _with_marker(
        job, "bands", unit.index, BandStats,
        lambda: band_partition(unit.index, job.work, with_docs, near),
    )  # fmt: skip


def _cluster_task(unit: stages.WorkUnit, job: stages.JobDir, parts: int) -> ClusterStats:
    from pipelines.build.decide import cluster

    return _with_marker(job, "cluster", unit.index, ClusterStats, lambda: cluster(job.work, parts))


def _frequent_task(
    unit: stages.WorkUnit, job: stages.JobDir, every: list[int], image_max: int, para_min: int
) -> FrequentStats:
    from pipelines.build.decide import frequent_partition

    return _with_marker(
        job, "frequent", unit.index, FrequentStats,
        lambda: frequent_partition(unit.index, job.work, every, image_max, para_min),
    )  # fmt: skip


class _JsonMarker(dict):
    """A marker kept as its plain JSON object (the archive index merge's, archive_parts.py)."""

    @classmethod
    def read(cls, path: Path) -> _JsonMarker:
        return cls(stages.read_json(path))

    def to_json(self) -> dict[str, Any]:
        return dict(self)


def _with_marker(
    job: stages.JobDir, stage: str, index: int, kind: Any, work: Callable[[], Any]
) -> Any:
    """Run one decide task unless its marker says it is done; the marker (`kind`'s JSON) is
    written last."""
    marker = job.marker(stage, index)
    if marker.exists():
        return kind.read(marker)
    result = work()
    stages.atomic_write_json(marker, result.to_json())
    return result


class _LocalExecutor:
    """Run a stage's units one after another in this process (same contract as _RayExecutor)."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __enter__(self) -> _LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(
        self,
        fn: Callable[..., Any],
        units: list[stages.WorkUnit],
        shared: tuple[Any, ...],
        *,
        marker: Callable[[stages.WorkUnit], Path] | None = None,
        read: Callable[[Path], Any] = stages.read_json,
        on_done: Callable[[Any, bool], None] | None = None,
        stop: Callable[[], bool] | None = None,
        keep: bool = True,
    ) -> list[Any]:
        """fn(unit, *shared) for every unit, in unit order; units whose marker exists are read back
        (`read(marker)`: the task's stats record).
        `stop()`, asked after each unit, ends the stage early when True. With `keep=False` the
        results go to `on_done` only and the list comes back empty: the driver's memory does not
        grow with the number of units' results."""
        results: dict[int, Any] = {}
        for unit in units:
            if marker is not None and marker(unit).exists():
                result = read(marker(unit))
                resumed = True
            else:
                result = fn(unit, *shared)
                resumed = False
            if keep:
                results[unit.index] = result
            if on_done is not None:
                on_done(result, resumed)
            if stop is not None and stop():
                break
        return [results[u.index] for u in units if u.index in results]

    def raise_failures(self, stage: str) -> None:
        if self.failures:
            raise RunFailed(
                f"{len(self.failures)} unit(s) failed in the {stage} stage after retries; finished "
                "units are kept, run the same command again to retry the rest:\n  "
                + "\n  ".join(self.failures[:20])
            )


class _RayExecutor(_LocalExecutor):
    """Ray core tasks with at most `max_in_flight` submitted; the shared arguments are put in the
    object store once per stage, not once per task. Worker deaths are retried by Ray
    (TASK_RETRIES); a unit that still fails is reported with its input, and the job stops before
    finalizing, so a rerun can fill it in without renumbering shards."""

    def __init__(self, options: JobOptions) -> None:
        super().__init__()
        self.options = options
        self.owns_ray = False

    def __enter__(self) -> _RayExecutor:
        import ray

        self.ray = ray
        self.owns_ray = _init_ray(self.options)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = self.options.max_in_flight or max(2, 2 * cpus)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owns_ray:
            self.ray.shutdown()

    def map(  # noqa: D102
        self, fn, units, shared, *, marker=None, read=stages.read_json, on_done=None, stop=None,
        keep=True,
    ):  # fmt: skip
        ray = self.ray
        remote = ray.remote(max_retries=TASK_RETRIES, num_cpus=1)(stages.run_logged)
        remote = remote.options(name=fn.__name__)  # the worker's title: ray::extract_unit, ...
        level = self.options.log_level
        level = logging.getLogger().getEffectiveLevel() if level is None else level
        log_dir = str(stages.JobDir(self.options.out).work / "logs")
        stage = fn.__name__.removesuffix("_unit")
        head = [ray.put(fn), stage, level, log_dir]
        shared_refs = [ray.put(arg) for arg in shared]
        results: dict[int, Any] = {}
        pending: dict[Any, stages.WorkUnit] = {}

        def collect(ready: Iterable[Any]) -> None:
            for ref in ready:
                unit = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - reported; the rerun retries the unit
                    self.failures.append(
                        f"unit {unit.index} ({unit.describe()}): {type(exc).__name__}: {exc}"
                    )
                    log.error("unit %d (%s) failed: %s", unit.index, unit.describe(), exc)
                    continue
                if keep:
                    results[unit.index] = result
                if on_done is not None:
                    on_done(result, False)

        stopped = False
        for unit in units:
            if stop is not None and stop():
                stopped = True
                break
            if marker is not None and marker(unit).exists():
                result = read(marker(unit))
                if keep:
                    results[unit.index] = result
                if on_done is not None:
                    on_done(result, True)
                continue
            while len(pending) >= self.max_in_flight:
                ready, _ = ray.wait(list(pending), num_returns=1)
                collect(ready)
            pending[remote.remote(*head, unit, *shared_refs)] = unit
        if stopped:
            for ref in pending:  # their outputs are temporary files until complete: harmless
                ray.cancel(ref)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            if stopped:
                for ref in ready:  # cancelled or finished: either way no longer needed
                    pending.pop(ref)
                continue
            collect(ready)
        return [results[u.index] for u in units if u.index in results]


def _init_ray(options: JobOptions) -> bool:
    """Connect to `--address` / RAY_ADDRESS, or start a local Ray on loopback (ray_local.py);
    reuse one already initialised (tests, notebooks). Returns whether we must shut it down."""
    from pipelines.build.ray_local import init_ray

    return init_ray(options.address, options.num_cpus, loopback_only=options.loopback_only)


def _check_or_record_job(
    job: stages.JobDir,
    inputs: list[str],
    config: BuildConfig,
    options: JobOptions,
    units: list[stages.WorkUnit],
    parts: int = 1,
) -> None:
    """A job folder holds one job: resuming with other inputs or settings would mix two datasets."""
    identity = {
        "version": JOB_VERSION,
        "inputs": list(inputs),
        "config": config.to_dict(),
        "max_docs": options.max_docs,
        "partitions": parts,
        "units": [asdict(u) for u in units],
    }
    if job.job.exists():
        previous = stages.read_json(job.job)
        if previous != json.loads(json.dumps(identity, sort_keys=True)):
            changed = sorted(
                k for k in identity if previous.get(k) != json.loads(json.dumps(identity[k]))
            )
            raise OutputError(
                f"{job.root} holds a build with different {', '.join(changed)}; "
                "use a new --out (or delete the folder) to build something else"
            )
        log.info("resuming the build in %s", job.root)
        return
    stages.atomic_write_json(job.job, identity)


# ---------------------------------------------------------------------------------------------------
# progress and summary (pipelines only: the libraries just log)


class _Progress:
    """One live bar per phase (extract, then write) with the running totals; each bar's total is
    the phase's task count, known when the phase starts, so it never changes mid-run."""

    def __init__(self, n_units: int, enabled: bool) -> None:
        self.enabled = enabled
        self.totals = {"pages": 0, "docs": 0, "images": 0, "shards": 0}
        self.resumed = 0  # tasks read back from an earlier run's markers
        self.resumed_pages = 0  # pages of the extract tasks read back
        self.bar = self._bar("extract", n_units)

    def _bar(self, desc: str, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, unit="task", desc=desc, disable=not self.enabled)

    def phase(self, desc: str, total: int) -> None:
        self.bar.close()
        self.bar = self._bar(desc, total)

    def extracted(self, stats: ExtractStats, resumed: bool) -> None:
        self.totals["pages"] += stats.pages
        self.resumed += resumed
        self.resumed_pages += stats.pages if resumed else 0
        self._tick()

    def written(self, stats: WriteStats, resumed: bool) -> None:
        self.totals["docs"] += stats.docs
        self.totals["images"] += stats.images
        self.totals["shards"] += len(stats.shards)
        self.resumed += resumed
        self._tick()

    def _tick(self) -> None:
        self.bar.set_postfix(self.totals, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summary_table(report: dict[str, Any], top: int = 15) -> str:
    """The end-of-build table: the job's totals (all runs), then what this run did."""
    last = report.get("last_run") or {}
    head: list[str] = []
    if last and last.get("tasks_done") == 0:
        n = last["tasks_already_done"]
        head = [f"{n}/{n} units already done: nothing to build. The job's totals:", ""]
    rows = [
        ("pages read", report["pages"]),
        ("documents extracted", report["documents_extracted"]),
        ("documents kept", report["documents"]),
        ("images kept", report["images"]),
        ("shards", report["shards"]),
        ("bytes", report["bytes"]),
        ("seconds", report["seconds"]),
        ("pages/s", report["pages_per_s"]),
        ("documents/s", report["docs_per_s"]),
    ]
    if last and last.get("tasks_already_done"):  # a resumed job: this run apart from the totals
        rows += [
            ("this run: seconds", last["seconds"]),
            (
                "this run: tasks done",
                f"{last['tasks_done']} (+{last['tasks_already_done']} before)",
            ),
            ("this run: pages/s", last["pages_per_s"]),
        ]
    from pipelines.build.funnel import format_funnel

    counts = report.get("drops", report["counts"])  # drop reasons only (older reports: all)
    drops = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    width = max(len(k) for k, _ in rows + drops) if drops else 20
    lines = head + [f"{k:<{width}}  {v}" for k, v in rows]
    if report.get("funnel"):
        lines += ["", format_funnel(report["funnel"])]
    if drops:
        lines += ["", f"{'drop reason':<{width}}  count"] + [f"{k:<{width}}  {v}" for k, v in drops]
    langs = ", ".join(f"{k} {v}" for k, v in list(report["languages"].items())[:8])
    lines += ["", f"languages: {langs}"]
    if report.get("warning"):
        lines += ["", f"WARNING: {report['warning']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build",
        help="build WebDataset shards from WARC/HTML/URL inputs on Ray",
        formatter_class=DefaultsFormatter,
        description="Build m3w/2 WebDataset shards from WARC/ARC files, HTML files or folders, and URL lists "
        "(local paths, globs, or fsspec URLs). Running it again on the same --out resumes.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="WARC/ARC files, HTML files or folders, URL lists (.txt/.urls); globs and fsspec URLs",
    )
    p.add_argument("--out", required=True, help="job folder: shards/, manifest.jsonl, report.json")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--profile", choices=PROFILES, help="threshold profile (default m3w)")
    p.add_argument("--config", help="YAML file overriding any BuildConfig field")
    add_flags(p, CONFIG_FLAGS, CONFIG_SECTIONS)
    p.add_argument(
        "--limit",
        "--max-docs",
        dest="max_docs",
        metavar="N",
        type=int,
        help="keep at most N documents, the first in input order (default: all)",
    )
    p.add_argument(
        "--page-kill-timeout",
        type=float,
        help="seconds before a page's parser is killed and the page skipped (default 3×parse+5)",
    )
    p.add_argument(
        "--files-per-unit", type=int, default=64, help="HTML files per task (default 64)"
    )
    p.add_argument(
        "--urls-per-unit", type=int, default=256, help="URL-list lines per task (default 256)"
    )
    p.add_argument(
        "--archive-split-mb",
        type=int,
        default=1024,
        help="a .warc.gz larger than this is read by several tasks, in byte ranges (0: one per file)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        help="partitions of the job-wide dedup state (default: from the input size)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override any BuildConfig field (applied last), e.g. images.min_side=100, "
        "dedup.near_dedup=false, text.languages=[en,fr]",
    )
    p.add_argument("--keep-work", action="store_true", help="keep _work/'s intermediate files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


# Flags that set one BuildConfig field each: declared once, typed by the field (m3w_builder.settings).
CONFIG_FLAGS = (
    Flag("--seed", "seed", "seed of the attachment draw (default 0)"),
    Flag(
        "--attach",
        "attach.mode",
        "attachment draw (default: per-document, Flamingo's)",
        choices=("per-document", "per-image"),
    ),
    Flag(
        "--p-next", "attach.p_next", "probability an image attaches to the next text (default 0.5)"
    ),
    Flag("--docs-per-shard", "shards.docs_per_shard", "documents per shard (default 1000)"),
    Flag(
        "--max-shard-bytes", "shards.max_shard_bytes", "bytes per shard, about (default 500000000)"
    ),
    Flag(
        "--allow-private-hosts",
        "fetch.allow_private_hosts",
        "lift the SSRF guard (tests, intranet crawls): fetch from private/loopback addresses",
    ),
    Flag(
        "--near-dedup",
        "dedup.near_dedup",
        "remove near-duplicate documents job-wide (MinHash + LSH; default on)",
        metavar="{on,off}",
        type=on_off,
    ),
)
CONFIG_SECTIONS = {"": BuildConfig, **field_types(BuildConfig)}


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """Profile, then YAML, then the flags, then `--set`: the most specific setting wins."""
    if args.config:
        config = BuildConfig.from_yaml(args.config, profile=args.profile)
    else:
        config = BuildConfig.for_profile(args.profile or "m3w")
    for flag, value in flag_values(args, CONFIG_FLAGS):
        set_path(config, flag.dest, value)
    for assignment in getattr(args, "set", None) or []:
        config.apply_set(assignment)
    return config


def describe_os_error(e: OSError) -> str:
    """`Read-only file system: /data/job/_work/job.json (...)` plus what to do next."""
    where = f": {e.filename}" if e.filename else ""
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EROFS: "use a writable --out",
        errno.EACCES: "use a --out you may write to",
        errno.EPERM: "use a --out you may write to",
    }.get(e.errno or 0, "fix it")
    return (
        f"{e.strerror or e}{where}; {hint}, then run the same command again "
        "(finished units are kept)"
    )


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    options = JobOptions(
        out=args.out,
        address=args.address,
        num_cpus=args.num_cpus,
        max_docs=args.max_docs,
        page_kill_timeout_s=args.page_kill_timeout,
        files_per_unit=args.files_per_unit,
        urls_per_unit=args.urls_per_unit,
        progress=not args.no_progress and sys.stderr.isatty(),
        archive_split_bytes=max(0, args.archive_split_mb) << 20,
        partitions=args.partitions,
        keep_work=args.keep_work,
    )
    try:
        report = run_build(args.inputs, config, options)
    except OSError as e:  # a read-only or full --out: one line, not a traceback
        raise OutputError(describe_os_error(e)) from None
    print(summary_table(report))
    print(f"\nshards: {stages.JobDir(args.out).shards}  (manifest.jsonl, report.json beside them)")
    return 0
