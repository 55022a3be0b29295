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
import fnmatch
import glob
import gzip
import io
import logging
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from m3w_builder.config import SourceConfig
from m3w_builder.document import RawPage
from m3w_builder.reasons import Counts, Skip

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


# --------------------------------------------------------------------------------------------------
# Archive records (WARC 1.0/1.1, ISO 28500; ARC v1/v2, Internet Archive 1996)
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ArchiveRecord:
    """One response/resource/revisit record of a WARC or ARC file, HTTP already unwrapped.

    `headers` are the HTTP response headers (for a resource record: its WARC Content-Type); `body`
    is the payload with chunked transfer-encoding and gzip/deflate content-encoding removed;
    `offset` is where the record starts in the file (the gzip member's offset in a .warc.gz), so
    `read_record_at(source_file, offset)` reads it again; `content_type` is the bare MIME type.
    """

    url: str
    headers: dict[str, str]
    body: bytes
    offset: int
    source_file: str
    date: str | None
    record_type: str
    content_type: str
    status: int | None
    truncated: bool = False  # the block exceeded max_body_bytes: body holds only its start
    # WARC-Payload-Digest, WARC-Refers-To-Target-URI and WARC-Refers-To-Date: what a revisit
    # record (WARC/1.1 §6.7) points at, and the digest that lets another record point here.
    payload_digest: str = ""
    refers_to: str = ""
    refers_to_date: str = ""


class _Corrupt(Exception):
    """A framing or decompression error inside an archive; the reader counts it and resyncs."""


GZIP_MAGIC = b"\x1f\x8b\x08"
_READ_SIZE = 1 << 16
_MAX_HEADER_BYTES = 1 << 16  # a WARC/HTTP header block longer than 64 KB is corrupt, not a header
_SETTLE_WINDOW = 1 << 16  # bytes inflated past a record to check its gzip member's CRC
# A record block is never held past this unless the caller asks for more (iter_records and
# read_record_at both default to it): blocks over it come back truncated, read to this size only.
MAX_RECORD_BYTES = 64_000_000
_PADDING = b"\r\n\x00 \t"
# A record starts at a line start with a WARC version line, or an ARC URL line
# ("URL IP-address Archive-date Content-type Archive-length", ARC v1; v2 adds fields before length).
# `(?m)^` makes a search try line starts only; each line is bounded so a search stays linear.
# WARC/0.17 and 0.18 (pre-ISO drafts) are still common in 2008-era Archive-It crawls.
_WARC_START = re.compile(rb"(?m)^WARC/[01]\.\d{1,2}\r?\n")
# Resync after damage also accepts a version line that is not at a line start (a record cut in
# half is followed directly by the next header) when a WARC header field follows it.
_WARC_RESYNC = re.compile(rb"WARC/[01]\.\d{1,2}\r?\n(?:WARC-|Content-)")
_ARC_START = re.compile(
    rb"(?m)^[A-Za-z][A-Za-z0-9+.\-]{0,30}:[^\r\n]{0,8192}? \d{14,18} [^ \r\n]{1,200}"
    rb"(?: [^ \r\n]{1,2000}){0,5} -?\w{1,20}\r?\n"
)
RECORD_TYPES = frozenset({"response", "resource"})


