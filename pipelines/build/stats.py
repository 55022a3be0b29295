"""What a build task reports: typed statistics records that merge with `+`.

One record per task kind, each a small `@dataclass(slots=True)` (datatrove's `PipelineStats` shape):

- `ExtractStats`: one extract unit (stage 1), stored as `_work/extract/NNNNN.stats.json`, the unit's
  completion marker;
- `WriteStats`: one write group (stage 3), stored as `_work/write/NNNNN.json`, its marker;
- `DedupStats`, `BandStats`, `ClusterStats`, `CountStats`, `FrequentStats`: the decide stage's tasks
  (pipelines/build/decide.py), stored as `_work/markers/STAGE/NNNNN.json`.

`a + b` merges two records: counters are added (`Counts`, languages), lists concatenated, numbers
summed; the index of the unit or partition is kept when both sides share it and becomes None in a
merge of several, so `sum(records, Record())` is the job's total. Counters merge like
`Counter.update` (a zero-valued key stays), which is how the report folded the plain dicts before.

`to_json()` gives the marker file's object (the very keys of the files written before these types
existed) and `from_json()` reads one back, also from a job started by an older build, so a resume
across the change finds its finished tasks.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from m3w_builder.reasons import Counts
from m3w_builder.shards import ShardInfo


def _same(a: int | None, b: int | None) -> int | None:
    """A merged record's unit/partition index: kept when both sides share it, else None."""
    return a if a == b else None


def _merged_counts(a: Counts, b: Counts) -> Counts:
    out = Counts(a)
    out.update(b)  # not `+`: Counter's `+` would drop a zero-valued key
    return out


