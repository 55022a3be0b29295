"""The job-wide archive index, partitioned by URL hash: images found in any of the job's archives
without one process (the driver, or every write task) holding the whole index.

Before: each extract task pickled its unit's `warc.ArchiveIndex`, the driver merged them all (≈ 3.8
entries and 1.5 KB per page) and shipped the result to every write task, which unpickled it
(0.43 s per task at 200k pages, so the job's total grew with N²). Now:

1. each extract task writes its unit's index as fixed-size rows (`unit_rows`), one file per kind,
   partitioned by key (`tables.write_partitioned`): captures (URL key → file and offset),
   redirects (URL key → target key), payload digests (→ file and offset), revisits (URL key →
   digest and refers-to key) and archived error statuses;
2. one merge task per partition gathers its slice of every unit's files, keeps the first capture
   of each key in input order (as `ArchiveIndex.merge` did), and writes each kind sorted by key;
3. a write task opens `PartitionedArchiveIndex`, which answers `lookup`, `read` and `failure` like
   `ArchiveIndex` (so `images.ImageResolver` takes either) by binary search in memory-mapped
   partition files: memory stays at the pages its lookups touch.

Keys are 128-bit blake2b hashes of `dedup.url_key` (or of the digest string): at 10^9 entries a
64-bit collision would be likely somewhere, and it would put one URL's bytes under another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3w_builder.dedup import url_key
from m3w_builder.warc import ArchiveIndex
from pipelines.build import tables

KINDS = ("entries", "redirects", "digests", "revisits", "failures")
ROW = np.dtype(
    [
        ("key_hi", "<u8"),
        ("key_lo", "<u8"),
        ("unit", "<u4"),  # the unit whose archive holds the record (input order)
        ("file", "<u2"),  # the archive's position in that unit's paths
        ("offset", "<u8"),
        ("a_hi", "<u8"),  # redirects: target key; revisits: digest key
        ("a_lo", "<u8"),
        ("b_hi", "<u8"),  # revisits: refers-to key
        ("b_lo", "<u8"),
        ("status", "<u2"),  # failures: the archived HTTP status
    ]
)
_MAX_HOPS = 5  # archived redirects and revisits followed, as ArchiveIndex.lookup


def key128(text: str) -> tuple[int, int]:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def url_key128(url: str) -> tuple[int, int]:
    return key128(url_key(url))


def unit_rows(index: ArchiveIndex, unit: int, unit_paths: Sequence[str]) -> dict[str, np.ndarray]:
    """One unit's ArchiveIndex as a table per kind (its file ids mapped to positions in the unit's
    paths, so a reader needs only the job's plan to find a file)."""
    position = {path: i for i, path in enumerate(unit_paths)}

    def table(n: int) -> np.ndarray:
        return np.zeros(n, dtype=ROW)

    def file_no(file_id: int) -> int:
        path = index.files[file_id]
        if path not in position:  # a file reached through a directory input
            position[path] = len(position)
        return position[path]

    out: dict[str, np.ndarray] = {}
    rows = table(len(index.entries))
    for i, (key, (file_id, offset)) in enumerate(index.entries.items()):
        rows[i]["key_hi"], rows[i]["key_lo"] = key128(key)
        rows[i]["file"], rows[i]["offset"] = file_no(file_id), offset
    out["entries"] = rows
    rows = table(len(index.redirects))
    for i, (key, target) in enumerate(index.redirects.items()):
        rows[i]["key_hi"], rows[i]["key_lo"] = key128(key)
        rows[i]["a_hi"], rows[i]["a_lo"] = url_key128(target)
    out["redirects"] = rows
    rows = table(len(index.digests))
    for i, (digest, (file_id, offset)) in enumerate(index.digests.items()):
        rows[i]["key_hi"], rows[i]["key_lo"] = key128(digest)
        rows[i]["file"], rows[i]["offset"] = file_no(file_id), offset
    out["digests"] = rows
    rows = table(len(index.revisits))
    for i, (key, (digest, refers_to)) in enumerate(index.revisits.items()):
        rows[i]["key_hi"], rows[i]["key_lo"] = key128(key)
        if digest:
            rows[i]["a_hi"], rows[i]["a_lo"] = key128(digest)
        if refers_to:
            rows[i]["b_hi"], rows[i]["b_lo"] = url_key128(refers_to)
    out["revisits"] = rows
    rows = table(len(index.failures))
    for i, (key, status) in enumerate(index.failures.items()):
        rows[i]["key_hi"], rows[i]["key_lo"] = key128(key)
        rows[i]["status"] = status
    out["failures"] = rows
    for rows in out.values():
        rows["unit"] = unit
    extra = [p for p, i in sorted(position.items(), key=lambda kv: kv[1]) if i >= len(unit_paths)]
    out["_files"] = np.array(extra, dtype=object)  # paths beyond the unit's own (rare)
    return out


