"""Readers (m3w_builder/sources.py): charset decoding, WARC/ARC records, pages, inputs.

Corpus tests read ../shared/corpus/dev through the `corpus` fixture; generated fixtures (WARCs written
with warcio's writer, HTML in legacy encodings) are built in tmp_path inside each test.
"""

from __future__ import annotations

import codecs
import gzip
import html
import json
from collections import Counter
from pathlib import Path

import pytest

from m3w_builder.config import SourceConfig
from m3w_builder.reasons import Counts, Skip
from m3w_builder.sources import (
    decode_html,
    is_html_record,
    iter_pages,
    iter_records,
    normalize_charset,
    read_record_at,
)

# ------------------------------------------------------------------------------------------------
# decode_html
# ------------------------------------------------------------------------------------------------

# The three non-UTF-8 pages of html/postlight; MANIFEST.md: "only their <meta charset> says so".
# Postlight saved them as ASCII with numeric character references, so each test also re-encodes the
# unescaped page into its declared charset to get the real legacy bytes a crawler would archive.
JAPANESE_PAGES = [
    ("www.itmedia.co.jp", "cp932", "さらば平成、さらば水冷"),
    ("www.jnsa.org", "cp932", "日本ネットワークセキュリティ協会"),
    ("takagi-hiromitsu.jp", "euc_jp", "高木浩光＠自宅の日記"),
]


def _legacy_bytes(corpus: Path, site: str, codec: str) -> bytes:
    raw = gzip.open(corpus / "html" / "postlight" / f"{site}.html.gz").read()
    return html.unescape(raw.decode("ascii")).encode(codec, errors="xmlcharrefreplace")


@pytest.mark.parametrize(("site", "codec", "needle"), JAPANESE_PAGES)
def test_japanese_corpus_pages_as_saved(corpus: Path, site: str, codec: str, needle: str) -> None:
    raw = gzip.open(corpus / "html" / "postlight" / f"{site}.html.gz").read()
    text, _ = decode_html(raw, {})
    assert needle in html.unescape(text)
    assert "\ufffd" not in text


@pytest.mark.parametrize(("site", "codec", "needle"), JAPANESE_PAGES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/html"}, {"Content-Type": "text/html; charset=UTF-8"}],
    ids=["no-header", "header-no-charset", "header-wrong-utf8"],
)
def test_japanese_legacy_bytes_decode_via_meta(
    corpus: Path, site: str, codec: str, needle: str, headers: dict[str, str]
) -> None:
    body = _legacy_bytes(corpus, site, codec)
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")  # the fixture really is legacy bytes
    text, encoding = decode_html(body, headers)
    assert needle in text
    assert "\ufffd" not in text
    assert codecs.lookup(encoding).name in {"cp932", "euc_jp", "euc_jis_2004"}


def test_shift_jis_header_uses_cp932_superset() -> None:
    # ① and ㈱ are NEC extensions: in cp932 (what browsers use for "Shift_JIS"), not in shift_jis.
    body = "<p>①㈱ 日本語</p>".encode("cp932")
    with pytest.raises(UnicodeDecodeError):
        body.decode("shift_jis")
    text, encoding = decode_html(body, {"Content-Type": "text/html; charset=Shift_JIS"})
    assert text == "<p>①㈱ 日本語</p>"
    assert encoding == "cp932"


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("ISO-8859-1", "cp1252"),
        ("us-ascii", "cp1252"),
        ("latin1", "cp1252"),
        ("Shift_JIS", "cp932"),
        ("x-sjis", "cp932"),
        ("EUC-JP", "euc_jp"),
        ("gb2312", "gb18030"),
        ("euc-kr", "cp949"),
        ("utf8", "utf-8"),
        ("no-such-charset", None),
        (None, None),
    ],
)
def test_normalize_charset_follows_whatwg(label: str | None, codec: str | None) -> None:
    assert normalize_charset(label) == codec


def test_latin1_label_decodes_cp1252_punctuation() -> None:
    body = "<p>“quoted” – 5 €</p>".encode("cp1252")
    text, encoding = decode_html(body, {"content-type": "text/html; charset=iso-8859-1"})
    assert text == "<p>“quoted” – 5 €</p>"
    assert encoding == "cp1252"


def test_header_beats_meta() -> None:
    body = '<meta charset="utf-8"><p>café</p>'.encode(
        "cp1252"
    )  # the meta lies, the header is right
    text, encoding = decode_html(body, {"Content-Type": "text/html; charset=windows-1252"})
    assert "café" in text and encoding == "cp1252"


def test_wrong_header_falls_through_to_meta() -> None:
    body = '<meta charset="euc-jp"><p>日本語のページ</p>'.encode("euc_jp")
    text, encoding = decode_html(body, {"Content-Type": "text/html; charset=utf-8"})
    assert "日本語のページ" in text and encoding == "euc_jp"


