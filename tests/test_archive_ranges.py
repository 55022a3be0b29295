"""A large `.warc.gz` read by several tasks in byte ranges (issue "Scale" §1: one unit per WARC caps
parallelism at the number of files): every record read exactly once, whatever the cut points, and
a build over ranges keeps the same documents as a build reading each file whole."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from m3w_builder.config import BuildConfig
from m3w_builder.reasons import Counts
from m3w_builder.warc import archive_ranges, iter_records
from pipelines.build.job import JobOptions, run_build
from pipelines.build.stages import plan_units
from pipelines.demo.sample_site import make_site, write_warcs


@pytest.fixture(scope="module")
def warc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    make_site(root / "site", pages=30, seed=11)
    (path,) = write_warcs(root / "site", root / "warc", files=1)
    return path


@pytest.mark.parametrize("split", [1_000, 7_777, 40_000])
def test_ranges_read_every_record_exactly_once(warc, split):
    whole = [(r.offset, r.url) for r in iter_records(str(warc), Counts())]
    ranges = archive_ranges(str(warc), split)
    assert len(ranges) > 1 and ranges[0][0] == 0
    pieces, counts = [], Counts()
    for byte_range in ranges:
        pieces += [
            (r.offset, r.url) for r in iter_records(str(warc), counts, byte_range=byte_range)
        ]
    assert pieces == whole
    assert counts["warc.records"] == len(whole) and not counts.get("warc.corrupt_record")


def test_small_plain_and_arc_files_are_not_split(tmp_path, warc):
    assert archive_ranges(str(warc), 1 << 30) == [(0, 1 << 62)]
    plain = tmp_path / "x.warc"
    plain.write_bytes(b"x" * 10_000)
    assert archive_ranges(str(plain), 1_000) == [(0, 1 << 62)]


def _docs(out: Path) -> list[dict]:
    docs = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    docs.append(json.loads(tar.extractfile(m).read()))
    return docs


@pytest.mark.slow
def test_a_build_over_ranges_keeps_the_documents_of_a_whole_file_build(warc, tmp_path):
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    ranged = JobOptions(out=str(tmp_path / "ranged"), progress=False, archive_split_bytes=20_000)
    whole = JobOptions(out=str(tmp_path / "whole"), progress=False)
    assert len(plan_units([str(warc)], archive_split_bytes=20_000)) > 2
    a = run_build([str(warc)], config, ranged, use_ray=False)
    b = run_build([str(warc)], config, whole, use_ray=False)
    assert a["units"] > 2 and b["units"] == 1
    assert a["counts"] == b["counts"]
    assert _docs(tmp_path / "ranged") == _docs(tmp_path / "whole")
