"""Readers: WARC/ARC archives, HTML files and directories, URL lists → RawPage.

The build starts here (DESIGN §2): every input becomes a stream of `RawPage(url, body, headers,
source_file, source_offset, date)`. A reader never raises out of a file: a bad record or a bad file is
a counted skip with a reason code (`warc.corrupt_record`, `warc.unreadable`, ...) and a log line that
names the file and offset, and the rest of the file is still read where the format allows (each record
of a .warc.gz is its own gzip member, ISO 28500 annex D, so the reader can resync on the next member).

`decode_html` turns page bytes into text the way a browser would (WHATWG Encoding Standard, "encoding
sniffing"), because a page decoded with the wrong charset becomes mojibake that no text filter catches.
"""

from __future__ import annotations

import codecs
import logging
import re

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Charset decoding
# --------------------------------------------------------------------------------------------------

# WHATWG Encoding Standard §4.2 "Names and labels": browsers decode these labels with a superset
# codec, and pages are written for browsers. The notable ones: latin-1 and ascii mean windows-1252
# (0x80-0x9F are curly quotes, dashes, € ...), Shift_JIS means windows-31j (cp932: NEC/IBM
# extensions such as ① and ㈱ are common on Japanese pages), gb2312 means gbk (gb18030 is a superset),
# euc-kr means windows-949, big5 means big5-hkscs, tis-620 means windows-874.
_WHATWG_ALIASES: dict[str, str] = {
    "ascii": "cp1252",
    "us-ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "windows-1252": "cp1252",
    "cp819": "cp1252",
    "iso-8859-9": "cp1254",
    "latin5": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "csshiftjis": "cp932",
    "windows-31j": "cp932",
    "ms932": "cp932",
    "euc-jp": "euc_jp",
    "x-euc-jp": "euc_jp",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "chinese": "gb18030",
    "csgb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "euc-cn": "gb18030",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "ksc5601": "cp949",
    "windows-949": "cp949",
    "big5": "big5hkscs",
    "big5-hkscs": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "unicode-1-1-utf-8": "utf-8",
    "utf8": "utf-8",
    "x-unicode20utf8": "utf-8",
}
# EUC-JP pages often use JIS X 0212/0213 or vendor codes that Python's euc_jp lacks; these codecs are
# supersets tried in order before giving up on a declared EUC-JP (cp932 has no such fallback need).
_FALLBACK_SUPERSETS: dict[str, tuple[str, ...]] = {
    "euc_jp": ("euc_jis_2004",),
    "cp949": ("johab",),
}
# Single-byte legacy charsets decode almost any byte string without error, so a strict decode can't
# tell that a declaration is wrong. Valid non-ASCII UTF-8 is vanishingly unlikely in real cp1252 text
# (it needs byte pairs like "Ã©"), while "declared latin-1, written in UTF-8" is a common CMS mistake.
_SINGLE_BYTE = frozenset({"cp1252", "cp1254", "cp874", "cp1251", "cp1250", "iso8859-15", "koi8-r"})

# WHATWG §6 "prescan": a BOM outranks every declaration, including the HTTP header.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
PRESCAN_BYTES = 4096  # HTML Living Standard §13.2.3.2: the prescan looks at the first 1024 bytes;
# real pages put the <meta> after long <script>/<link> runs, so we read 4 KB like libxml2 does.

_CHARSET_RE = re.compile(rb"""charset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.I)
_META_RE = re.compile(rb"<meta\b[^>]*>", re.I)
_XML_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]*\bencoding\s*=\s*["']([A-Za-z0-9._:\-]+)""", re.I)


def normalize_charset(label: str | None) -> str | None:
    """A charset label → the Python codec a browser-compatible decoder should use, or None.

    Labels are matched per the WHATWG table above; anything else goes through Python's codec
    registry. Unknown labels return None. UTF-16 declared *inside* the bytes is ignored (WHATWG:
    a document that could read its own meta tag as ASCII is not UTF-16) and becomes utf-8.
    """
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    name = _WHATWG_ALIASES.get(name, name)
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return None
    codec = _WHATWG_ALIASES.get(codec, codec)
    return codec