class _Stream:
    """The decompressed bytes of an archive, with the raw offset of every gzip member.

    A .warc.gz is a concatenation of gzip members, one per record (ISO 28500 annex D), but real
    files also hold one member for the whole file, records split over several members, garbage
    between members and corrupt or truncated members. This layer knows only bytes and member
    boundaries: it feeds the file through zlib member by member, remembers the raw offset of each
    member, and on a zlib error or garbage jumps to the next gzip magic by itself. It never drops
    decompressed bytes; instead it records a *break* (stream position + reason) where the output
    is discontinuous, and the record parser skips, counts and logs whatever record spans a break.
    """

    def __init__(self, raw: BinaryIO, gzipped: bool, base: int = 0) -> None:
        self.raw = raw
        self.gzipped = gzipped
        self.buf = bytearray()
        self.pos = 0  # stream position of buf[0]
        self.members: list[tuple[int, int]] = []  # (stream position, raw offset) of member starts
        self.breaks: list[tuple[int, str]] = []  # (stream position, reason)
        self.pending = b""  # raw bytes read but not yet fed to zlib
        self.raw_off = base  # raw offset of pending[0] (plain: of the next byte read)
        self.raw_eof = False
        self.last: int | None = None  # the last byte consumed (line-start test after a skip)
        self._z: Any = None  # the open zlib decompressor, None between members
        self._member_raw = base
        self._member_pos = 0
        self._size: int | None = None  # plain files: the raw size, once a skip needs it

    @property
    def end(self) -> int:
        return self.pos + len(self.buf)

    def _read_raw(self) -> bool:
        block = self.raw.read(_READ_SIZE)
        if not block:
            self.raw_eof = True
            return False
        self.pending += block
        return True

    def _break(self, reason: str) -> None:
        if not self.breaks or self.breaks[-1][0] != self.end:
            self.breaks.append((self.end, reason))

    def _fill(self) -> bool:
        """Append more output to buf; False once the file is exhausted."""
        if not self.gzipped:
            block = self.raw.read(_READ_SIZE)
            if not block:
                return False
            self.buf += block
            self.raw_off += len(block)
            return True
        start = len(self.buf)
        while len(self.buf) == start:
            if not self.pending and not self._read_raw():
                if self._z is not None:
                    self._break(f"gzip member at raw offset {self._member_raw} is truncated")
                    self._z = None
                return False
            if self._z is None and not self._open_member():
                continue
            self._decompress()
        return True

    def _open_member(self) -> bool:
        """At a member boundary: start a member at a gzip magic, else skip garbage to the next."""
        if len(self.pending) < len(GZIP_MAGIC) and not self.raw_eof:
            self._read_raw()
            return False
        if self.pending.startswith(GZIP_MAGIC):
            self._member_raw, self._member_pos = self.raw_off, self.end
            self.members.append((self.end, self.raw_off))
            self._z = zlib.decompressobj(31)
            return True
        junk = self.pending.lstrip(_PADDING)
        hit = self.pending.find(GZIP_MAGIC)
        if junk and not junk.startswith(GZIP_MAGIC[: len(junk)]):
            self._break(f"non-gzip bytes at raw offset {self.raw_off}")
        drop = hit if hit >= 0 else max(0, len(self.pending) - (0 if self.raw_eof else 2))
        self.raw_off += drop
        self.pending = self.pending[drop:]
        if self.raw_eof and hit < 0:
            self.pending = b""
        return False

    def _decompress(self) -> None:
        try:
            # Bounded output per call: 64 KB of deflate can expand to 64 MB of zeros.
            self.buf += self._z.decompress(self.pending, _READ_SIZE * 16)
        except zlib.error as exc:
            self._break(f"gzip member at raw offset {self._member_raw}: {exc}")
            self._z = None
            self._restart_after(self._member_raw + 1)
            return
        if self._z.eof:
            unused = self._z.unused_data
            self.raw_off += len(self.pending) - len(unused)
            self.pending = unused
            self._z = None
        else:
            tail = self._z.unconsumed_tail
            self.raw_off += len(self.pending) - len(tail)
            self.pending = tail

    def _restart_after(self, raw_offset: int) -> None:
        """Continue the magic search from `raw_offset` (inside the member that failed)."""
        if raw_offset >= self.raw_off:
            self.pending = self.pending[raw_offset - self.raw_off :]
            self.raw_off = raw_offset
            return
        self.raw.seek(raw_offset)
        self.raw_off, self.pending, self.raw_eof = raw_offset, b"", False

    def settle(self, since: int) -> None:
        """Finish the gzip member holding a record that began at stream position `since`, so that
        its CRC is checked before the record is handed out (not for a whole-file member).

        Only a member that began inside the record, and only `_SETTLE_WINDOW` bytes of it: the
        member open now may be the *next* record's, reached by the 16-byte peek at the record's
        tail, and inflating it to its end held a whole 1 GiB zero-filled image in memory. What is
        not settled here is checked when the stream gets there; a CRC error then counts against
        the record that spans it."""
        limit = len(self.buf) + _SETTLE_WINDOW
        while (
            self.gzipped
            and self._z is not None
            and since <= self._member_pos < self.pos
            and len(self.buf) <= limit
        ):
            if not self._fill():
                break

    def raw_offset(self, stream_pos: int) -> int:
        """Raw offset of a record starting at `stream_pos`: the start of the gzip member it
        begins in (exact for one-record members), or the byte offset in a plain file."""
        if not self.gzipped:
            return self.raw_off - (self.end - stream_pos)
        for spos, roff in reversed(self.members):
            if spos <= stream_pos:
                return roff
        return self.members[0][1] if self.members else 0

    def take_breaks(self, upto: int) -> list[tuple[int, str]]:
        """Remove and return the breaks at stream positions <= `upto` (each is reported once)."""
        taken = [b for b in self.breaks if b[0] <= upto]
        self.breaks = [b for b in self.breaks if b[0] > upto]
        return taken

    def fill_to(self, n: int) -> int:
        """Buffer at least n bytes (fewer at the end of the file); returns how many are buffered."""
        while len(self.buf) < n and self._fill():
            pass
        return len(self.buf)

    def peek(self, n: int) -> bytes:
        self.fill_to(n)
        return bytes(self.buf[:n])

    def read_line(self, limit: int = _MAX_HEADER_BYTES) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                return self.read(end + 1)
            if len(self.buf) > limit or not self._fill():
                return self.read(min(len(self.buf), limit))

    def read_header_block(self, limit: int = _MAX_HEADER_BYTES) -> bytes:
        """Bytes up to and including the blank line that ends a header block."""
        searched = 0
        while True:
            stop = min(len(self.buf), limit + 3)  # never scan a big buffer past a header's size
            crlf = self.buf.find(b"\n\r\n", searched, stop)
            lf = self.buf.find(b"\n\n", searched, crlf + 2 if crlf >= 0 else stop)
            if lf >= 0:
                return self.read(lf + 2)
            if crlf >= 0:
                return self.read(crlf + 3)
            if len(self.buf) > limit:
                raise _Corrupt(f"header block over {limit} bytes")
            searched = max(0, len(self.buf) - 2)
            if not self._fill():
                raise _Corrupt("header block ends before its blank line")

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        with memoryview(self.buf) as view:
            out = bytes(view[:n])  # one copy (a bytearray slice would make two)
        del self.buf[:n]
        self.pos += len(out)
        if out:
            self.last = out[-1]
        self._forget()
        return out

    def skip(self, n: int, stop_at_record_member: bool = False) -> int:
        """Discard n bytes without holding them (a large record we don't want); returns how many.

        A plain file is sought past, not read (a block that claims 10^17 bytes costs one seek).
        With `stop_at_record_member`, a .gz skip stops where a gzip member starts with a WARC
        record header: one record per member (ISO 28500 annex D) means the record being skipped
        cannot run on into it, so its length is a lie, found without inflating the rest."""
        done = 0
        while done < n:
            if not self.buf:
                done += self._seek_past(n - done)
                if not self._fill():
                    break
            take = min(n - done, len(self.buf))
            if stop_at_record_member:
                hit = self._record_member_in(self.pos, self.pos + take)
                if hit is not None:
                    take = hit - self.pos
                    n = done + take  # stop there
            if take:
                self.last = self.buf[take - 1]
            del self.buf[:take]
            self.pos += take
            done += take
        self._forget()
        return done

    def _seek_past(self, n: int) -> int:
        """Plain file, empty buffer: move the raw file position up to n bytes on without reading
        them; returns how far. The last byte of the span (and of the file) is still read, so that
        `last` stays true for the line-start test."""
        if self.gzipped or n <= _READ_SIZE:
            return 0
        jump = min(n - 1, self._raw_size() - self.raw_off - 1)
        if jump <= 0:
            return 0
        self.raw_off += jump
        self.pos += jump
        self.raw.seek(self.raw_off)
        return jump

    def _raw_size(self) -> int:
        if self._size is None:
            here = self.raw.tell()
            self._size = self.raw.seek(0, os.SEEK_END)
            self.raw.seek(here)
        return self._size

    def _record_member_in(self, lo: int, hi: int) -> int | None:
        """Stream position of the first gzip member starting in (lo, hi) whose output begins
        with a WARC record header, or None."""
        for spos, _ in self.members:
            if lo < spos < hi:
                self.fill_to(spos - self.pos + 16)
                at = spos - self.pos
                if _WARC_START.match(bytes(self.buf[at : at + 16])):
                    return spos
        return None

    def mark(self) -> tuple[Any, ...]:
        """Everything needed to come back to this stream position (`rewind`): after a record
        whose length lies, the reader resyncs from just after its header, never from the
        claimed end. A .gz mark keeps a copy of the inflater (`zlib` objects copy their state,
        ~40 KB) and of the buffered bytes; a plain mark is a file offset."""
        if not self.gzipped:
            return (self.pos, self.raw_off - len(self.buf), list(self.breaks), self.last)
        return (
            self.pos,
            bytes(self.buf),
            self.raw.tell(),
            self.pending,
            self.raw_off,
            self.raw_eof,
            self._z.copy() if self._z is not None else None,
            self._member_raw,
            self._member_pos,
            list(self.members),
            list(self.breaks),
            self.last,
        )

    def rewind(self, mark: tuple[Any, ...]) -> None:
        if not self.gzipped:
            self.pos, self.raw_off, breaks, self.last = mark
            self.buf = bytearray()
            self.breaks = breaks
            self.raw.seek(self.raw_off)
            return
        (self.pos, buf, file_pos, self.pending, self.raw_off, self.raw_eof, self._z,
         self._member_raw, self._member_pos, self.members, self.breaks, self.last) = mark  # fmt: skip
        self.buf = bytearray(buf)
        self.raw.seek(file_pos)

    def skip_padding(self) -> None:
        while True:
            if not self.buf and not self._fill():
                return
            stripped = len(self.buf) - len(self.buf.lstrip(_PADDING))
            if stripped < len(self.buf):
                self.skip(stripped)
                return
            self.skip(stripped)

    def seek_record_start(self, since: int, patterns: tuple[re.Pattern[bytes], ...]) -> bool:
        """Skip to the next record header (one of `patterns`) at a line start after stream
        position `since`; False at the end of the file."""
        if self.pos <= since:
            self.skip(since - self.pos + 1)
        while True:
            hits = [h for h in (self._line_start_match(p) for p in patterns) if h is not None]
            if hits:
                self.skip(min(hits))
                return True
            keep = 64  # a header line may straddle two fills
            if len(self.buf) > keep:
                self.skip(len(self.buf) - keep)
            if not self._fill():
                self.skip(len(self.buf))
                return False

    def _line_start_match(self, pattern: re.Pattern[bytes]) -> int | None:
        """First match of `pattern` that starts a line; buf[0] counts only if the byte before it
        was a newline or it begins a gzip member / follows a break (a fresh start)."""
        for match in pattern.finditer(self.buf):
            at = match.start()
            if (
                at > 0
                or pattern is _WARC_RESYNC
                or self.last in (None, 0x0A)
                or self._fresh_start()
            ):
                return at
        return None

    def _fresh_start(self) -> bool:
        return any(spos == self.pos for spos, _ in self.members) or any(
            spos == self.pos for spos, _ in self.breaks
        )

    def _forget(self) -> None:
        """Keep the member and break lists short: only what may still matter."""
        if len(self.members) > 64:
            older = [m for m in self.members if m[0] <= self.pos]
            self.members = older[-1:] + [m for m in self.members if m[0] > self.pos]
        if len(self.breaks) > 32:
            self.breaks = [b for b in self.breaks if b[0] >= self.pos - _MAX_HEADER_BYTES]


