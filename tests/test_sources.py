"""Readers (m3w_builder/sources.py): charset decoding, WARC/ARC records, pages, inputs.

Corpus tests read ../shared/corpus/dev through the `corpus` fixture; generated fixtures (WARCs written
with warcio's writer, HTML in legacy encodings) are built in tmp_path inside each test.
"""

from __future__ import annotations

import codecs
import gzip
import html
import io
import json
import zlib
from collections import Counter
from pathlib import Path

import pytest

from m3w_builder.charset import decode_html, normalize_charset
from m3w_builder.config import SourceConfig
from m3w_builder.reasons import Counts, Skip
from m3w_builder.sources import (
    classify,
    expand_inputs,
    is_html_record,
    iter_pages,
    iter_url_list,
    kind_by_name,
    walk,
)
from m3w_builder.warc import GZIP_MAGIC, iter_records, open_input, read_record_at, sniff_format

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


def test_iso_2022_jp_is_not_taken_for_ascii() -> None:
    body = '<meta charset="iso-2022-jp"><p>こんにちは、世界</p>'.encode("iso2022_jp")
    assert body.isascii()
    text, encoding = decode_html(body, {})
    assert "こんにちは、世界" in text and encoding.startswith("iso2022_jp")


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


# ------------------------------------------------------------------------------------------------
# Archives: generated fixtures (warcio's writer), damaged on purpose
# ------------------------------------------------------------------------------------------------


def _page(i: int) -> bytes:
    return (
        f"<!doctype html><html><body><p>page {i} ".encode()
        + b"x" * (200 + 37 * i)
        + b"</p></body></html>"
    )


