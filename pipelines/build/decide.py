"""The build's decide stage: job-wide dedup as partitioned Ray tasks over files, never in the driver.

Inputs, written by every extract task (`UnitKeys`): one DOC_KEYS row per document (page-URL key,
capture time, content hash, document key), partitioned by page key; with near-dedup on, the
documents' MinHash signatures and their LSH band keys, partitioned by band key. Steps, each a task
per partition (P from the input size, pipelines/build/tables.py), each writing files and a marker:

1. **page URL** (`page_partition`): among captures of one normalised page URL the newest wins
   (m3w_builder.dedup.page_url_losers); the winners go on, partitioned by content hash;
2. **identical documents** (`content_partition`): among the winners with one content hash the
   first in input order wins (`content_losers`);
3. **near-duplicates** (`band_partition`, then one `cluster` task): documents sharing an LSH band
   are candidates, confirmed by their estimated Jaccard similarity (m3w_builder/minhash.py); the
   confirmed pairs form clusters (union-find, one task: its memory grows with the duplicates, not
   the pages); each cluster keeps its newest capture, then its smallest document key, among the
   documents the exact rules kept;
4. `--max-docs` (the driver, from per-unit counts): the first N survivors in input order;
5. **frequencies** (`count_unit` per unit, then `frequent_partition`): image URLs on more than
   `dedup.image_url_max_count` surviving documents and paragraphs on at least
   `dedup.para_min_docs_per_domain` documents of one domain.

Drops are files of (unit, ord, code) rows sorted by unit; a write task finds its units' rows by
binary search in memory maps (`DropIndex`). Every rule is a pure function of the inputs: no
completion order, no number of workers or partitions enters a decision.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3w_builder import dedup, minhash
from m3w_builder.document import Document
from pipelines.build import tables
from pipelines.build.stats import BandStats, ClusterStats, DedupStats, FrequentStats

CODES = {
    1: "dedup.page_url",
    2: "dedup.identical_doc",
    3: "dedup.near_duplicate",
    4: "job.max_docs",
}
CODE_OF = {code: n for n, code in CODES.items()}
DROP = np.dtype([("unit", "<u4"), ("ord", "<u4"), ("code", "u1")])
BAND = np.dtype([("band", "<u8"), ("ord", "<u4")])
PAIR = np.dtype([("u1", "<u4"), ("o1", "<u4"), ("u2", "<u4"), ("o2", "<u4")])
COUNT = np.dtype([("key", "<u8"), ("n", "<u4"), ("kind", "u1")])  # kind 1 image URL, 2 paragraph
_ALL_PAIRS_MAX = 32  # a band bucket up to this size gives all its pairs; a larger one a star


# ------------------------------------------------------------------------------------ layout


def keys_path(work: Path, unit: int) -> Path:
    return work / "extract" / "keys" / f"{unit:05d}.npy"


def signatures_path(work: Path, unit: int) -> Path:
    return work / "extract" / "minhash" / f"{unit:05d}.sig.npy"


def bands_path(work: Path, unit: int) -> Path:
    return work / "extract" / "minhash" / f"{unit:05d}.bands.npy"


def decide_path(work: Path, name: str) -> Path:
    return work / "decide" / name


def count_path(work: Path, unit: int) -> Path:
    return work / "decide" / "count" / f"{unit:05d}.npy"


# ------------------------------------------------------------------------ extract side


class UnitKeys:
    """What one extract task records per document for the decide stage."""

    def __init__(self, near: minhash.MinHashConfig | None) -> None:
        self.near = near
        self.rows: list[tuple[int, ...]] = []
        self.signatures: list[np.ndarray] = []

    def add(self, doc: Document) -> int:
        ord_ = len(self.rows)
        self.rows.append(dedup.doc_key_row(doc, ord_))
        if self.near is not None:
            self.signatures.append(minhash.signature(doc.text(" "), self.near))
        return ord_

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, work: Path, unit: int, parts: int) -> None:
        rows = (
            np.array(self.rows, dtype=dedup.DOC_KEYS) if self.rows else np.zeros(0, dedup.DOC_KEYS)
        )
        tables.write_partitioned(keys_path(work, unit), rows, rows["page"], parts)
        if self.near is None:
            return
        k = self.near.num_perm
        sigs = np.stack(self.signatures) if self.signatures else np.zeros((0, k), np.uint32)
        tables.save_npy(signatures_path(work, unit), sigs)
        band_keys = minhash.band_keys(sigs, self.near)
        bands = np.zeros(band_keys.size, dtype=BAND)
        bands["band"] = band_keys.reshape(-1)
        bands["ord"] = np.repeat(np.arange(len(sigs), dtype=np.uint32), self.near.bands)
        tables.write_partitioned(bands_path(work, unit), bands, bands["band"], parts)


# ----------------------------------------------------------------------- decide tasks


def _drops(rows: np.ndarray, code: str) -> np.ndarray:
    out = np.zeros(len(rows), dtype=DROP)
    out["unit"], out["ord"], out["code"] = rows["src"], rows["ord"], CODE_OF[code]
    return out[np.lexsort((out["ord"], out["unit"]))]


def page_partition(p: int, work: Path, units: list[int], parts: int) -> DedupStats:
    rows = tables.gather_partition(((u, keys_path(work, u)) for u in units), p, dedup.DOC_KEYS)
    losers = dedup.page_url_losers(rows)
    tables.save_npy(
        decide_path(work, f"page-{p:05d}.drops.npy"), _drops(rows[losers], "dedup.page_url")
    )
    winners = rows[~losers]
    path = decide_path(work, f"page-{p:05d}.winners.npy")
    tables.write_partitioned(path, winners, winners["content_hi"], parts)
    return DedupStats(partition=p, rows=len(rows), drops=int(losers.sum()))


def content_partition(q: int, work: Path, parts: int) -> DedupStats:
    dtype = np.dtype(
        [("src", np.int64), *[(n, dedup.DOC_KEYS.fields[n][0]) for n in dedup.DOC_KEYS.names]]
    )
    rows = tables.gather_partition(
        ((None, decide_path(work, f"page-{p:05d}.winners.npy")) for p in range(parts)), q, dtype
    )
    losers = dedup.content_losers(rows)
    tables.save_npy(
        decide_path(work, f"content-{q:05d}.drops.npy"), _drops(rows[losers], "dedup.identical_doc")
    )
    return DedupStats(partition=q, rows=len(rows), drops=int(losers.sum()))


class _Signatures:
    """Memory-mapped signature files, opened once per unit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.open: dict[int, np.ndarray] = {}

    def __call__(self, unit: int) -> np.ndarray:
        if unit not in self.open:
            self.open[unit] = tables.load_npy(signatures_path(self.work, unit))
        return self.open[unit]