def unit_path(work: Path, unit: int, kind: str) -> Path:
    return work / "extract" / "index" / f"{unit:05d}.{kind}.npy"


def write_unit_index(work: Path, unit: int, rows: dict[str, np.ndarray], parts: int) -> None:
    for kind in KINDS:
        tables.write_partitioned(
            unit_path(work, unit, kind), rows[kind], rows[kind]["key_hi"], parts
        )
    extra = [str(p) for p in rows["_files"]]
    if extra:
        unit_path(work, unit, "files").with_suffix(".txt").write_text("\n".join(extra))


def merged_path(work: Path, p: int, kind: str) -> Path:
    return work / "index" / f"{p:05d}.{kind}.npy"


def merge_partition(p: int, work: Path, indexed_units: list[int]) -> dict[str, int]:
    """Partition p of the job's index: every unit's slice, the first row of each key in input
    order (unit, then the order the unit indexed it), sorted by key for binary search."""
    sizes = {}
    for kind in KINDS:
        pieces = [tables.read_partition(unit_path(work, u, kind), p) for u in indexed_units]
        rows = np.concatenate(pieces) if pieces else np.zeros(0, dtype=ROW)
        order = np.lexsort((np.arange(len(rows)), rows["unit"], rows["key_lo"], rows["key_hi"]))
        rows = rows[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (rows["key_hi"][1:] != rows["key_hi"][:-1]) | (
            rows["key_lo"][1:] != rows["key_lo"][:-1]
        )
        rows = rows[first]
        tables.write_sorted(merged_path(work, p, kind), rows)
        sizes[kind] = len(rows)
    return sizes


class PartitionedArchiveIndex:
    """`ArchiveIndex`'s lookup/read/failure over the merged partition files of a job."""

    def __init__(self, work: Path, parts: int, unit_paths: Sequence[Sequence[str]]) -> None:
        self.work, self.parts, self.unit_paths = work, parts, unit_paths
        self._tables: dict[tuple[int, str], tables.SortedTable] = {}
        self._extra: dict[int, list[str]] = {}

    def _table(self, hi: int, kind: str) -> tables.SortedTable:
        p = int(tables.partition_of(np.array([hi], dtype=np.uint64), self.parts)[0])
        table = self._tables.get((p, kind))
        if table is None:
            table = self._tables[(p, kind)] = tables.SortedTable(merged_path(self.work, p, kind))
        return table

    def _find(self, kind: str, key: tuple[int, int]) -> Any:
        return self._table(key[0], kind).find(*key)

    def _path(self, row: Any) -> str:
        unit, file = int(row["unit"]), int(row["file"])
        paths = self.unit_paths[unit]
        if file < len(paths):
            return str(paths[file])
        if unit not in self._extra:
            extra = unit_path(self.work, unit, "files").with_suffix(".txt")
            self._extra[unit] = extra.read_text().splitlines() if extra.exists() else []
        return self._extra[unit][file - len(paths)]

    def lookup(self, url: str) -> tuple[str, int] | None:
        key = url_key128(url)
        for _ in range(_MAX_HOPS + 1):
            row = self._find("entries", key)
            if row is not None:
                return self._path(row), int(row["offset"])
            revisit = self._find("revisits", key)
            if revisit is not None:
                digest = (int(revisit["a_hi"]), int(revisit["a_lo"]))
                if digest != (0, 0):
                    target = self._find("digests", digest)
                    if target is not None:
                        return self._path(target), int(target["offset"])
                refers = (int(revisit["b_hi"]), int(revisit["b_lo"]))
                if refers == (0, 0) or refers == key:
                    return None
                key = refers
                continue
            redirect = self._find("redirects", key)
            if redirect is None:
                return None
            key = (int(redirect["a_hi"]), int(redirect["a_lo"]))
        return None

    def failure(self, url: str) -> int | None:
        if self.lookup(url) is not None:
            return None
        row = self._find("failures", url_key128(url))
        return None if row is None else int(row["status"])

    def read(self, url: str, max_bytes: int | None = None) -> bytes | None:
        where = self.lookup(url)
        if where is None:
            return None
        return ArchiveIndex.read_at(where[0], where[1], max_bytes)