def charset_from_headers(headers: dict[str, str]) -> str | None:
    """The `charset` parameter of the Content-Type header (RFC 9110 §8.3), as a raw label."""
    for name, value in headers.items():
        if name.lower() == "content-type":
            match = _CHARSET_RE.search(value.encode("latin-1", "replace"))
            return match.group(1).decode("ascii") if match else None
    return None


def charset_from_bom(body: bytes) -> str | None:
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return codec
    return None


def charset_from_meta(body: bytes) -> str | None:
    """`<meta charset>` / `<meta http-equiv=content-type content=...; charset=...>` in the first 4 KB,
    else an XML declaration's encoding (XHTML served as text/html).

    Any `charset=` inside a <meta> tag counts, whatever attribute carries it: real Japanese pages in
    the dev corpus write `<meta http-equiv="Content-Type" value="text/html; charset=Shift_JIS">`
    (`value=`, not `content=`) and browsers still honour it.
    """
    head = body[:PRESCAN_BYTES]
    for meta in _META_RE.finditer(head):
        match = _CHARSET_RE.search(meta.group(0))
        if match:
            label = match.group(1).decode("ascii")
            codec = normalize_charset(label)
            if codec in ("utf-16-le", "utf-16-be", "utf-16"):
                return "utf-8"  # WHATWG prescan: a meta tag found as ASCII cannot be UTF-16
            if codec is not None:
                return label
    match = _XML_DECL_RE.match(head)
    return match.group(1).decode("ascii") if match else None


def _strict(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _try_declared(body: bytes, label: str | None) -> tuple[str, str] | None:
    """Strictly decode with a declared charset (and its supersets); None when the bytes disagree,
    so that a wrong declaration falls through instead of producing silent mojibake."""
    codec = normalize_charset(label)
    if codec is None:
        return None
    if codec in _SINGLE_BYTE and not body.isascii():
        text = _strict(body, "utf-8")
        if text is not None:
            return text, "utf-8"
    for candidate in (codec, *_FALLBACK_SUPERSETS.get(codec, ())):
        text = _strict(body, candidate)
        if text is not None:
            return text, candidate
    return None


def _detect(body: bytes) -> tuple[str, str] | None:
    """Statistical detection (bs4's UnicodeDammit, which uses charset_normalizer when installed)."""
    from bs4 import UnicodeDammit

    dammit = UnicodeDammit(body, is_html=True)
    if dammit.unicode_markup is None or dammit.original_encoding is None:
        return None
    codec = normalize_charset(dammit.original_encoding) or dammit.original_encoding
    return dammit.unicode_markup, codec


def decode_html(body: bytes, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """Decode page bytes to text; returns (text, codec name).

    Order: BOM (WHATWG: it outranks everything), the HTTP Content-Type charset, `<meta>` / XML
    declaration in the first 4 KB, then detection, then UTF-8 with U+FFFD replacement. Every declared
    charset must decode strictly or it is skipped: a header that says utf-8 over Shift_JIS bytes
    must not win. Labels map to WHATWG's superset codecs (latin-1 → cp1252, Shift_JIS → cp932).
    """
    headers = headers or {}
    bom = charset_from_bom(body)
    if bom is not None:
        text = _strict(body[len(codecs.BOM_UTF8) if bom == "utf-8" else 2 :], bom)
        if text is not None:
            return text, bom
    if body.isascii():
        return body.decode("ascii"), "ascii"  # every candidate agrees; skip the work
    for label in (charset_from_headers(headers), charset_from_meta(body)):
        decoded = _try_declared(body, label)
        if decoded is not None:
            return decoded
    text = _strict(body, "utf-8")
    if text is not None:
        return text, "utf-8"
    detected = _detect(body)
    if detected is not None:
        return detected
    return body.decode("utf-8", errors="replace"), "utf-8"