def band_partition(
    p: int, work: Path, units: list[int], config: minhash.MinHashConfig
) -> BandStats:
    """Candidate pairs of partition p's band buckets, kept when their signatures agree on at least
    `threshold` of their entries."""
    rows = tables.gather_partition(((u, bands_path(work, u)) for u in units), p, BAND)
    rows = rows[np.lexsort((rows["ord"], rows["src"], rows["band"]))]
    bands = rows["band"]
    starts = np.flatnonzero(np.concatenate(([True], bands[1:] != bands[:-1])))
    ends = np.concatenate((starts[1:], [len(rows)]))
    sigs = _Signatures(work)
    found: set[tuple[int, int, int, int]] = set()
    candidates = 0
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2:
            continue
        members = [(int(rows["src"][i]), int(rows["ord"][i])) for i in range(start, end)]
        if len(members) <= _ALL_PAIRS_MAX:
            pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
        else:
            pairs = [(members[0], b) for b in members[1:]]
        for a, b in pairs:
            if a == b or (*a, *b) in found:
                continue
            candidates += 1
            if minhash.similarity(sigs(a[0])[a[1]], sigs(b[0])[b[1]]) >= config.threshold:
                found.add((*a, *b))
    out = (
        np.array(sorted(found), dtype=np.uint32).reshape(-1, 4)
        if found
        else np.zeros((0, 4), np.uint32)
    )
    pairs = np.zeros(len(out), dtype=PAIR)
    for i, name in enumerate(PAIR.names):
        pairs[name] = out[:, i]
    tables.save_npy(decide_path(work, f"bands-{p:05d}.pairs.npy"), pairs)
    return BandStats(partition=p, candidates=candidates, pairs=len(pairs))


def _ids(unit: np.ndarray, ord_: np.ndarray) -> np.ndarray:
    return (unit.astype(np.int64) << 32) | ord_.astype(np.int64)