# --------------------------------------------------------------------------------------------------
# Record parsing: WARC and ARC headers, then the HTTP message inside
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _RawRecord:
    """A framed record before HTTP unwrapping: its WARC (or ARC-derived) headers and block."""

    stream_pos: int
    record_type: str
    headers: dict[str, str]
    block: bytes
    truncated: bool = False


_HEADER_LINE = re.compile(r"^([^:\r\n]+):[ \t]*([^\r\n]*?)[ \t]*\r?$", re.M)


def _parse_header_block(block: bytes) -> dict[str, str]:
    """`Name: value` lines (RFC 9112 §5; WARC §4) into a dict; continuation lines are folded.
    Bytes are read as UTF-8 where valid, else Latin-1 (RFC 9110 §5.5: header octets are opaque)."""
    text = _header_text(block)
    if "\n " not in text and "\n\t" not in text:  # no obsolete line folding: one regex pass
        return {name.strip(): value for name, value in _HEADER_LINE.findall(text)}
    headers: dict[str, str] = {}
    last = None
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        last = name.strip()
        headers[last] = value.strip()
    return headers


def _header_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _get(headers: dict[str, str], name: str, default: str = "") -> str:
    lname = name.lower()
    for key, value in headers.items():
        if key.lower() == lname:
            return value
    return default


