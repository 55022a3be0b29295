"""The archive reader against lying lengths and huge records (issue 14 §2, §3).

§3: a record whose Content-Length lies (too long, too short, 10^17, negative, not a number) costs that
record alone: the reader resyncs from just after its header, never from the claimed end, so every
intact record after it (pages and their archived images) is still read.
§2: memory is bounded by the caps, not by the input: a `.warc.gz` holding a zero-filled image record
far over every cap is read, indexed and asked for that image in a few MB (tracemalloc's peak).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from hostile import LIES, lying_warc, zero_image_warc

from m3w_builder.reasons import Counts, Skip
from m3w_builder.sources import iter_pages
from m3w_builder.warc import ArchiveIndex, iter_records, read_record_at


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("lie", LIES)
def test_a_lying_content_length_loses_no_intact_record(tmp_path: Path, lie: str, gz: bool) -> None:
    crawl = lying_warc(tmp_path / ("lie.warc.gz" if gz else "lie.warc"), lie, gz)
    counts = Counts()
    pages = [p.url for p in iter_pages(str(crawl.path), counts)]
    assert pages == crawl.pages, counts
    assert counts["warc.corrupt_record"] == 1
    records = [r.url for r in iter_records(str(crawl.path), Counts())]
    assert [u for u in records if "/img/" in u] == crawl.images
    # the index pass holds 16 KB of a block: every lie is "oversized" there, and still costs one
    index = ArchiveIndex.build([str(crawl.path)])
    assert len(index) == len(crawl.images)
    for url in crawl.images:
        assert index.read(url, max_bytes=1_000_000)[:3] == b"\xff\xd8\xff"


def _peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def zero_crawl(tmp_path_factory):
    """256 MiB of zeros in one image record (~260 KB compressed): far over every cap; the old
    reader held all of it to peek at the next record, and again to read the image by offset."""
    return zero_image_warc(tmp_path_factory.mktemp("zeros") / "zeros.warc.gz", zeros=256 << 20)


def test_a_huge_zero_record_is_read_past_in_bounded_memory(zero_crawl) -> None:
    counts = Counts()
    urls, peak = _peak(lambda: [p.url for p in iter_pages(str(zero_crawl.path), counts)])
    assert urls == zero_crawl.pages and counts["warc.not_html"] >= 1
    assert peak < 24_000_000, peak  # the 5 MB page cap plus buffers, never the 256 MiB record


def test_the_archived_huge_image_is_refused_by_size_without_being_read(zero_crawl) -> None:
    index = ArchiveIndex.build([str(zero_crawl.path)])
    big = next(u for u in index.entries if "zeros" in u)
    with pytest.raises(Skip) as err:
        index.read(big, max_bytes=10_000_000)
    assert err.value.code == "image.too_large_bytes"
    path, offset = index.lookup(big)
    record, peak = _peak(lambda: read_record_at(path, offset, max_bytes=10_000_000))
    assert record.truncated and len(record.body) < 100_000
    assert peak < 8_000_000, peak
    record, peak = _peak(lambda: read_record_at(path, offset))  # the default cap (64 MB)
    assert record.truncated and peak < 8_000_000, peak
    for url in zero_crawl.images:  # the good images beside it are still read whole
        assert index.read(url, max_bytes=10_000_000)[:3] == b"\xff\xd8\xff"


# "also low": a page declared UTF-8 but written in a legacy encoding went to the statistical
# detector, which on short Latin text picked DOS and Baltic code pages ("Cafķ crĶme").
LATIN = [
    ("Café crème, s'il vous plaît. Où est la gare? Déjà vu, naïve façade.", "cp1252"),
    ("Über die Brücke gehen wir schön langsam. Größe, Straße.", "cp1252"),
    ("El niño comió piñata, ¿qué más? Año, mañana.", "cp1252"),
    ("Smart “quotes” — and – dashes… for €5", "cp1252"),
    ("Blåbærsyltetøy og rødgrøt med fløte. Æbler.", "cp1252"),
    ("Zażółć gęślą jaźń. Pchnąć w tę łódź jeża lub ośm skrzyń fig.", "cp1250"),
    ("Příliš žluťoučký kůň úpěl ďábelské ódy.", "cp1250"),
    ("Türkçe karakterler: ğüşıöç İstanbul ve Ankara şehirleri.", "cp1254"),
    ("Привет, мир! Это длинная страница на русском языке.", "cp1251"),
]


@pytest.mark.parametrize("declared", ["meta", "header", "none"])
@pytest.mark.parametrize("text,codec", LATIN, ids=[c + str(i) for i, (_, c) in enumerate(LATIN)])
def test_legacy_latin_bytes_under_a_wrong_or_no_declaration_decode_as_written(
    text: str, codec: str, declared: str
) -> None:
    from m3w_builder.charset import decode_html

    meta = '<meta charset="utf-8">' if declared == "meta" else ""
    headers = {"Content-Type": "text/html; charset=utf-8"} if declared == "header" else {}
    body = f"<html><head>{meta}</head><body><p>{text}</p></body></html>".encode(codec)
    decoded, used = decode_html(body, headers)
    assert text in decoded, (used, decoded)