def exact_drop_ids(work: Path, parts: int) -> np.ndarray:
    """Sorted (unit << 32 | ord) of every document the exact rules dropped."""
    pieces = [
        tables.load_npy(decide_path(work, f"{stage}-{p:05d}.drops.npy"), mmap=False)
        for stage in ("page", "content")
        for p in range(parts)
    ]
    drops = np.concatenate(pieces) if pieces else np.zeros(0, DROP)
    return np.sort(_ids(drops["unit"], drops["ord"]))


def cluster(work: Path, parts: int) -> ClusterStats:
    """Near-duplicate clusters from every partition's confirmed pairs; each keeps one document."""
    uf = dedup.UnionFind()
    for p in range(parts):
        pairs = tables.load_npy(decide_path(work, f"bands-{p:05d}.pairs.npy"), mmap=False)
        for a, b in zip(
            _ids(pairs["u1"], pairs["o1"]).tolist(),
            _ids(pairs["u2"], pairs["o2"]).tolist(),
            strict=True,
        ):
            uf.union(a, b)
    exact = exact_drop_ids(work, parts)
    components = [m for m in uf.components().values() if len(m) > 1]
    members = np.array(sorted(x for m in components for x in m), dtype=np.int64)
    alive = members[~_isin_sorted(members, exact)] if len(members) else members
    keys = _keys_of(work, alive)
    drops: list[tuple[int, int]] = []
    sizes: Counter[int] = Counter()
    alive_set = set(alive.tolist())
    for component in components:
        kept = sorted(x for x in component if x in alive_set)
        if len(kept) < 2:
            continue
        rows = np.array([keys[x] for x in kept], dtype=dedup.DOC_KEYS)
        survivor = kept[dedup.cluster_survivor(rows["date"], rows["doc_hi"], rows["doc_lo"])]
        sizes[len(kept)] += 1
        drops.extend((x >> 32, x & 0xFFFFFFFF) for x in kept if x != survivor)
    out = np.zeros(len(drops), dtype=DROP)
    if drops:
        arr = np.array(sorted(drops), dtype=np.int64)
        out["unit"], out["ord"] = arr[:, 0], arr[:, 1]
    out["code"] = CODE_OF["dedup.near_duplicate"]
    tables.save_npy(decide_path(work, "near.drops.npy"), out)
    return ClusterStats(clusters=sum(sizes.values()), removed=len(drops), sizes=histogram(sizes))


def histogram(sizes: Counter[int]) -> dict[str, int]:
    """Cluster sizes in power-of-two buckets: "2", "3", "4-7", "8-15", ..."""
    out: Counter[str] = Counter()
    for size, n in sizes.items():
        if size <= 3:
            out[str(size)] += n
        else:
            low = 1 << (size.bit_length() - 1)
            out[f"{low}-{2 * low - 1}"] += n
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split("-")[0])))


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    i = np.searchsorted(sorted_set, values)
    i[i == len(sorted_set)] = 0
    return sorted_set[i] == values


def _keys_of(work: Path, ids: np.ndarray) -> dict[int, tuple]:
    """DOC_KEYS rows of the given documents, reading each involved unit's keys once."""
    out: dict[int, tuple] = {}
    units = ids >> 32
    for unit in np.unique(units).tolist():
        ords = ids[units == unit] & 0xFFFFFFFF
        rows = tables.load_npy(keys_path(work, unit), mmap=False)
        for row in rows[np.isin(rows["ord"], ords)]:
            out[(unit << 32) | int(row["ord"])] = tuple(row.tolist())
    return out


# --------------------------------------------------------------------- drops for the write stage


@dataclass(slots=True)
class Decisions:
    """What a write task needs from the decide stage (the rest it reads from files)."""

    parts: int
    near: bool = False
    archive: bool = False  # some unit indexed archived images: look them up
    cut: tuple[int, int] | None = None  # --max-docs: (unit, survivors kept in it); later units 0
    near_stats: ClusterStats | None = None  # the near-duplicate clustering's
    survivors: list[int] | None = None  # documents per unit left for the write stage

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Decisions:
        cut = obj.get("cut")
        near_stats = obj.get("near_stats")
        return cls(
            obj["parts"],
            obj.get("near", False),
            obj.get("archive", False),
            tuple(cut) if cut else None,
            ClusterStats.from_json(near_stats) if near_stats is not None else None,
            obj.get("survivors"),
        )


def drop_files(work: Path, decisions: Decisions) -> list[Path]:
    files = [
        decide_path(work, f"{stage}-{p:05d}.drops.npy")
        for stage in ("page", "content")
        for p in range(decisions.parts)
    ]
    if decisions.near:
        files.append(decide_path(work, "near.drops.npy"))
    return files