def write_warc(
    path: Path, gz: bool, n: int = 6, extra: list[tuple[str, str, bytes, int]] | None = None
) -> list[int]:
    """n HTML responses (http://ex.test/{i}), then `extra` (url, content-type, body, status)
    responses; returns each record's start offset."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    offsets = []
    items = [(f"http://ex.test/{i}", "text/html; charset=utf-8", _page(i), 200) for i in range(n)]
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gz)
        for url, ctype, body, status in items + (extra or []):
            offsets.append(f.tell())
            http = StatusAndHeaders(
                f"{status} X",
                [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body), http_headers=http
            )
            writer.write_record(record)
    return offsets


def _urls(path: Path, counts: Counts, config: SourceConfig | None = None) -> list[str]:
    return [p.url.rsplit("/", 1)[-1] for p in iter_pages(str(path), counts, config)]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_generated_warc_reads_every_page(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("a.warc.gz" if gz else "a.warc")
    offsets = write_warc(path, gz)
    counts = Counts()
    pages = list(iter_pages(str(path), counts))
    assert [p.body for p in pages] == [_page(i) for i in range(6)]
    assert [p.source_offset for p in pages] == offsets
    assert counts["warc.html_pages"] == 6 and not _codes(counts)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_truncated_tail_is_counted_and_the_rest_read(
    tmp_path: Path, gz: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.warc"
    offsets = write_warc(path, gz)
    data = path.read_bytes()
    path.write_bytes(data[: offsets[5] + (len(data) - offsets[5]) // 2])
    counts = Counts()
    assert _urls(path, counts) == ["0", "1", "2", "3", "4"]
    assert _codes(counts) == {"warc.corrupt_record": 1}
    (message,) = [r.getMessage() for r in caplog.records if "corrupt_record" in r.getMessage()]
    assert f"{path}@{offsets[5]}:" in message  # the log names file and offset


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_garbage_between_records_is_skipped(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / "g.warc"
    offsets = write_warc(path, gz)
    data = path.read_bytes()
    junk = b"GARBAGE\x00\x01\x1f\x8b junk\r\n" * 50
    path.write_bytes(data[: offsets[2]] + junk + data[offsets[2] :])
    counts = Counts()
    assert _urls(path, counts) == ["0", "1", "2", "3", "4", "5"]
    assert _codes(counts) == {"warc.corrupt_record": 1}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_corrupt_record_in_the_middle_costs_one_record(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / "c.warc"
    offsets = write_warc(path, gz)
    data = bytearray(path.read_bytes())
    if gz:
        data[offsets[2] + 40 : offsets[2] + 60] = b"\xff" * 20  # deflate data of member 2
    else:
        # a Content-Length that is too long swallows the start of the next record
        at = data.index(b"Content-Length: ", offsets[2]) + len(b"Content-Length: ")
        end = data.index(b"\r\n", at)
        data[at:end] = str(int(data[at:end]) + 100).encode()
    path.write_bytes(bytes(data))
    counts = Counts()
    assert _urls(path, counts) == ["0", "1", "3", "4", "5"]
    assert _codes(counts) == {"warc.corrupt_record": 1}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_record_cut_in_half_then_intact_records(tmp_path: Path, gz: bool) -> None:
    # plain: the next header follows the cut body mid-line, and the cut record's Content-Length
    # reaches into it; the resync still finds it.
    path = tmp_path / "h.warc"
    offsets = write_warc(path, gz=gz)
    data = path.read_bytes()
    path.write_bytes(data[: offsets[2] + (offsets[3] - offsets[2]) // 2] + data[offsets[3] :])
    counts = Counts()
    assert _urls(path, counts) == ["0", "1", "3", "4", "5"]
    assert _codes(counts) == {"warc.corrupt_record": 1}


def test_status_type_size_and_empty_skips(tmp_path: Path) -> None:
    path = tmp_path / "m.warc.gz"
    big = b"<html><body>" + b"y" * 5000 + b"</body></html>"
    write_warc(
        path,
        gz=True,
        n=1,
        extra=[
            ("http://ex.test/404", "text/html", b"<html>gone</html>", 404),
            ("http://ex.test/img", "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 200),
            ("http://ex.test/big", "text/html", big, 200),
            ("http://ex.test/empty", "text/html", b"", 200),
            ("http://ex.test/blank", "text/html", b"  \r\n ", 200),
            ("http://ex.test/sniffed", "application/octet-stream", _page(9), 200),
            ("http://ex.test/xhtml", "application/xhtml+xml", _page(8), 200),
        ],
    )
    counts = Counts()
    urls = _urls(path, counts, SourceConfig(max_html_bytes=4000))
    assert urls == ["0", "sniffed", "xhtml"]
    assert _codes(counts) == {
        "warc.http_status": 1,
        "warc.not_html": 1,
        "html.too_large": 1,
        "html.empty": 2,
    }


def test_big_records_are_not_held_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "v.warc"
    video = b"\x00" * 3_000_000
    write_warc(path, gz=False, n=1, extra=[("http://ex.test/v", "video/mp4", video, 200)])
    records = list(iter_records(str(path), Counts(), max_body_bytes=10_000))
    assert [r.truncated for r in records] == [False, True]
    assert len(records[1].body) < 10_000 and records[1].content_type == "video/mp4"


def test_gzip_content_encoding_and_chunked_are_undone(tmp_path: Path) -> None:
    from warcio.warcwriter import WARCWriter

    html_body = _page(1)
    compressed = gzip.compress(html_body)
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(compressed[i : i + 100]), compressed[i : i + 100])
            for i in range(0, len(compressed), 100)
        )
        + b"0\r\n\r\n"
    )
    block = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    path = tmp_path / "e.warc.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        record = writer.create_warc_record(
            "http://ex.test/enc",
            "response",
            payload=io.BytesIO(block),
            warc_content_type="application/http; msgtype=response",
            length=len(block),
        )
        writer.write_record(record)
    (page,) = iter_pages(str(path), Counts())
    assert page.body == html_body


def _http_warc(path: Path, blocks: list[tuple[str, bytes]]) -> None:
    """Response records with hand-written HTTP blocks (headers and body bytes as given)."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, block in blocks:
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(block),
                warc_content_type="application/http; msgtype=response",
                length=len(block),
            )
            writer.write_record(record)


