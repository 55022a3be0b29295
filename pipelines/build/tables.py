"""Partitioned numpy tables on disk: how the build keeps per-page state out of the driver.

Every job-wide decision (page-URL dedup, identical documents, near-duplicates, image-URL and
paragraph frequencies, the archive index) needs to see one key's records from all inputs together.
Holding them in one process grows with the crawl (2.5 KB per page in the driver before this module).
Instead, as in a map-reduce shuffle (datatrove's dedup steps work the same way):

- a **map** task writes its records as one `.npy` file, sorted by partition `key % P`, with a sidecar
  `.parts.npy` of the P+1 row offsets of each partition (`write_partitioned`);
- a **reduce** task for partition p reads only slice p of every map task's file
  (`read_partition`: a memory map, so the other partitions are never read);
- results a later stage looks up by key are written sorted (`write_sorted`) and searched by binary
  search in a memory map (`SortedTable`), so a lookup touches a few pages of the file, never all.

P is chosen from the input size (`partitions_for`), never from the number of workers, and no
decision depends on it: the same inputs give the same shards with 1 or 1,000 partitions.
Keys are 64-bit (`key_hi`, `key_lo` pairs where collisions would matter: the archive index).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

# Input bytes per partition: a reduce task then holds about this much input's worth of keys
# (~40 bytes per page), a few MB to a few hundred, whatever the crawl's size.
BYTES_PER_PARTITION = 256 * 1024 * 1024
MAX_PARTITIONS = 4096


def partitions_for(input_bytes: int) -> int:
    """P for a job reading `input_bytes` (1 for anything up to 256 MB)."""
    return int(min(MAX_PARTITIONS, max(1, -(-input_bytes // BYTES_PER_PARTITION))))


def partition_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each uint64 key: its high 32 bits modulo P (the low bits are used by the
    hash tables downstream; taking the high ones keeps the two independent)."""
    return ((keys.astype(np.uint64) >> np.uint64(32)) % np.uint64(parts)).astype(np.int64)


def _parts_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + ".parts.npy")


def save_npy(path: Path, array: np.ndarray) -> None:
    """The whole array or nothing (np.save itself is not atomic), locally or on object storage."""
    from pipelines import storage

    with storage.open_atomic(path) as f:
        np.save(f, array, allow_pickle=False)


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """An array file, memory-mapped (a remote file is fetched into the machine's cache first)."""
    from pipelines import storage

    if not path.exists():
        raise FileNotFoundError(path)
    local = storage.local_copy(path)
    if local.stat().st_size <= 128:  # an empty array: np.load cannot map zero bytes
        return np.load(local, allow_pickle=False)
    return np.load(local, mmap_mode="r" if mmap else None, allow_pickle=False)


def _header(f) -> tuple[np.dtype, int]:
    version = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else (np.lib.format.read_array_header_2_0)
    )
    _, _, dtype = read(f)
    return dtype, f.tell()


def write_partitioned(path: Path, rows: np.ndarray, keys: np.ndarray, parts: int) -> None:
    """`rows` (a structured array) grouped by the partition of `keys`, in a stable order inside
    each partition, and the partition offsets beside it."""
    part = partition_of(keys, parts)
    order = np.argsort(part, kind="stable")
    offsets = np.searchsorted(part[order], np.arange(parts + 1), side="left").astype(np.int64)
    save_npy(_parts_path(path), offsets)
    save_npy(path, rows[order])


def read_partition(path: Path, p: int) -> np.ndarray:
    """Rows of partition p of one partitioned file: only that slice's bytes are read (a seek
    locally, a ranged GET on object storage), never the other partitions."""
    offsets = np.load(_parts_path(path).open("rb"), allow_pickle=False)
    start, stop = int(offsets[p]), int(offsets[p + 1])
    with path.open("rb") as f:
        dtype, data = _header(f)
        if stop <= start:
            return np.zeros(0, dtype=dtype)
        f.seek(data + start * dtype.itemsize)
        raw = f.read((stop - start) * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype).copy()


def gather_partition(
    paths: Iterable[tuple[int | None, Path]], p: int, dtype: np.dtype
) -> np.ndarray:
    """Partition p of many files, concatenated. A tag given with a file (its unit index) is
    written into a leading `src` column; files whose rows already carry `src` give None."""
    tagged = "src" not in dtype.names
    out_dtype = np.dtype([("src", np.int64), *_fields(dtype)]) if tagged else dtype
    pieces = []
    for tag, path in paths:
        rows = read_partition(path, p)
        if not len(rows):
            continue
        if tagged:
            piece = np.empty(len(rows), dtype=out_dtype)
            piece["src"] = tag
            for name in rows.dtype.names:
                piece[name] = rows[name]
            rows = piece
        pieces.append(rows)
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=out_dtype)


def _fields(dtype: np.dtype) -> list[tuple[str, np.dtype]]:
    return [(name, dtype.fields[name][0]) for name in dtype.names]


class SortedTable:
    """A structured array sorted by `key_hi` then `key_lo`, memory-mapped, looked up by binary
    search: memory stays at the pages a lookup touches, however large the table."""

    def __init__(self, path: Path) -> None:
        self.rows = load_npy(path) if path.exists() else None

    def find(self, hi: int, lo: int = 0, *, use_lo: bool = True) -> np.void | None:
        rows = self.rows
        if rows is None or not len(rows):
            return None
        his = rows["key_hi"]
        start = int(np.searchsorted(his, np.uint64(hi), side="left"))
        stop = int(np.searchsorted(his, np.uint64(hi), side="right"))
        for i in range(start, stop):
            if not use_lo or int(rows["key_lo"][i]) == lo:
                return rows[i]
        return None


def write_sorted(path: Path, rows: np.ndarray) -> None:
    """`rows` sorted by (key_hi, key_lo) for SortedTable."""
    order = np.lexsort((rows["key_lo"], rows["key_hi"]))
    save_npy(path, rows[order])


def iter_chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)
