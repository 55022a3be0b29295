"""Readers (m3w_builder/sources.py): charset decoding, WARC/ARC records, pages, inputs.

Corpus tests read ../shared/corpus/dev through the `corpus` fixture; generated fixtures (WARCs written
with warcio's writer, HTML in legacy encodings) are built in tmp_path inside each test.
"""

from __future__ import annotations

import codecs
import gzip
import html
from pathlib import Path

import pytest

from m3w_builder.sources import decode_html, normalize_charset

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