def test_content_encodings_brotli_deflate_and_bombs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastwarc.stream_io import BrotliWriter

    from m3w_builder import warc

    cap = 1_000_000  # the module's 64 MB cap, lowered to keep the test fast
    monkeypatch.setattr(warc, "MAX_DECODED_BYTES", cap)

    html_body = _page(2)
    buf = io.BytesIO()
    writer = BrotliWriter(buf)
    writer.write(html_body)
    writer.close()
    deflate = zlib.compressobj(wbits=-15)
    raw_deflate = deflate.compress(html_body) + deflate.flush()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: %s\r\n\r\n"
    bomb = gzip.compress(b"<html>" + b" " * (cap * 3))
    path = tmp_path / "enc.warc.gz"
    _http_warc(
        path,
        [
            ("http://ex.test/br", head % b"br" + buf.getvalue()),
            ("http://ex.test/zlib", head % b"deflate" + zlib.compress(html_body)),
            ("http://ex.test/raw", head % b"deflate" + raw_deflate),
            ("http://ex.test/lie", head % b"gzip" + html_body),
            ("http://ex.test/bomb", head % b"gzip" + bomb),
        ],
    )
    counts = Counts()
    pages = list(iter_pages(str(path), counts))
    assert [p.url.rsplit("/", 1)[-1] for p in pages] == ["br", "zlib", "raw"]
    assert all(p.body == html_body for p in pages)
    assert _codes(counts) == {"warc.undecodable_body": 1, "html.too_large": 1}
    (bomb_record,) = [r for r in iter_records(str(path), Counts()) if r.url.endswith("bomb")]
    assert bomb_record.truncated and len(bomb_record.body) == cap


def test_whole_file_gzip_member_and_detection_by_magic(tmp_path: Path) -> None:
    plain = tmp_path / "p.warc"
    write_warc(plain, gz=False, n=3)
    whole = tmp_path / "misnamed.bin"  # one gzip member for the whole file, and a lying name
    whole.write_bytes(gzip.compress(plain.read_bytes()))
    counts = Counts()
    assert _urls(whole, counts) == ["0", "1", "2"]
    assert not _codes(counts)


def test_unreadable_and_junk_files_never_raise(tmp_path: Path) -> None:
    counts = Counts()
    assert list(iter_pages(str(tmp_path / "missing.warc.gz"), counts)) == []
    assert counts["warc.unreadable"] == 1
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(GZIP_MAGIC + bytes(range(256)) * 40)
    counts = Counts()
    assert list(iter_records(str(junk), counts)) == []
    assert counts["warc.corrupt_record"] >= 1
    damaged_start = tmp_path / "damaged.warc.gz"
    write_warc(damaged_start, gz=True, n=2)
    damaged_start.write_bytes(b"junk" * 10 + damaged_start.read_bytes())
    counts = Counts()
    assert _urls(damaged_start, counts) == ["0", "1"]
    assert _codes(counts) == {"warc.corrupt_record": 1}
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 40)
    counts = Counts()
    assert list(iter_pages(str(noise), counts)) == []
    assert counts["input.unsupported"] == 1


# ------------------------------------------------------------------------------------------------
# HTML files, directories, inputs, URL lists
# ------------------------------------------------------------------------------------------------


def test_a_folder_is_read_in_the_build_plans_order(tmp_path: Path) -> None:
    """`iter_pages` of a folder and the build's plan (which cuts a folder into units) walk it in one
    order, `walk`'s: a folder's own files before its subfolders. They used to differ (iter_pages
    sorted all paths: `a-z.html`, `a/1.html`, `b.html`), so a folder read by the library and by
    the build gave its pages in different orders."""
    from pipelines.build.stages import plan_units

    site = tmp_path / "site"
    (site / "a").mkdir(parents=True)
    (site / "a" / "1.html").write_bytes(_page(1))
    (site / "b.html").write_bytes(_page(2))
    (site / "a-z.html").write_bytes(_page(3))
    (site / "a" / ".hidden.html").write_bytes(_page(4))
    expected = [str(site / "a-z.html"), str(site / "b.html"), str(site / "a" / "1.html")]
    planned = [path for unit in plan_units([str(site)]) for path in unit.paths]
    read = [page.source_file for page in iter_pages(str(site), Counts())]
    assert list(walk(str(site))) == expected
    assert planned == expected
    assert read == expected