class _Reader:
    """Frames records out of a `_Stream`: one WARC or ARC record per call to `next_record`."""

    def __init__(
        self, stream: _Stream, max_block: int | None, check_oversized: bool = True
    ) -> None:
        self.stream = stream
        self.max_block = MAX_RECORD_BYTES if max_block is None else max_block
        # False (random access): a block over max_block is not skipped through to check its end;
        # the caller only wants to know it is too large.
        self.check_oversized = check_oversized
        self.arc_version = 1
        self.patterns: tuple[re.Pattern[bytes], ...] = (_WARC_RESYNC, _ARC_START)
        self.gaps: list[str] = []  # skipped non-record bytes, reported by the caller
        self.start = 0  # stream position of the record being read

    def next_record(self) -> _RawRecord | None:
        """The next record; None at the end; raises _Corrupt (stream left at the bad record)."""
        stream = self.stream
        self.start = stream.pos
        stream.skip_padding()
        head = stream.peek(16)
        if not head:
            return None
        start = self.start = stream.pos
        if _WARC_START.match(stream.peek(16)):
            record = self._warc(start)
            self.patterns = (_WARC_RESYNC,)  # resync looks for what this file is made of
        else:
            record = self._arc(start)
            self.patterns = (_ARC_START,)
        stream.settle(start)
        inside = []
        for spos, reason in stream.take_breaks(stream.pos):
            if spos <= start:
                self.gaps.append(reason)  # garbage before this record: the record is fine
            else:
                inside.append(reason)
        if inside:
            raise _Corrupt(inside[0])
        return record

    def resync(self, start: int) -> bool:
        """After a bad record that began at `start`: find the next record header after it."""
        return self.stream.seek_record_start(start, self.patterns)

    def _block(self, length: int, tail_ok: Callable[[bytes], bool]) -> tuple[bytes, bool]:
        """The record block, consumed only if the bytes after it look like a record end, so that
        after a wrong length the resync searches from inside this block (where the next record
        may sit) instead of after it.

        Blocks over max_block are not held: the first max_block bytes are kept (enough for the
        HTTP headers) and the rest is skipped (sought past in a plain file, inflated in pieces in
        a .gz) to check that a record end follows. If none does (a Content-Length of 10^17, or
        6 MB more than the record has) the stream goes back to just after the header, so the
        resync finds the records the lie would have swallowed."""
        stream = self.stream
        if length > self.max_block:
            if not self.check_oversized:
                block = stream.read(min(self.max_block, _MAX_HEADER_BYTES))
                return block, True
            mark = stream.mark()
            block = stream.read(self.max_block)
            rest = length - self.max_block
            got = len(block) + stream.skip(rest, stop_at_record_member=True)
            if got < length:
                stream.rewind(mark)
                raise _Corrupt(f"record block cut short ({got} of {length} bytes)")
            if not tail_ok(stream.peek(16)):
                stream.rewind(mark)
                raise _Corrupt(f"record not followed by a record end (length {length} wrong?)")
            return block, True
        have = stream.fill_to(length + 16)
        if have < length:
            raise _Corrupt(f"record block cut short ({have} of {length} bytes)")
        if not tail_ok(bytes(stream.buf[length : length + 16])):
            raise _Corrupt(f"record not followed by a record end (length {length} wrong?)")
        return stream.read(length), False

    def _warc(self, start: int) -> _RawRecord:
        head = self.stream.read_header_block()
        headers = _parse_header_block(head[head.find(b"\n") + 1 :])  # after the version line
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            length = int(lower.get("content-length", ""))
        except ValueError as exc:
            raise _Corrupt(f"bad Content-Length {lower.get('content-length')!r}") from exc
        if length < 0:
            raise _Corrupt(f"negative Content-Length {length}")
        block, truncated = self._block(length, _warc_tail_ok)
        record_type = lower.get("warc-type", "unknown").lower()
        return _RawRecord(start, record_type, headers, block, truncated)

    def _arc(self, start: int) -> _RawRecord:
        """ARC (Internet Archive, 1996): a URL line "URL IP date content-type length" (v1; v2
        adds result-code, checksum, location, offset and filename before the length), then
        `length` bytes and a newline. URLs may contain spaces, so fields are taken from the right."""
        stream = self.stream
        line = stream.read_line()
        text = _header_text(line).rstrip("\r\n")
        fields = text.split(" ")
        if not _ARC_START.match(line) or len(fields) < 5:
            raise _Corrupt(f"neither a WARC nor an ARC record header: {line[:60]!r}")
        try:
            length = int(fields[-1])
        except ValueError as exc:
            raise _Corrupt(f"bad ARC length {fields[-1]!r}") from exc
        if length < 0:
            raise _Corrupt(f"negative ARC length {length}")
        v2 = self.arc_version == 2 and len(fields) >= 10
        n_after_url = 9 if v2 else 4
        url = " ".join(fields[: len(fields) - n_after_url])
        date, mime = fields[-n_after_url + 1], fields[-n_after_url + 2]
        block, truncated = self._block(length, _arc_tail_ok)
        if url.startswith("filedesc:"):
            version = block.split(b"\n", 1)[0].split(b" ", 1)[0]
            self.arc_version = 2 if version == b"2" else 1
            record_type = "warcinfo"
        else:
            record_type = "response"
        headers = {
            "WARC-Type": record_type,
            "WARC-Target-URI": url,
            "WARC-Date": _arc_date(date),
            "Content-Type": mime,
            "Content-Length": str(length),
        }
        return _RawRecord(start, record_type, headers, block, truncated)


def _warc_tail_ok(tail: bytes) -> bool:
    """ISO 28500 §4: a record ends with CRLF CRLF. A different tail means Content-Length is
    wrong and the block holds the wrong bytes. Tolerated: end of file, padding (CR, LF, NUL,
    space: some writers pad), or the next record's header right away."""
    rest = tail.lstrip(_PADDING)
    return tail.startswith(b"\r\n\r\n") or not rest or bool(_WARC_START.match(rest))