def _merged_langs(a: Counter[str], b: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter(a)
    out.update(b)
    return out


class _Record:
    """`read(path)`: a record from its marker file."""

    __slots__ = ()

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.from_json(json.loads(path.read_text()))


@dataclass(slots=True)
class ExtractStats(_Record):
    """What one extract task (one unit of input) did."""

    unit: int | None = None  # the extract unit; None in a merge of several units
    pages: int = 0  # pages read from the unit's inputs (every HTML capture or fetched page)
    docs: int = 0  # documents extracted (rows of the unit's key table, before any dedup)
    archive_index: bool = False  # the unit indexed archived images (an index partition exists)
    counts: Counts = field(default_factory=Counts)  # reason and progress codes of the unit
    langs: Counter[str] = field(default_factory=Counter)  # extracted documents per language
    seconds: float = 0.0  # wall seconds of the task

    def __add__(self, other: ExtractStats) -> ExtractStats:
        if not isinstance(other, ExtractStats):
            return NotImplemented
        return ExtractStats(
            unit=_same(self.unit, other.unit),
            pages=self.pages + other.pages,
            docs=self.docs + other.docs,
            archive_index=self.archive_index or other.archive_index,
            counts=_merged_counts(self.counts, other.counts),
            langs=_merged_langs(self.langs, other.langs),
            seconds=self.seconds + other.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "pages": self.pages,
            "archive_index": self.archive_index,
            "docs": self.docs,
            "counts": self.counts.as_dict(),
            "langs": dict(sorted(self.langs.items())),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ExtractStats:
        return cls(
            unit=obj.get("unit"),
            pages=obj.get("pages", 0),
            docs=obj.get("docs", 0),
            archive_index=bool(obj.get("archive_index")),
            counts=Counts(obj.get("counts", {})),
            langs=Counter(obj.get("langs", {})),
            seconds=obj.get("seconds", 0.0),
        )


@dataclass(slots=True)
class WriteStats(_Record):
    """What one write task (one group of consecutive extract units) wrote."""

    unit: int | None = None  # the write group; None in a merge of several groups
    docs: int = 0  # documents written into the group's part shards
    images: int = 0  # images embedded in them
    bytes: int = 0  # bytes of the part shards
    shards: list[ShardInfo] = field(default_factory=list)  # the part shards, in writing order
    counts: Counts = field(default_factory=Counts)  # reason and progress codes of the write stage
    langs: Counter[str] = field(default_factory=Counter)  # written documents per language
    seconds: float = 0.0  # wall seconds of the task

    def __add__(self, other: WriteStats) -> WriteStats:
        if not isinstance(other, WriteStats):
            return NotImplemented
        return WriteStats(
            unit=_same(self.unit, other.unit),
            docs=self.docs + other.docs,
            images=self.images + other.images,
            bytes=self.bytes + other.bytes,
            shards=[*self.shards, *other.shards],
            counts=_merged_counts(self.counts, other.counts),
            langs=_merged_langs(self.langs, other.langs),
            seconds=self.seconds + other.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "docs": self.docs,
            "images": self.images,
            "bytes": self.bytes,
            "shards": [s.to_json() for s in self.shards],
            "counts": self.counts.as_dict(),
            "langs": dict(sorted(self.langs.items())),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WriteStats:
        return cls(
            unit=obj.get("unit"),
            docs=obj.get("docs", 0),
            images=obj.get("images", 0),
            bytes=obj.get("bytes", 0),
            shards=[ShardInfo(**s) for s in obj.get("shards", [])],
            counts=Counts(obj.get("counts", {})),
            langs=Counter(obj.get("langs", {})),
            seconds=obj.get("seconds", 0.0),
        )


class _Numbers(_Record):
    """A record of an index (`partition` or `unit`, kept or None on a merge) and summed numbers."""

    __slots__ = ()
    _index = "partition"

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        values = {
            f.name: (
                _same(getattr(self, f.name), getattr(other, f.name))
                if f.name == self._index
                else getattr(self, f.name) + getattr(other, f.name)
            )
            for f in fields(self)  # type: ignore[arg-type]
        }
        return type(self)(**values)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Self:
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})  # type: ignore[arg-type]


@dataclass(slots=True)
class DedupStats(_Numbers):
    """One partition of an exact dedup step: page URL (`page_partition`) or identical content
    (`content_partition`)."""

    partition: int | None = None  # the partition; None in a merge of several
    rows: int = 0  # documents whose keys fell into the partition
    drops: int = 0  # documents the step dropped there


@dataclass(slots=True)
class BandStats(_Numbers):
    """One partition of near-dedup's LSH bands (`band_partition`)."""

    partition: int | None = None  # the partition; None in a merge of several
    candidates: int = 0  # document pairs sharing a band, compared by their signatures
    pairs: int = 0  # candidate pairs confirmed as near-duplicates


@dataclass(slots=True)
class FrequentStats(_Numbers):
    """One partition of the frequency step (`frequent_partition`)."""

    partition: int | None = None  # the partition; None in a merge of several
    images: int = 0  # image URLs found on too many surviving documents
    paragraphs: int = 0  # paragraphs repeated across one domain's documents


@dataclass(slots=True)
class CountStats(_Numbers):
    """One unit's frequency counting pass (`stages.count_unit`)."""

    _index = "unit"

    unit: int | None = None  # the extract unit; None in a merge of several
    docs: int = 0  # the unit's documents that survived dedup, counted
    keys: int = 0  # distinct image-URL and paragraph keys among them


@dataclass(slots=True)
class ClusterStats(_Record):
    """Near-duplicate clustering (`decide.cluster`, one task): report.json's `near_duplicates`."""

    clusters: int = 0  # clusters of two or more surviving documents
    removed: int = 0  # documents removed (every member but each cluster's survivor)
    # clusters per size bucket ("2", "3", "4-7", "8-15", ...)
    sizes: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: ClusterStats) -> ClusterStats:
        if not isinstance(other, ClusterStats):
            return NotImplemented
        sizes = Counter(self.sizes)
        sizes.update(other.sizes)
        return ClusterStats(
            self.clusters + other.clusters,
            self.removed + other.removed,
            dict(sorted(sizes.items(), key=lambda kv: int(kv[0].split("-")[0]))),
        )

    def to_json(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "removed": self.removed, "sizes": dict(self.sizes)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ClusterStats:
        return cls(obj.get("clusters", 0), obj.get("removed", 0), dict(obj.get("sizes", {})))


__all__ = [
    "BandStats",
    "ClusterStats",
    "CountStats",
    "DedupStats",
    "ExtractStats",
    "FrequentStats",
    "WriteStats",
]