def test_html_files_gz_and_directories_in_walk_order(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "b" / "deep").mkdir(parents=True)
    (site / "a.html").write_bytes(_page(1))
    (site / "b" / "c.htm").write_bytes(_page(2))
    (site / "b" / "deep" / "d.html.gz").write_bytes(gzip.compress(_page(3)))
    (site / "b" / "e.xhtml").write_bytes(_page(4))
    (site / "b" / "empty.html").write_bytes(b"")
    (site / "b" / "notes.jsonl").write_bytes(b'{"a": 1}\n')
    (site / ".hidden.html").write_bytes(_page(5))
    write_warc(site / "b" / "z.warc.gz", gz=True, n=2)
    counts = Counts()
    pages = list(iter_pages(str(site), counts))
    # a folder's own files (sorted) before its subfolders: b/deep/d.html.gz comes last
    assert [p.body for p in pages] == [_page(i) for i in (1, 2, 4, 0, 1, 3)]
    assert pages[0].url == (site / "a.html").resolve().as_uri()
    assert pages[0].source_file == str(site / "a.html") and pages[0].source_offset == 0
    assert pages[4].url == "http://ex.test/1"
    assert counts["html.empty"] == 1 and counts["input.unsupported"] == 1
    assert counts["html.files"] == 4 and counts["warc.html_pages"] == 2


def test_html_file_size_cap_and_gzip_bomb(tmp_path: Path) -> None:
    big = tmp_path / "big.html"
    big.write_bytes(b"<html>" + b"a" * 10_000 + b"</html>")
    bomb = tmp_path / "bomb.html.gz"
    bomb.write_bytes(gzip.compress(b"<html>" + b"\x00" * 50_000_000))  # 50 MB, ~50 KB on disk
    corrupt = tmp_path / "corrupt.html.gz"
    corrupt.write_bytes(gzip.compress(_page(1))[:30])
    counts = Counts()
    config = SourceConfig(max_html_bytes=5_000)
    for path in (big, bomb, corrupt):
        assert list(iter_pages(str(path), counts, config)) == []
    assert counts["html.too_large"] == 2 and counts["html.unreadable"] == 1


def test_sniff_format_reads_bytes_not_names(tmp_path: Path, corpus: Path) -> None:
    warcio = corpus / "warc" / "warcio"
    assert sniff_format(str(warcio / "example.arc.gz")) == "arc"
    assert sniff_format(str(warcio / "example-bad.warc.gz.bad")) == "warc"
    assert sniff_format(str(warcio / "example.warc")) == "warc"
    page = tmp_path / "page.txt"
    page.write_bytes(b"\n<!-- saved -->\n<!DOCTYPE html><html></html>")
    assert sniff_format(str(page)) == "html"
    assert sniff_format(str(tmp_path / "nothing")) == "unknown"