def _arc_tail_ok(tail: bytes) -> bool:
    """An ARC record ends with a newline (or the file ends)."""
    return not tail or tail[:1] in (b"\n", b"\r")


def _arc_date(stamp: str) -> str:
    """ARC's 14-digit `YYYYMMDDhhmmss` as the ISO 8601 form WARC-Date uses."""
    digits = stamp[:14]
    if len(digits) < 14 or not digits.isdigit():
        return stamp
    return (
        f"{digits[0:4]}-{digits[4:6]}-{digits[6:8]}T{digits[8:10]}:{digits[10:12]}:{digits[12:14]}Z"
    )


def _dechunk(body: bytes) -> bytes | None:
    """Undo HTTP/1.1 chunked transfer-coding (RFC 9112 §7.1); None if the sizes don't parse."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\n", pos)
        if eol < 0:
            return bytes(out) if out else None  # a missing last chunk: keep what arrived
        size_text = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        start = eol + 1
        out += body[start : start + size]
        pos = start + size
        if body[pos : pos + 2] == b"\r\n":
            pos += 2
        elif body[pos : pos + 1] == b"\n":
            pos += 1


MAX_DECODED_BYTES = 64_000_000  # a content-encoded body is never inflated past this (bombs)


def _decode_content(body: bytes, encoding: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    """Undo Content-Encoding gzip / deflate / br (RFC 9110 §8.4.1), in reverse order of a list
    (`gzip, br`). Output stops after `limit` + 1 bytes. A body cut short still yields
    what decompressed (crawlers truncate large pages); a body that is not what it claims raises."""
    for coding in reversed([c.strip().lower() for c in encoding.split(",")]):
        if coding in ("", "identity", "none"):
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            body = _inflate(body, coding, limit)
        elif coding == "br":
            body = _unbrotli(body, limit)
        else:
            raise _Corrupt(f"unsupported Content-Encoding {encoding!r}")
    return body


def _inflate(body: bytes, coding: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    # "deflate" is zlib-wrapped per RFC 9110 but raw deflate on many servers: try both.
    for wbits in (47, -15) if coding == "deflate" else (31,):
        z = zlib.decompressobj(wbits)
        try:
            out = z.decompress(body, limit + 1)
        except zlib.error:
            continue
        if out or z.eof:
            return out
    raise _Corrupt(f"body does not decode as Content-Encoding {coding}")


def _unbrotli(body: bytes, limit: int = MAX_DECODED_BYTES) -> bytes:
    from fastwarc.stream_io import BrotliReader  # FastWARC bundles brotli; no extra dependency

    out = bytearray()
    try:
        reader = BrotliReader(io.BytesIO(body))
        while len(out) <= limit:
            chunk = reader.read(min(_READ_SIZE * 16, limit + 1 - len(out)))
            if not chunk:
                break
            out += chunk
    except OSError as exc:
        raise _Corrupt(f"body does not decode as brotli: {exc}") from exc
    return bytes(out)


def _unwrap_http(
    raw: _RawRecord, max_decoded: int | None = None
) -> tuple[int | None, dict[str, str], bytes]:
    """(status, HTTP headers, payload) of a response block; resources keep their block."""
    block = raw.block
    wrapped = "application/http" in _get(raw.headers, "Content-Type").lower()
    if not (wrapped or (raw.record_type == "response" and block.startswith(b"HTTP/"))):
        return None, {"Content-Type": _get(raw.headers, "Content-Type")}, block
    end = block.find(b"\r\n\r\n")
    sep = 4
    lf_end = block.find(b"\n\n")
    if end < 0 or (0 <= lf_end < end):
        end, sep = lf_end, 2
    if end < 0:
        head, body = block, b""
    else:
        head, body = block[:end], block[end + sep :]
    lines = head.split(b"\n")
    status_line = _header_text(lines[0]).strip()
    parts = status_line.split(" ", 2)
    if not parts[0].startswith("HTTP/"):
        raise _Corrupt(f"response block without an HTTP status line: {status_line[:60]!r}")
    try:
        status: int | None = int(parts[1])
    except (IndexError, ValueError) as exc:
        raise _Corrupt(f"bad HTTP status line {status_line[:60]!r}") from exc
    headers = _parse_header_block(b"\n".join(lines[1:]))
    if raw.truncated or raw.record_type == "revisit":
        return status, headers, body  # a revisit has no payload to decode (WARC §6.7)
    if "chunked" in _get(headers, "Transfer-Encoding").lower():
        dechunked = _dechunk(body)
        body = dechunked if dechunked is not None else body  # a mislabelled plain body stays
    content_encoding = _get(headers, "Content-Encoding")
    if content_encoding:
        max_decoded = MAX_DECODED_BYTES if max_decoded is None else max_decoded
        body = _decode_content(body, content_encoding, max_decoded)
        if len(body) > max_decoded:
            body, raw.truncated = body[:max_decoded], True
    return status, headers, body


def _to_archive_record(
    raw: _RawRecord, offset: int, source_file: str, max_decoded: int | None = None
) -> ArchiveRecord:
    if raw.record_type in ("response", "resource", "revisit"):
        status, http_headers, body = _unwrap_http(raw, max_decoded)
    else:
        status, http_headers, body = None, {}, raw.block
    if raw.record_type == "revisit":
        status = None if not http_headers else status
    mime = _get(http_headers, "Content-Type").split(";", 1)[0].strip().lower()
    return ArchiveRecord(
        url=_clean_target_uri(_get(raw.headers, "WARC-Target-URI")),
        headers=http_headers,
        body=body,
        offset=offset,
        source_file=source_file,
        date=_get(raw.headers, "WARC-Date") or None,
        record_type=raw.record_type,
        content_type=mime,
        status=status,
        truncated=raw.truncated,
        payload_digest=_get(raw.headers, "WARC-Payload-Digest").strip(),
        refers_to=_clean_target_uri(_get(raw.headers, "WARC-Refers-To-Target-URI")),
        refers_to_date=_get(raw.headers, "WARC-Refers-To-Date").strip(),
    )


def _clean_target_uri(uri: str) -> str:
    """wget writes `<http://...>` (WARC 1.0 grammar); spaces inside a URI are percent-encoded."""
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    return uri.replace(" ", "%20")


# --------------------------------------------------------------------------------------------------
# Archive iteration and random access
# --------------------------------------------------------------------------------------------------


def sniff_format(path: str) -> str:
    """What a file is, by its first bytes (extensions lie: `.warc.gz.bad`, `.arc` that is gzipped):
    "warc", "arc", "html" or "unknown". Gzip is looked through."""
    try:
        with open_input(path) as f:
            head = f.read(4096)
    except OSError:
        return "unknown"
    if head.startswith(GZIP_MAGIC):
        z = zlib.decompressobj(31)
        try:
            head = z.decompress(head, 4096)
        except zlib.error:
            return "unknown"
    stripped = head.lstrip(_PADDING)
    if _WARC_START.match(stripped):
        return "warc"
    if stripped.startswith(b"filedesc://") or _ARC_START.match(stripped):
        return "arc"
    if _looks_like_html(stripped):
        return "html"
    return "unknown"


_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<?xml")


def _looks_like_html(head: bytes) -> bool:
    """WHATWG MIME sniffing §7.1 "identify an unknown MIME type", HTML branch: leading tags."""
    text = head.lstrip(b"\xef\xbb\xbf" + _PADDING).lower()
    text = re.sub(rb"^(<!--.*?-->\s*)+", b"", text, flags=re.S)
    return text.startswith(_HTML_SNIFF)


def iter_records(
    path: str,
    counts: Counts,
    types: frozenset[str] | set[str] = RECORD_TYPES,
    max_body_bytes: int | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[ArchiveRecord]:
    """Response/resource records (or `types`) of one WARC or ARC file, gzipped or not.

    Never raises for bad data: a corrupt record is counted as `warc.corrupt_record` and logged
    with file and offset, and reading resumes at the next record header / gzip member; a file
    that can't be opened counts `warc.unreadable`. Blocks over `max_body_bytes` are not held in
    memory: the record comes back with `truncated=True` and only the start of its block (enough
    for the HTTP headers), and the caller decides by size, e.g. `html.too_large`. None means
    MAX_RECORD_BYTES: no block is ever held whole past that.

    A record whose length lies (too long, too short, 10^17, negative, not a number) costs that
    record alone: the reader resyncs from just after its header (`_Reader._block`).

    `byte_range=(start, stop)` reads only the records that *start* in [start, stop) of a
    `.warc.gz` (one gzip member per record, ISO 28500 annex D): reading begins at the first member
    at or after `start` whose first bytes are a WARC header, so consecutive ranges read every
    record exactly once and a large archive can be split into many tasks (`archive_ranges`).
    """
    try:
        raw = open_input(path)
    except OSError as exc:
        counts["warc.unreadable"] += 1
        logger.warning("warc.unreadable %s: %s", path, exc)
        return
    with raw:
        head = raw.read(_READ_SIZE)
        raw.seek(0)
        base, stop = 0, None
        if byte_range is not None:
            base, stop = byte_range
            if base > 0:
                found = _next_warc_member(raw, base, stop)
                if found is None:
                    return  # no record starts in this range (a one-member file: range 0 has all)
                base = found
            raw.seek(base)
        stream = _Stream(raw, gzipped=_is_gzipped(head), base=base)
        reader = _Reader(stream, max_block=max_body_bytes)
        yield from _read_all(reader, path, counts, types, stop)


def _is_gzipped(head: bytes) -> bool:
    """Gzip magic first; or, when the file starts with damage, a gzip magic in the first 64 KB
    and no plain WARC/ARC header there."""
    if head.startswith(GZIP_MAGIC):
        return True
    if _WARC_RESYNC.search(head) or _ARC_START.search(head):
        return False
    return GZIP_MAGIC in head


def _next_warc_member(raw: BinaryIO, start: int, stop: int) -> int | None:
    """The raw offset of the first gzip member at or after `start` (and before `stop`) that
    inflates to a WARC header; None if there is none."""
    pos = start
    while pos < stop:
        raw.seek(pos)
        block = raw.read(_READ_SIZE + len(GZIP_MAGIC) - 1)  # a magic may straddle two reads
        if not block:
            return None
        i = block.find(GZIP_MAGIC)
        while 0 <= i and pos + i < stop:
            if _member_is_warc(raw, pos + i):
                return pos + i
            i = block.find(GZIP_MAGIC, i + 1)
        pos += _READ_SIZE
    return None


def _member_is_warc(raw: BinaryIO, offset: int) -> bool:
    here = raw.tell()
    try:
        raw.seek(offset)
        head = raw.read(4096)
        try:
            text = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error:
            return False
        return bool(_WARC_START.match(text))
    finally:
        raw.seek(here)


def archive_ranges(path: str, split_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about `split_bytes` covering a `.warc.gz` of more than that (one range for
    anything smaller, a plain WARC or an ARC: a record boundary cannot be told from content
    there). Each range's task reads the records that start in it (`iter_records`)."""
    if split_bytes <= 0 or not path.lower().endswith(".warc.gz"):
        return [(0, 1 << 62)]
    try:
        size = os.path.getsize(path) if "://" not in path else int(_fs(path)[0].size(_fs(path)[1]))
    except OSError:
        return [(0, 1 << 62)]
    if size <= split_bytes:
        return [(0, 1 << 62)]
    cuts = list(range(0, size, split_bytes))
    return [(a, b) for a, b in zip(cuts, [*cuts[1:], 1 << 62], strict=True)]