def test_bom_beats_header_and_meta() -> None:
    # WHATWG encoding sniffing: the BOM outranks the transport layer (see docs/sources.md).
    body = codecs.BOM_UTF8 + '<meta charset="shift_jis"><p>naïve</p>'.encode()
    text, encoding = decode_html(body, {"Content-Type": "text/html; charset=shift_jis"})
    assert text.startswith("<meta") and "naïve" in text and encoding == "utf-8"
    body16 = codecs.BOM_UTF16_LE + "<p>ü</p>".encode("utf-16-le")
    assert decode_html(body16, {}) == ("<p>ü</p>", "utf-16-le")


def test_meta_http_equiv_and_value_attribute() -> None:
    body = (
        '<meta http-equiv="Content-Type" value="text/html; charset=Shift_JIS"><p>東京</p>'.encode(
            "cp932"
        )
    )
    assert decode_html(body, {})[0].endswith("<p>東京</p>")
    body = '<meta http-equiv=content-type content="text/html;charset=gb2312"><p>北京</p>'.encode(
        "gb2312"
    )
    assert decode_html(body, {}) == (body.decode("gb18030"), "gb18030")


def test_xml_declaration_is_a_declaration() -> None:
    body = '<?xml version="1.0" encoding="EUC-JP"?><html><p>大阪</p></html>'.encode("euc_jp")
    assert "大阪" in decode_html(body, {})[0]


def test_meta_after_4kb_is_not_seen_but_detection_or_utf8_still_works() -> None:
    body = b"<!--" + b"x" * 5000 + b'--><meta charset="utf-8"><p>' + "Grüße".encode() + b"</p>"
    text, encoding = decode_html(body, {})
    assert "Grüße" in text and encoding == "utf-8"


def test_latin1_declared_but_utf8_written_is_utf8() -> None:
    body = '<meta charset="iso-8859-1"><p>Grüße aus Köln</p>'.encode()
    assert "Grüße aus Köln" in decode_html(body, {})[0]


def test_undeclared_legacy_bytes_are_detected() -> None:
    sentence = "Привет, мир! Это длинная страница на русском языке о погоде и новостях. " * 20
    body = f"<html><body><p>{sentence}</p></body></html>".encode("cp1251")
    text, _ = decode_html(body, {})
    assert sentence in text


def test_binary_junk_never_raises() -> None:
    junk = bytes(range(256)) * 64
    text, encoding = decode_html(junk, {"Content-Type": "text/html; charset=bogus"})
    assert isinstance(text, str) and encoding
    assert decode_html(b"", {}) == ("", "ascii")


# ------------------------------------------------------------------------------------------------
# Archives: the dev corpus
# ------------------------------------------------------------------------------------------------

ALL_TYPES = {"warcinfo", "response", "resource", "request", "revisit", "metadata"}

# Expected outcome of every file in corpus warc/warcio (index.jsonl notes what each one is).
# pages: what iter_pages yields; codes: reason codes that must be counted (exact values).
# Where warcio fails, ours differs on purpose (docs/sources.md "The broken files"):
# - example-bad*.gz: one gzip member for the whole file is legal gzip; ours reads all 6 records.
# - example-wrong-chunks.warc.gz: one record split over 3 gzip members; ours joins them.
# - example-trunc.warc: the HTTP Content-Length (606) is 2 bytes short of the gzip body; the WARC
#   Content-Length is right, so ours reads the whole body and the page is complete.
# - example-space-in-url.arc: the ARC length says 1591 but only 1579 bytes remain: corrupt.
# - bad.arc: lengths -1, -1 and "abc": three corrupt records; the readable one is text/plain.
WARCIO_EXPECTED: dict[str, tuple[int, dict[str, int]]] = {
    "bad.arc": (0, {"warc.corrupt_record": 3, "warc.not_html": 1}),
    "example-bad-non-chunked.warc.gz": (1, {"warc.revisit": 1}),
    "example-bad.warc.gz.bad": (1, {"warc.revisit": 1, "warc.http_status": 1}),
    "example-digest.warc": (0, {}),
    "example-iana.org-chunked.warc": (1, {}),
    "example-resource.warc.gz": (1, {}),  # an HTML *resource* record (not a response) is a page
    "example-space-in-target-uri.warc.gz": (0, {"warc.not_html": 1}),
    "example-space-in-url.arc": (0, {"warc.corrupt_record": 1}),
    "example-trunc.warc": (1, {}),
    "example-wget-bad-target-uri.warc.gz": (1, {"warc.not_html": 2}),
    "example-wrong-chunks.warc.gz": (1, {}),
    "example.arc": (1, {}),
    "example.arc.gz": (1, {}),
    "example.warc": (1, {"warc.revisit": 1}),
    "example.warc.gz": (1, {"warc.revisit": 1}),
    "post-test.warc.gz": (0, {"warc.not_html": 3}),
}
SKIP_CODES = ("warc.", "html.")


