"""Charset decoding: page bytes → text, the way a browser would.

Why a module of its own: a page decoded with the wrong charset becomes mojibake that no text filter
catches, and the rule browsers follow (WHATWG Encoding Standard, "encoding sniffing") is long:
byte-order mark, then the HTTP `Content-Type` charset, then `<meta charset>` / an XML declaration in
the first 4 KB, then statistical detection, each declared charset used only if the bytes decode
strictly with it. `decode_html` is that rule; the extractor (`m3w_builder.extract`) calls it on every
page. It knows bytes and labels only: no files, no archives (those are `m3w_builder.warc` and
`m3w_builder.sources`).
"""

from __future__ import annotations

import codecs
import re
import unicodedata

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
    "iso-2022-jp": "iso2022_jp_ext",  # WHATWG's decoder accepts the half-width katakana escape
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


DETECT_BYTES = 65_536  # detection reads this much: enough evidence, and bounded time on 5 MB pages


def _detect(body: bytes) -> tuple[str, str] | None:
    """Statistical detection (bs4's UnicodeDammit, which uses charset_normalizer when installed)
    on the first 64 KB; the whole body is then decoded with the codec found. Latin-script text
    gets a windows-125x codec (`_windows_latin`), never a DOS or Mac code page."""
    from bs4 import UnicodeDammit

    dammit = UnicodeDammit(body[:DETECT_BYTES], is_html=True)
    if dammit.original_encoding is None:
        return None
    codec = normalize_charset(dammit.original_encoding) or dammit.original_encoding
    codec = _windows_latin(body[:DETECT_BYTES], codec) or codec
    try:
        return body.decode(codec, errors="replace"), codec
    except LookupError:
        return None


# The legacy single-byte encodings of Latin-script pages (WHATWG Encoding Standard's list): 1252
# (Western, the WHATWG default) first, then Central European, Turkish, Baltic, Vietnamese.
_WINDOWS_LATIN = ("cp1252", "cp1250", "cp1254", "cp1257", "cp1258")
_MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)
_LATIN_MAX_NON_ASCII = 0.3  # Western European prose: 1-5% of its letters; Cyrillic as cp1252: ~100%
# The accented letters of the Western European languages cp1252 was made for. What cp1252 makes of
# Turkish (ğ ş ı → ð þ ý), Czech (š ž ť) or Baltic text falls outside, and goes to the family vote.
_WESTERN_LETTERS = frozenset("àáâãäåæçèéêëìíîïñòóôõöøùúûüÿœß" + "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜŸŒ")


def _windows_latin(head: bytes, detected: str) -> str | None:
    """A better codec than `detected` for Latin-script text in a legacy single-byte encoding.

    On short or accent-poor text the statistical detector picks almost any code page: a page
    declared UTF-8 but written in windows-1252 came out as cp775 (DOS Baltic: "Cafķ crĶme"), French
    prose as cp1257, Spanish as cp1250. Pages are written in web encodings, so for text that is
    Latin script (at most 30% of its letters outside ASCII, as decoded by cp1252) the choice is
    among the windows-125x family: cp1252 when its decoding has only Western European accented
    letters and nothing odd (`_oddities`), else the member whose decoding looks least wrong, the
    detector's own pick on a tie (it knows Turkish from Icelandic). Non-Latin text (Cyrillic,
    Greek, ...) and multi-byte detections keep `detected`. Limit: Icelandic (ð þ) in cp1252 whose
    detector says cp1254 reads as Turkish."""
    western = _strict(head, "cp1252")
    if western is None and _strict(head, detected) is None:
        return None
    try:
        if len(head.decode(detected, errors="replace")) != len(head):
            return None  # multi-byte (Shift_JIS, GBK, ...): not this question
    except LookupError:
        return None
    text = _MARKUP.sub(" ", western if western is not None else head.decode("cp1252", "replace"))
    letters = [c for c in text if c.isalpha()]
    accented = {c for c in letters if not c.isascii()}
    if not letters or sum(c in accented for c in letters) > _LATIN_MAX_NON_ASCII * len(letters):
        return None
    if western is not None and accented <= _WESTERN_LETTERS and _oddities(text) == 0:
        return "cp1252"  # French, German, Spanish, Nordic, ... exactly as written
    candidates = list(_WINDOWS_LATIN)
    if detected in _WINDOWS_LATIN:  # a tie goes to the detector's own pick
        candidates.remove(detected)
        candidates.insert(0, detected)
    best, best_odd = None, None
    for codec in candidates:
        decoded = _strict(head, codec)
        if decoded is None:
            continue
        odd = _oddities(_MARKUP.sub(" ", decoded))
        if best_odd is None or odd < best_odd:
            best, best_odd = codec, odd
    return best


_WORD_PUNCT = frozenset("’'-·")  # may sit between two letters in real text (don’t, l·l)


def _oddities(text: str) -> int:
    """How wrong a decoding looks: non-ASCII characters real prose does not have where they are,
    i.e. control or unassigned characters, a symbol or digit-like mark between two letters
    ("Za¿ó³æ" is Polish read as cp1252), an upper-case letter right after a lower-case one
    ("crĶme")."""
    odd = 0
    for i, c in enumerate(text):
        if c.isascii():
            continue
        category = unicodedata.category(c)
        if category[0] == "C":
            odd += 1
            continue
        before = text[i - 1] if i else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        if category[0] == "L":
            odd += c.isupper() and before.isalpha() and before.islower()
        elif c not in _WORD_PUNCT and before.isalpha() and after.isalpha():
            odd += 1
    return odd


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
    if body.isascii() and b"\x1b" not in body:  # ESC: ISO-2022-JP is 7-bit but not ASCII text
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
