"""The WARC/ARC reader, and the index of what an archive holds.

Why a module of its own: archives are where pages and images come from at scale, and real crawls
are damaged (a file cut off by a full disk, a corrupt gzip member, a `Content-Length` that lies).
This module frames records out of WARC 1.0/1.1 (ISO 28500) and ARC v1/v2 files, gzipped or not,
unwraps the HTTP message inside (chunked transfer-coding, gzip/deflate/brotli content-encoding) and
never raises out of a file: a bad record is a counted skip (`warc.corrupt_record`, ...) with a log
line that names the file and offset, and reading resumes at the next record (each record of a
.warc.gz is its own gzip member, ISO 28500 annex D, so the reader can resync on the next member).

- `iter_records` streams the records of one file (or of a byte range of a large `.warc.gz`, cut by
  `archive_ranges`); `read_record_at` reads one record again by its offset;
- `sniff_format` tells WARC, ARC and HTML apart by a file's first bytes;
- `ArchiveIndex` maps URLs to the records that captured them, so an image archived next to its page
  is read back from the archive instead of fetched (`m3w_builder.images`);
- `open_input` opens a local path or an fsspec URL.

Turning records into pages (which records are HTML pages, HTML files, URL lists, directories) is
`m3w_builder.sources`; decoding a page's bytes to text is `m3w_builder.charset`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urljoin

from m3w_builder.dedup import url_key
from m3w_builder.reasons import Counts, Skip

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Opening inputs: local paths and fsspec URLs
# --------------------------------------------------------------------------------------------------

_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_remote(path: str) -> bool:
    """True for an fsspec URL (s3://, gs://, https://, ...); a `file://` URL is a local path."""
    return bool(_URL_RE.match(path)) and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local input's path on disk: `file://` taken off, anything else unchanged."""
    return path[len("file://") :] if path.startswith("file://") else path


def remote_fs(path: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL and the path inside it."""
    import fsspec

    return fsspec.core.url_to_fs(path)


def open_input(path: str) -> BinaryIO:
    """A binary, seekable file object: plain `open` locally, fsspec for URLs (s3://, gs://,
    https://, ... whichever protocols fsspec and its plugins provide)."""
    if is_remote(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(local_path(path), "rb")


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
MAX_HEADER_BYTES = 1 << 16  # a WARC/HTTP header block longer than 64 KB is corrupt, not a header
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

    def read_line(self, limit: int = MAX_HEADER_BYTES) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                return self.read(end + 1)
            if len(self.buf) > limit or not self._fill():
                return self.read(min(len(self.buf), limit))

    def read_header_block(self, limit: int = MAX_HEADER_BYTES) -> bytes:
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
            self.breaks = [b for b in self.breaks if b[0] >= self.pos - MAX_HEADER_BYTES]


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
                block = stream.read(min(self.max_block, MAX_HEADER_BYTES))
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
    if looks_like_html(stripped):
        return "html"
    return "unknown"


_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<?xml")


def looks_like_html(head: bytes) -> bool:
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
        size = (
            os.path.getsize(path)
            if "://" not in path
            else int(remote_fs(path)[0].size(remote_fs(path)[1]))
        )
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
    block_cap = cap + MAX_HEADER_BYTES + (cap >> 6)  # + HTTP headers and chunk-size lines
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
# Archive first: images captured in the same WARC files as their pages
# --------------------------------------------------------------------------------------------------

# HTML pages are read by the page reader in file order; indexing them would only grow the index.
_NOT_INDEXED_TYPES = ("text/html", "application/xhtml")
_MAX_ARCHIVE_REDIRECTS = 5
# Bytes of each record's block the indexing pass keeps: enough for any HTTP header block, so
# status, Content-Type and Location are known without holding image or page bodies in memory.
_HEADER_BYTES = 16 * 1024
_INDEXED_RECORDS = frozenset({"response", "resource"})
_READ_RECORDS = frozenset({*_INDEXED_RECORDS, "revisit"})  # a revisit points at a payload


@dataclass(slots=True)
class ArchiveIndex:
    """URL → (file id, record offset) for the non-HTML responses of a set of WARC/ARC files.

    An image captured next to its page (a crawler that fetched page requisites, as Heritrix and
    Archive-It do) is read back from the archive instead of from the web: no network, no SSRF
    exposure, and the bytes the page had on the day it was crawled. Keys are `dedup.url_key` (no
    fragment, default port, percent-encoding, http/https and trailing-slash variants folded), so
    `<img src>` spellings find their capture. Archived redirects (3xx with Location) are followed
    within the archive. A revisit record (WARC/1.1 §6.7) has no payload of its own: crawlers that
    deduplicate by content write one when a URL's bytes equal an earlier capture's, which may be
    another URL in another file of the crawl. It resolves through its `WARC-Payload-Digest` to a
    record with that digest, else through `WARC-Refers-To-Target-URI`, among all the job's inputs
    (the per-unit indexes are merged before lookup). The index is plain dicts of str/int tuples:
    picklable, ~100 bytes per entry, so a Ray driver can build it and ship it to workers.

    Records are read with `iter_records` (WARC and ARC, gzipped or not; corrupt records are
    counted there as `warc.corrupt_record` and skipped). A build that already reads every record
    for its pages can call `add(record)` in that same pass instead of `build`."""

    files: list[str] = field(default_factory=list)
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # url_key → absolute Location
    digests: dict[str, tuple[int, int]] = field(default_factory=dict)  # payload digest → record
    revisits: dict[str, tuple[str, str]] = field(default_factory=dict)  # url_key → (digest, URI)
    failures: dict[str, int] = field(default_factory=dict)  # url_key → archived 4xx/5xx status

    @classmethod
    def build(cls, paths: list[str] | list[Any], counts: Counts | None = None) -> ArchiveIndex:
        index = cls()
        counts = counts if counts is not None else Counts()
        for path in paths:
            for record in iter_records(
                str(path), counts, types=_READ_RECORDS, max_body_bytes=_HEADER_BYTES
            ):
                index.add(record, counts)
        return index

    def add(self, record: ArchiveRecord, counts: Counts | None = None) -> bool:
        """Index one archive record if it can hold an image; True if it was indexed."""
        url = record.url
        if record.record_type not in _READ_RECORDS or not url.startswith(("http://", "https://")):
            return False
        key = url_key(url)
        if record.record_type == "revisit":
            if record.payload_digest or record.refers_to:
                self.revisits.setdefault(key, (record.payload_digest, record.refers_to))
                if counts is not None:
                    counts["archive.revisits"] += 1
            return False
        status = 200 if record.status is None else record.status  # resource records: no HTTP
        if 300 <= status < 400:
            location = next((v for k, v in record.headers.items() if k.lower() == "location"), "")
            if location:
                self.redirects.setdefault(key, urljoin(url, location.strip()))
            return False
        if status >= 400:  # the crawler was told the URL is gone: a dead link, not "not archived"
            self.failures.setdefault(key, status)
            return False
        if not 200 <= status < 300 or record.content_type.startswith(_NOT_INDEXED_TYPES):
            return False
        where = (self._file_id(record.source_file), record.offset)
        if record.payload_digest:
            self.digests.setdefault(record.payload_digest, where)
        if key in self.entries:
            return False  # the first capture wins
        self.entries[key] = where
        if counts is not None:
            counts["archive.indexed"] += 1
        return True

    def _file_id(self, path: str) -> int:
        # Files are few (one per input archive): a linear search keeps the record a plain list.
        if self.files and self.files[-1] == path:
            return len(self.files) - 1
        if path in self.files:
            return self.files.index(path)
        self.files.append(path)
        return len(self.files) - 1

    def merge(self, other: ArchiveIndex) -> ArchiveIndex:
        """Union of two indexes (built by different workers); entries of `self` win on conflict."""
        for key, (file_id, offset) in other.entries.items():
            if key not in self.entries:
                self.entries[key] = (self._file_id(other.files[file_id]), offset)
        for key, target in other.redirects.items():
            self.redirects.setdefault(key, target)
        for digest, (file_id, offset) in other.digests.items():
            if digest not in self.digests:
                self.digests[digest] = (self._file_id(other.files[file_id]), offset)
        for key, pointer in other.revisits.items():
            self.revisits.setdefault(key, pointer)
        for key, status in other.failures.items():
            self.failures.setdefault(key, status)
        return self

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, url: str) -> tuple[str, int] | None:
        """(archive path, record offset) of the capture of `url`, following archived redirects and
        revisit records (by payload digest, else by the URI they refer to)."""
        key = url_key(url)
        for _ in range(_MAX_ARCHIVE_REDIRECTS + 1):
            if key in self.entries:
                file_id, offset = self.entries[key]
                return self.files[file_id], offset
            if key in self.revisits:
                digest, refers_to = self.revisits[key]
                if digest in self.digests:
                    file_id, offset = self.digests[digest]
                    return self.files[file_id], offset
                if not refers_to or url_key(refers_to) == key:
                    return None
                key = url_key(refers_to)
                continue
            if key not in self.redirects:
                return None
            key = url_key(self.redirects[key])
        return None

    def failure(self, url: str) -> int | None:
        """The error status the crawl archived for `url` (a 404 page), if it has no capture."""
        return None if self.lookup(url) is not None else self.failures.get(url_key(url))

    def read(self, url: str, max_bytes: int | None = None) -> bytes | None:
        """The archived payload of `url` (HTTP body, transfer/content encodings removed), or None if
        it is not archived. Raises Skip("image.archive_error") for an unreadable record and
        Skip("image.too_large_bytes") past `max_bytes`."""
        where = self.lookup(url)
        if where is None:
            return None
        return self.read_at(where[0], where[1], max_bytes)

    @staticmethod
    def read_at(path: str, offset: int, max_bytes: int | None = None) -> bytes:
        """The payload of the record at `offset` of `path` (see `read`); shared with the build's
        partitioned index (pipelines/build/archive_parts.py)."""
        try:
            # bounded before reading: an archived 1 GiB image is never read whole to be refused
            record = read_record_at(path, offset, max_bytes=max_bytes)
        except Skip as e:
            raise Skip("image.archive_error", e.detail or e.code) from None
        except OSError as e:
            raise Skip("image.archive_error", f"{path}@{offset}: {e}") from None
        body = record.body
        if record.truncated or (max_bytes is not None and len(body) > max_bytes):
            raise Skip("image.too_large_bytes", f"archived {path}@{offset}: over {max_bytes} bytes")
        return body