def _read_all(
    reader: _Reader,
    path: str,
    counts: Counts,
    types: frozenset[str] | set[str],
    stop: int | None = None,
) -> Iterator[ArchiveRecord]:
    stream = reader.stream
    while True:
        try:
            record = reader.next_record()
        except _Corrupt as exc:
            start = reader.start
            counts["warc.corrupt_record"] += 1
            logger.warning("warc.corrupt_record %s@%d: %s", path, stream.raw_offset(start), exc)
            found = reader.resync(start)
            stream.take_breaks(stream.pos)  # damage inside the skipped span is this one count
            if not found:
                return
            continue
        except OSError as exc:  # the file went away or an fsspec read failed mid-way
            counts["warc.unreadable"] += 1
            logger.warning("warc.unreadable %s@%d: %s", path, stream.raw_offset(reader.start), exc)
            return
        _count_gaps(reader, path, counts)
        if record is None:
            _count_gaps(reader, path, counts, final=True)
            return
        offset = stream.raw_offset(record.stream_pos)
        if stop is not None and offset >= stop:
            return  # the next range's first record
        counts["warc.records"] += 1
        if record.record_type not in types:
            continue
        try:
            archived = _to_archive_record(record, offset, path)
        except _Corrupt as exc:
            counts["warc.undecodable_body"] += 1
            logger.warning("warc.undecodable_body %s@%d: %s", path, offset, exc)
            continue
        yield archived