def test_expand_inputs_paths_globs_dirs_and_errors(tmp_path: Path) -> None:
    for name in ("b.warc.gz", "a.warc.gz", "c.html"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.warc.gz").write_bytes(b"x")
    got = expand_inputs([str(tmp_path / "*.warc.gz"), str(tmp_path / "c.html")])
    assert got == [
        str(tmp_path / "a.warc.gz"),
        str(tmp_path / "b.warc.gz"),
        str(tmp_path / "c.html"),
    ]
    assert expand_inputs([str(tmp_path / "**" / "*.warc.gz")]) == [
        str(tmp_path / "a.warc.gz"),
        str(tmp_path / "b.warc.gz"),
        str(tmp_path / "sub" / "d.warc.gz"),
    ]
    assert expand_inputs([str(tmp_path / "sub"), str(tmp_path / "sub")]) == [str(tmp_path / "sub")]
    assert expand_inputs([f"file://{tmp_path}/c.html"]) == [str(tmp_path / "c.html")]
    with pytest.raises(ValueError, match="nope"):
        expand_inputs([str(tmp_path / "c.html"), str(tmp_path / "nope*.warc")])
    with pytest.raises(ValueError, match="no fsspec filesystem"):
        expand_inputs(["nosuchproto://bucket/x.warc.gz"])


def test_fsspec_urls_are_read_like_files(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    local = tmp_path / "m.warc.gz"
    write_warc(local, gz=True, n=3)
    fs.pipe("/crawl/m-00.warc.gz", local.read_bytes())
    fs.pipe("/crawl/m-01.warc.gz", local.read_bytes())
    fs.pipe("/crawl/page.html", _page(7))
    inputs = expand_inputs(["memory://crawl/*.warc.gz"])
    assert [i.replace(":///", "://") for i in inputs] == [
        "memory://crawl/m-00.warc.gz",
        "memory://crawl/m-01.warc.gz",
    ]
    counts = Counts()
    pages = [p for path in inputs for p in iter_pages(path, counts)]
    assert len(pages) == 6 and pages[3].source_file == inputs[1]
    first = pages[1]
    assert read_record_at(first.source_file, first.source_offset).body == first.body
    (html_page,) = iter_pages("memory://crawl/page.html", Counts())
    assert html_page.body == _page(7) and html_page.url == "memory://crawl/page.html"
    assert len(list(iter_pages("memory://crawl", Counts()))) == 7  # a directory URL is walked
    with open_input("memory://crawl/page.html") as f:
        assert f.read() == _page(7)


def test_iter_url_list(tmp_path: Path) -> None:
    urls = tmp_path / "seed.urls"
    urls.write_text(
        "# seed list\nhttp://a.test/\n\n  https://b.test/x?y=1  \nhttp://c.test/#frag  # dup\n"
    )
    assert list(iter_url_list(str(urls))) == [
        "http://a.test/",
        "https://b.test/x?y=1",
        "http://c.test/#frag",
    ]
    zipped = tmp_path / "seed.txt.gz"
    zipped.write_bytes(gzip.compress(urls.read_bytes()))
    assert list(iter_url_list(str(zipped))) == list(iter_url_list(str(urls)))


def test_classify_bytes_first_then_the_name(tmp_path: Path) -> None:
    """One rule for what a file is (`classify`), used by iter_pages, the build's input check and
    `m3w extract`; the build's plan cuts by the name alone (`kind_by_name`)."""
    warc = tmp_path / "a.warc.gz"
    write_warc(warc, gz=True, n=1)
    cases = {
        "crawl.warc.gz": warc.read_bytes(),
        "crawl.warc.gz.bad": warc.read_bytes(),  # the bytes say WARC: an archive
        "page.warc": _page(1),  # a web page named .warc is read as the page it is
        "damaged.arc": b"\x00garbage",  # the bytes say nothing: the name decides
        "page.bin": _page(1),
        "page.HTM": b"\x00",
        "seeds.txt": b"http://a.test/\n",
        "seeds.LST.gz": gzip.compress(b"http://a.test/\n"),
        "notes.jsonl": b'{"a": 1}\n',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    got = {name: classify(str(tmp_path / name)) for name in cases}
    assert got == {
        "crawl.warc.gz": "archive",
        "crawl.warc.gz.bad": "archive",
        "page.warc": "html",
        "damaged.arc": "archive",
        "page.bin": "html",
        "page.HTM": "html",
        "seeds.txt": "url_list",
        "seeds.LST.gz": "url_list",
        "notes.jsonl": "unsupported",
    }
    assert classify(str(tmp_path / "missing.html")) == "html"  # its reader counts it unreadable
    assert classify(str(tmp_path / "missing")) == "unsupported"
    assert [kind_by_name(n) for n in ("x.WARC", "x.html.gz", "x.urls", "x.warc.gz.bad")] == [
        "archive",
        "html",
        "url_list",
        None,
    ]