class DropIndex:
    """Every decide-stage drop, found by unit with a binary search per file (memory-mapped)."""

    def __init__(self, work: Path, decisions: Decisions) -> None:
        self.files = [tables.load_npy(f) for f in drop_files(work, decisions)]
        self.cut = decisions.cut

    def for_unit(self, unit: int) -> dict[int, str]:
        out: dict[int, str] = {}
        for rows in self.files:
            if not len(rows):
                continue
            units = rows["unit"]
            start = int(np.searchsorted(units, unit, side="left"))
            stop = int(np.searchsorted(units, unit, side="right"))
            for row in rows[start:stop]:
                out.setdefault(int(row["ord"]), CODES[int(row["code"])])
        return out

    def drops_per_unit(self, n_units: int) -> np.ndarray:
        """How many documents each unit loses (a bincount over memory maps, chunk by chunk)."""
        total = np.zeros(n_units, dtype=np.int64)
        for rows in self.files:
            for start, stop in tables.iter_chunks(len(rows), 1 << 20):
                total += np.bincount(rows["unit"][start:stop], minlength=n_units)[:n_units]
        return total


def max_docs_cut(survivors: np.ndarray, max_docs: int) -> tuple[int, int] | None:
    """(unit, k): the first `max_docs` surviving documents in input order end with the first k of
    that unit's survivors; None when the units hold no more than that."""
    total = np.cumsum(survivors)
    if not len(total) or total[-1] <= max_docs:
        return None
    unit = int(np.searchsorted(total, max_docs, side="left"))
    before = int(total[unit - 1]) if unit else 0
    return unit, max_docs - before


def unit_records(records: Any, unit: int, drops: DropIndex) -> Any:
    """(record, drop code or None) for one unit's extracted records, `--max-docs` applied."""
    codes = drops.for_unit(unit)
    cut = drops.cut
    kept = 0
    for record in records:
        code = codes.get(record["ord"])
        if code is None and cut is not None:
            cut_unit, limit = cut
            if unit > cut_unit or (unit == cut_unit and kept >= limit):
                code = "job.max_docs"
            else:
                kept += 1
        yield record, code


# ------------------------------------------------------------------------ frequencies


def count_unit_keys(docs: list[Document]) -> np.ndarray:
    """One unit's image-URL and per-domain paragraph keys with their document counts."""
    images = dedup.image_url_counts(docs)
    paragraphs = dedup.paragraph_counts(docs)
    rows = np.zeros(len(images) + len(paragraphs), dtype=COUNT)
    for i, (key, n) in enumerate([*images.items(), *paragraphs.items()]):
        rows[i] = (key, n, 1 if i < len(images) else 2)
    return rows


def frequent_partition(
    p: int, work: Path, units: list[int], image_max: int, paragraph_min: int
) -> FrequentStats:
    rows = tables.gather_partition(((u, count_path(work, u)) for u in units), p, COUNT)
    out = {}
    for kind, name, keep in (
        (1, "images", lambda n: n > image_max),
        (2, "paragraphs", lambda n: n >= paragraph_min),
    ):
        sel = rows[rows["kind"] == kind]
        keys, inverse = np.unique(sel["key"], return_inverse=True)
        totals = (
            np.bincount(inverse, weights=sel["n"], minlength=len(keys))
            if len(keys)
            else np.zeros(0)
        )
        frequent = np.sort(keys[keep(totals)]) if len(keys) else keys
        tables.save_npy(
            decide_path(work, f"frequent-{p:05d}.{name}.npy"), frequent.astype(np.uint64)
        )
        out[name] = len(frequent)
    return FrequentStats(partition=p, **out)


def frequent_keys(work: Path, parts: int, name: str) -> np.ndarray:
    """The sorted frequent keys of every partition (few: logos, boilerplate paragraphs)."""
    pieces = [
        tables.load_npy(decide_path(work, f"frequent-{p:05d}.{name}.npy"), mmap=False)
        for p in range(parts)
    ]
    return np.sort(np.concatenate(pieces)) if pieces else np.zeros(0, np.uint64)


def is_member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    return _isin_sorted(keys, sorted_keys)


def write_json(path: Path, obj: Any) -> None:
    from pipelines.build.stages import atomic_write

    atomic_write(path, json.dumps(obj, sort_keys=True).encode())
