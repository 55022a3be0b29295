"""pipelines/build/stats.py: the build tasks' typed stats merge with `+` and round-trip their marker
files, including the files a job started by the old (dict-based) build wrote."""

from __future__ import annotations

import json
from collections import Counter

from m3w_builder.reasons import Counts
from m3w_builder.shards import ShardInfo
from pipelines.build import stages
from pipelines.build.decide import Decisions
from pipelines.build.stats import (
    BandStats,
    ClusterStats,
    CountStats,
    DedupStats,
    ExtractStats,
    FrequentStats,
    WriteStats,
)

# marker files exactly as the dict-based build wrote them (atomic_write_json: sorted keys, indent 1)
OLD_EXTRACT = """{
 "archive_index": true,
 "counts": {
  "html.no_content": 2,
  "yield.html": 10,
  "yield.read": 0
 },
 "docs": 7,
 "langs": {
  "en": 6,
  "fr": 1
 },
 "pages": 10,
 "seconds": 0.125,
 "unit": 3
}"""
OLD_WRITE = """{
 "bytes": 2048,
 "counts": {
  "image.kept": 4,
  "yield.docs_kept": 3
 },
 "docs": 3,
 "images": 4,
 "langs": {
  "en": 3
 },
 "seconds": 1.5,
 "shards": [
  {
   "bytes": 2048,
   "docs": 3,
   "images": 4,
   "name": "000000.tar",
   "sha256": "ab"
  }
 ],
 "unit": 0
}"""


def test_old_marker_files_are_read_and_written_back_unchanged(tmp_path):
    for kind, text in ((ExtractStats, OLD_EXTRACT), (WriteStats, OLD_WRITE)):
        path = tmp_path / f"{kind.__name__}.json"
        path.write_text(text)
        stats = kind.read(path)
        assert stats.unit in (3, 0) and isinstance(stats.counts, Counts)
        assert stats.to_json() == json.loads(text)
        again = tmp_path / f"{kind.__name__}.again.json"
        stages.atomic_write_json(again, stats.to_json())
        assert again.read_text() == text  # byte for byte what the old build wrote
    extract = ExtractStats.read(tmp_path / "ExtractStats.json")
    assert (extract.pages, extract.docs, extract.archive_index) == (10, 7, True)
    assert extract.counts["yield.read"] == 0 and "yield.read" in extract.counts
    write = WriteStats.read(tmp_path / "WriteStats.json")
    assert write.shards == [ShardInfo("000000.tar", 3, 4, 2048, "ab")]


def test_an_old_extract_marker_without_archive_index_reads_as_false():
    old = json.loads(OLD_EXTRACT)
    del old["archive_index"]
    assert ExtractStats.from_json(old).archive_index is False


def test_decide_markers_round_trip_with_the_old_keys():
    old = {
        DedupStats: {"partition": 2, "rows": 10, "drops": 3},
        BandStats: {"partition": 0, "candidates": 5, "pairs": 2},
        FrequentStats: {"partition": 1, "images": 4, "paragraphs": 9},
        CountStats: {"unit": 7, "docs": 3, "keys": 12},
        ClusterStats: {"clusters": 2, "removed": 3, "sizes": {"2": 1, "3": 1}},
    }
    for kind, obj in old.items():
        assert kind.from_json(obj).to_json() == obj, kind


def test_extract_stats_add_sums_numbers_and_merges_counters():
    a = ExtractStats(0, 10, 4, False, Counts({"x": 2, "z": 0}), Counter(en=3, fr=1), 1.0)
    b = ExtractStats(1, 5, 2, True, Counts({"x": 1, "y": 4}), Counter(en=2), 0.5)
    total = a + b
    assert (total.unit, total.pages, total.docs, total.archive_index) == (None, 15, 6, True)
    assert total.counts == Counts({"x": 3, "y": 4, "z": 0}) and "z" in total.counts
    assert total.langs == Counter(en=5, fr=1) and total.seconds == 1.5
    assert a.counts == Counts({"x": 2, "z": 0})  # the operands are left alone
    assert sum([a, b], ExtractStats()) == total
    assert (a + ExtractStats(unit=0)).unit == 0  # one unit's stats merged keep its index


def test_write_stats_add_concatenates_shards_and_the_report_folds_them():
    s1 = ShardInfo("000000.tar", 2, 3, 100, "a")
    s2 = ShardInfo("000001.tar", 1, 1, 50, "b")
    a = WriteStats(0, 2, 3, 100, [s1], Counts({"image.kept": 3}), Counter(en=2), 1.0)
    b = WriteStats(1, 1, 1, 50, [s2], Counts({"image.kept": 1, "doc.no_text": 0}), Counter(de=1))
    total = sum([a, b], WriteStats())
    assert (total.unit, total.docs, total.images, total.bytes) == (None, 3, 4, 150)
    assert total.shards == [s1, s2] and total.langs == Counter(en=2, de=1)
    assert total.counts == Counts({"image.kept": 4, "doc.no_text": 0})
    report = stages.build_report(
        Counts({"yield.html": 5, "gone": 0}), 5, 4, [a, b], [s1, s2], seconds=1.0
    )
    assert report["counts"]["image.kept"] == 4 and "gone" not in report["counts"]
    assert report["counts"]["doc.no_text"] == 0  # a write counter's zero is reported, as before
    assert report["languages"] == {"en": 2, "de": 1}
    assert (report["documents"], report["images"], report["bytes"]) == (3, 4, 150)


def test_decide_stats_add():
    assert DedupStats(0, 10, 3) + DedupStats(1, 5, 1) == DedupStats(None, 15, 4)
    assert sum([BandStats(0, 5, 2), BandStats(1, 1, 0)], BandStats()) == BandStats(None, 6, 2)
    assert FrequentStats(2, 1, 2) + FrequentStats(2, 3, 4) == FrequentStats(2, 4, 6)
    assert CountStats(0, 3, 9) + CountStats(1, 1, 1) == CountStats(None, 4, 10)
    merged = ClusterStats(1, 1, {"2": 1}) + ClusterStats(2, 5, {"4-7": 1, "2": 1})
    assert merged == ClusterStats(3, 6, {"2": 2, "4-7": 1})


def test_decisions_keep_the_cluster_stats_and_read_old_decisions():
    old = {
        "parts": 2,
        "near": True,
        "archive": False,
        "cut": None,
        "near_stats": {"clusters": 1, "removed": 1, "sizes": {"2": 1}},
        "survivors": [3, 4],
    }
    decisions = Decisions.from_json(old)
    assert decisions.near_stats == ClusterStats(1, 1, {"2": 1})
    assert decisions.to_json() == old
    assert Decisions.from_json({**old, "near_stats": None}).near_stats is None