def _codes(counts: Counts) -> dict[str, int]:
    return {
        k: v
        for k, v in counts.items()
        if k.startswith(SKIP_CODES) and k not in ("warc.records", "warc.html_pages")
    }


def test_every_warcio_file_has_an_expected_outcome(corpus: Path) -> None:
    files = {
        json.loads(line)["file"]
        for line in (corpus / "warc" / "warcio" / "index.jsonl").read_text().splitlines()
    }
    assert files == set(WARCIO_EXPECTED)


@pytest.mark.parametrize("name", sorted(WARCIO_EXPECTED))
def test_warcio_corpus_outcomes(corpus: Path, name: str) -> None:
    pages_expected, codes_expected = WARCIO_EXPECTED[name]
    counts = Counts()
    pages = list(iter_pages(str(corpus / "warc" / "warcio" / name), counts, SourceConfig()))
    assert len(pages) == pages_expected
    assert _codes(counts) == codes_expected
    for page in pages:
        text, _ = decode_html(page.body, page.headers)
        assert "<html" in text.lower() and "</html>" in text.lower()  # complete, decoded page
        assert page.url.startswith("http") and " " not in page.url
        assert page.date and page.date[:2] == "20"
        assert page.source_file.endswith(name)


def test_warcio_record_counts_match_index(corpus: Path) -> None:
    # For the files warcio reads without error, every record type count agrees with warcio's.
    for line in (corpus / "warc" / "warcio" / "index.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["warcio_error"] or entry["file"].endswith(".arc"):
            continue
        counts = Counts()
        records = list(
            iter_records(str(corpus / "warc" / "warcio" / entry["file"]), counts, ALL_TYPES)
        )
        types = Counter(r.record_type for r in records)
        assert dict(types) == entry["records"], entry["file"]


def test_example_iana_chunked_body_is_dechunked(corpus: Path) -> None:
    path = str(corpus / "warc" / "warcio" / "example-iana.org-chunked.warc")
    (page,) = iter_pages(path, Counts())
    assert page.body.startswith(b"<!doctype html>")
    assert page.body.rstrip().endswith(b"</html>")
    assert b"\r\n0\r\n" not in page.body[-20:]


def test_example_trunc_page_equals_the_intact_capture(corpus: Path) -> None:
    warcio = corpus / "warc" / "warcio"
    (trunc,) = iter_pages(str(warcio / "example-trunc.warc"), Counts())
    (intact,) = iter_pages(str(warcio / "example.warc"), Counts())
    assert trunc.body == intact.body and b"Example Domain" in trunc.body


def test_aut_example_has_140_html_responses(corpus: Path) -> None:
    path = str(corpus / "warc" / "aut" / "example.warc.gz")
    counts = Counts()
    records = list(iter_records(path, counts, ALL_TYPES))
    types = Counter(r.record_type for r in records)
    assert types == {"warcinfo": 1, "response": 299, "request": 261, "metadata": 261}
    html_responses = [r for r in records if r.record_type == "response" and is_html_record(r)]
    assert len(html_responses) == 140
    images = [r for r in records if r.content_type.startswith("image/")]
    assert len(images) == 55
    page_counts = Counts()
    pages = list(iter_pages(path, page_counts))
    ok = [r for r in html_responses if r.status == 200]
    assert len(pages) == len(ok) == 94  # 46 HTML responses are 301/302/404: warc.http_status
    assert [p.source_offset for p in pages] == [r.offset for r in ok]
    assert "warc.corrupt_record" not in page_counts


def test_read_record_at_round_trips_every_offset(corpus: Path) -> None:
    path = str(corpus / "warc" / "aut" / "example.warc.gz")
    records = [r for r in iter_records(path, Counts()) if r.content_type.startswith("image/")]
    for record in records:
        again = read_record_at(path, record.offset)
        assert again.url == record.url and again.body == record.body
        assert again.status == record.status and again.content_type == record.content_type
    plain = str(corpus / "warc" / "aut" / "issue-493.warc")
    for record in iter_records(plain, Counts()):
        assert read_record_at(plain, record.offset).body == record.body
    with pytest.raises(Skip) as err:
        read_record_at(path, records[0].offset + 7)
    assert err.value.code == "warc.corrupt_record"


def test_issue_493_revisits_and_images(corpus: Path) -> None:
    counts = Counts()
    pages = list(iter_pages(str(corpus / "warc" / "aut" / "issue-493.warc"), counts))
    assert counts["warc.revisit"] == 5
    assert len(pages) + counts["warc.http_status"] == 5  # index.jsonl: 5 HTML responses