def _count_gaps(reader: _Reader, path: str, counts: Counts, final: bool = False) -> None:
    """Bytes between records that were no record (garbage, a bad gzip member): one count each."""
    if final:
        reader.gaps.extend(reason for _, reason in reader.stream.take_breaks(1 << 62))
    for reason in reader.gaps:
        counts["warc.corrupt_record"] += 1
        logger.warning("warc.corrupt_record %s: %s", path, reason)
    reader.gaps.clear()


def read_record_at(path: str, offset: int, max_bytes: int | None = None) -> ArchiveRecord:
    """The record that starts at `offset` (an ArchiveRecord.offset from `iter_records`).

    Random access for the images stage: an image archived in the same WARC is read by offset
    instead of fetched. Works for per-record gzip members and plain files; raises
    `Skip("warc.corrupt_record")` when no readable record starts there.

    Bounded by `max_bytes` (default MAX_RECORD_BYTES) before anything is read: a record whose
    block is larger, or whose payload inflates past it (Content-Encoding), comes back with
    `truncated=True` after reading at most its first 64 KB (the HTTP headers), so the caller
    skips it by size without the whole archived image ever being in memory.
    """
    cap = MAX_RECORD_BYTES if max_bytes is None else max_bytes
    block_cap = cap + _MAX_HEADER_BYTES + (cap >> 6)  # + HTTP headers and chunk-size lines
    with open_input(path) as raw:
        raw.seek(offset)
        head = raw.read(len(GZIP_MAGIC))
        raw.seek(offset)
        stream = _Stream(raw, gzipped=head.startswith(GZIP_MAGIC), base=offset)
        reader = _Reader(stream, max_block=block_cap, check_oversized=False)
        try:
            record = reader.next_record()
            if record is None:
                raise _Corrupt("end of file")
            return _to_archive_record(record, offset, path, max_decoded=cap)
        except _Corrupt as exc:
            raise Skip("warc.corrupt_record", f"{path}@{offset}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# Pages: archives, HTML files, directories
# --------------------------------------------------------------------------------------------------

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Servers label HTML with these when they don't know better; the body decides (WHATWG sniffing).
_UNLABELLED = frozenset({"", "unk", "unknown", "no-type", "application/octet-stream"})
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz", ".xhtml.gz")
_PAGE_TYPES = frozenset({"response", "resource", "revisit"})


def is_html_record(record: ArchiveRecord) -> bool:
    if record.content_type in HTML_TYPES:
        return True
    return record.content_type in _UNLABELLED and _looks_like_html(record.body[:1024])


def iter_pages(
    path: str,
    counts: Counts,
    config: SourceConfig | None = None,
    on_record: Callable[[ArchiveRecord], object] | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[RawPage]:
    """Every HTML page in `path`: a WARC/ARC file (gzipped or not, told by its bytes), an HTML
    file (.html/.htm/.xhtml, optionally .gz) or a directory (recursively, in sorted order so that
    a rebuild sees pages in the same order). Everything else is a counted skip.

    `on_record` sees every response/resource/revisit record of an archive in the same pass (the
    build indexes the archived images with it: one read of each archive, each record counted
    once)."""
    config = config or SourceConfig()
    if _is_dir(path):
        for child in _walk(path):
            yield from iter_pages(child, counts, config, on_record)
        return
    kind = sniff_format(path)
    if kind in ("warc", "arc") or (kind == "unknown" and path.lower().endswith(ARCHIVE_SUFFIXES)):
        # An archive whose first record is damaged still goes to the reader, which resyncs.
        yield from _archive_pages(path, counts, config, on_record, byte_range)
    elif kind == "html" or path.lower().endswith(HTML_SUFFIXES):
        page = _file_page(path, counts, config)
        if page is not None:
            yield page
    elif _exists(path):
        counts["input.unsupported"] += 1
        logger.info("input.unsupported %s: neither WARC/ARC nor HTML", path)
    else:
        counts["warc.unreadable"] += 1
        logger.warning("warc.unreadable %s: no such file", path)


def _archive_pages(
    path: str,
    counts: Counts,
    config: SourceConfig,
    on_record: Callable[[ArchiveRecord], object] | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[RawPage]:
    # Hold at most max_html_bytes (+ room for HTTP headers) of any record: a 2 GB video record
    # is skipped without being read into memory.
    limit = config.max_html_bytes + _MAX_HEADER_BYTES
    records = iter_records(
        path, counts, types=_PAGE_TYPES, max_body_bytes=limit, byte_range=byte_range
    )
    for record in records:
        counts["yield.read"] += 1
        if on_record is not None:
            on_record(record)
        code = _page_skip_code(record, config)
        if code is not None:
            counts[code] += 1
            logger.debug("%s %s@%d %s", code, path, record.offset, record.url)
            continue
        counts["warc.html_pages"] += 1
        yield RawPage(
            url=record.url,
            body=record.body,
            headers=record.headers,
            source_file=path,
            source_offset=record.offset,
            date=record.date,
        )


def _page_skip_code(record: ArchiveRecord, config: SourceConfig) -> str | None:
    """Why an archive record is not a page (None: it is one). One early return per rule."""
    if record.record_type == "revisit":
        return "warc.revisit"
    if record.status is not None and record.status != 200:
        return "warc.http_status"
    if not is_html_record(record):
        return "warc.not_html"
    if record.truncated or len(record.body) > config.max_html_bytes:
        return "html.too_large"
    if not record.body.strip():
        return "html.empty"
    return None


def _file_page(path: str, counts: Counts, config: SourceConfig) -> RawPage | None:
    """A single HTML file (gzip is looked through, never read past max_html_bytes: a gzip bomb
    costs at most that much memory)."""
    counts["yield.read"] += 1
    try:
        with open_input(path) as raw:
            head = raw.read(len(GZIP_MAGIC))
            raw.seek(0)
            stream: Any = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw
            body = stream.read(config.max_html_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        counts["html.unreadable"] += 1
        logger.warning("html.unreadable %s: %s", path, exc)
        return None
    if len(body) > config.max_html_bytes:
        counts["html.too_large"] += 1
        return None
    if not body.strip():
        counts["html.empty"] += 1
        return None
    counts["html.files"] += 1
    return RawPage(url=_file_url(path), body=body, headers={}, source_file=path, source_offset=0)


def read_html_file(path: str, counts: Counts, config: SourceConfig | None = None) -> RawPage | None:
    """One HTML file as the build reads it (`.gz` looked through, at most max_html_bytes + 1
    bytes inflated), or None with the reason counted (`html.too_large`, `html.empty`,
    `html.unreadable`): `m3w extract` of a single file uses this, whatever its name."""
    return _file_page(path, counts, config or SourceConfig())


def _file_url(path: str) -> str:
    """A local file's page URL is its file:// URI (stable key, and a base for relative srcs)."""
    if "://" in path:
        return path
    return Path(path).resolve().as_uri()


# --------------------------------------------------------------------------------------------------
# Inputs: paths, globs, directories, fsspec URLs, URL lists
# --------------------------------------------------------------------------------------------------

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def _is_url(path: str) -> bool:
    return bool(_URL_RE.match(path)) and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _fs(path: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL and the path inside it."""
    import fsspec

    return fsspec.core.url_to_fs(path)


def _is_dir(path: str) -> bool:
    if _is_url(path):
        try:
            fs, inner = _fs(path)
            return bool(fs.isdir(inner))
        except (ImportError, ValueError, OSError):
            return False
    return os.path.isdir(_local(path))


def _exists(path: str) -> bool:
    if _is_url(path):
        try:
            fs, inner = _fs(path)
            return bool(fs.exists(inner))
        except (ImportError, ValueError, OSError):
            return False
    return os.path.exists(_local(path))


def _walk(path: str) -> list[str]:
    """Files under a directory, recursively, sorted (hidden files and dirs are left out)."""
    if _is_url(path):
        fs, inner = _fs(path)
        return [fs.unstrip_protocol(p) for p in sorted(fs.find(inner)) if not _hidden(p)]
    out = []
    for root, dirs, files in os.walk(_local(path)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return sorted(out)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def open_input(path: str) -> BinaryIO:
    """A binary, seekable file object: plain `open` locally, fsspec for URLs (s3://, gs://,
    https://, ... whichever protocols fsspec and its plugins provide)."""
    if _is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(_local(path), "rb")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Input arguments → a sorted, de-duplicated list of files and directories.

    Each input may be a local path, a directory (kept as one input; `iter_pages` walks it), a
    glob (`crawl/*.warc.gz`, `**` recursive) or an fsspec URL (optionally with a glob). An input
    that matches nothing raises ValueError naming it, so a typo is an error and not an empty job.
    """
    out: list[str] = []
    for item in inputs:
        matches = _expand_one(item)
        if not matches:
            raise ValueError(f"input {item!r} matches no file or directory")
        out.extend(m for m in matches if m not in out)
    return out


def _expand_one(item: str) -> list[str]:
    has_glob = any(c in item for c in "*?[")
    if _is_url(item):
        try:
            fs, inner = _fs(item)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"input {item!r}: no fsspec filesystem for it ({exc})") from exc
        if has_glob:
            return [fs.unstrip_protocol(p) for p in sorted(fs.glob(inner))]
        return [item] if fs.exists(inner) else []
    local = _local(item)
    if has_glob:
        return sorted(p for p in glob.glob(local, recursive=True) if not fnmatch.fnmatch(p, "*/.*"))
    return [local] if os.path.exists(local) else []


URL_LIST_SUFFIXES = (".txt", ".urls", ".txt.gz", ".urls.gz")


def iter_url_list(path: str) -> Iterator[str]:
    """URLs from a list file (gzipped or not): one per line; blank lines and `#` comments are
    ignored, as are trailing comments after whitespace (`http://a.com/  # seen twice`)."""
    with open_input(path) as raw:
        head = raw.read(len(GZIP_MAGIC))
        raw.seek(0)
        lines: Any = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw
        for raw_line in lines:
            line = raw_line.decode("utf-8", errors="replace").strip()
            if not line or line.startswith("#"):
                continue
            url = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            if url:
                yield url
