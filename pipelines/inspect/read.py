"""Streaming access to shards for `m3w inspect`: targets, a bounded tar reader, samples.

Why our own tar reader instead of `tarfile` (which `m3w_builder.shards.iter_shard` uses): inspection must
say *where* a shard is broken ("000003.tar: truncated at byte 1,234,567 inside member k.2.jpg"), check
header checksums and the end-of-archive marker, and skip image bytes it does not need (`stats` reads a
16-byte head to sniff the format and seeks past the rest). `tarfile` in stream mode reports neither offsets
nor which member was cut. The format is POSIX ustar (IEEE 1003.1-1988 §10.1.1, as written by
`ShardWriter`), plus the pax `x` and GNU `L` long-name headers other writers emit. Memory is bounded by
samples, not shards: the reader groups one sample's members (DESIGN §3: one sample = one document) and,
while the caller still holds the sample just yielded, reads the next one, so the peak is two samples'
bytes (tests/test_inspect.py measures it); `stats` reads 16-byte image heads only. A 10 GB shard set
therefore streams in constant memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from m3w_builder.document import (
    IMAGES_MEMBER,
    SCHEMA,
    RecordError,
    parse_record_json,
    read_shard_sample,
)

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")  # ustar typeflags of regular files (7: contiguous file)
# `{000000..000099}` (zero-padded numeric range, as webdataset/braceexpand accept) or `{a,b,c}`.
_BRACE_RE = re.compile(r"\{([^{}]*)\}")
_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class TarFormatError(Exception):
    """A shard is not a readable tar: carries the shard, the byte offset where reading failed and a
    problem code (`tar.truncated`, `tar.corrupt`: a checksum fails, `tar.bad_header`: a header
    whose checksum holds but whose fields cannot be true, e.g. a pax record of length 0 or a size
    of 2^80 bytes)."""

    def __init__(self, shard: str, offset: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{shard}: {message} (at byte {offset:,})")
        self.shard = shard
        self.offset = offset
        self.message = message
        self.code = code or ("tar.truncated" if "truncated" in message else "tar.corrupt")


# ------------------------------------------------------------------------------------------- targets


def expand_braces(pattern: str) -> list[str]:
    """Expand `{a..b}` ranges (keeping zero padding) and `{x,y}` lists, left to right, like braceexpand.

    `shards/{000000..000002}.tar` → `shards/000000.tar`, `shards/000001.tar`, `shards/000002.tar`.
    """
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACE_RE.finditer(pattern):
        parts.append([pattern[pos : m.start()]])
        body = m.group(1)
        rng = _RANGE_RE.match(body)
        if rng:
            lo, hi = int(rng.group(1)), int(rng.group(2))
            width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
            step = 1 if hi >= lo else -1
            parts.append([str(i).zfill(width) for i in range(lo, hi + step, step)])
        elif "," in body:
            parts.append(body.split(","))
        else:
            parts.append([m.group(0)])
        pos = m.end()
    parts.append([pattern[pos:]])
    return ["".join(p) for p in itertools.product(*parts)]


# A shard is a local path, or an fsspec URL (s3://, gs://, https://, memory://...) for remote shard sets.
Shard = Path | str


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and "://" in spec and not spec.startswith("file://")


def _url_fs(url: str) -> tuple[Any, str]:
    import fsspec  # lazy: local targets never need it

    return fsspec.core.url_to_fs(url)


def shard_name(shard: Shard) -> str:
    """The shard's file name, as the manifest and every message name it."""
    return str(shard).rstrip("/").rsplit("/", 1)[-1]


def shard_size(shard: Shard) -> int:
    if is_url(shard):
        fs, path = _url_fs(str(shard))
        return int(fs.size(path))
    return Path(shard).stat().st_size


@contextlib.contextmanager
def open_shard(shard: Shard) -> Iterator[IO[bytes]]:
    """A buffered binary stream: 1 MiB buffer locally, 4 MiB blocks (fewer requests) remotely."""
    if is_url(shard):
        # block_size is a file option: given to fsspec.open it reaches the filesystem's
        # constructor, which s3fs refuses (AioSession got an unexpected keyword 'block_size')
        fs, path = _url_fs(str(shard))
        with fs.open(path, "rb", block_size=4 << 20) as f:
            yield f
    else:
        with open(shard, "rb", buffering=1 << 20) as f:
            yield f


@dataclass(slots=True)
class Target:
    """What the user pointed at: a list of shard files, plus the job directory's metadata if any."""

    spec: str
    shards: list[Shard]
    job_dir: Shard | None = None
    manifest: list[dict[str, Any]] | None = None
    report: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # e.g. unreadable manifest lines


def _load_job_files(target: Target, read: Callable[[str], str | None]) -> None:
    """manifest.jsonl and report.json of a job dir; `read(name)` gives a file's text or None."""
    text = read("manifest.jsonl")
    if text is not None:
        target.manifest = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                target.manifest.append(json.loads(line))
            except json.JSONDecodeError as e:
                target.problems.append(f"manifest.jsonl:{lineno}: bad JSON line ({e.msg})")
            except RecursionError:
                target.problems.append(
                    f"manifest.jsonl:{lineno}: bad JSON line (nested too deeply)"
                )
    text = read("report.json")
    if text is not None:
        try:
            target.report = json.loads(text)
        except json.JSONDecodeError as e:
            target.problems.append(f"report.json: bad JSON ({e.msg})")
        except RecursionError:
            target.problems.append("report.json: bad JSON (nested too deeply)")


def resolve_target(spec: str | Path) -> Target:
    """A shard file, a brace pattern, or a job directory (DESIGN §3: `shards/`, manifest, report),
    local or behind an fsspec URL.

    A job directory lists shards in name order (the build numbers them); `*.tmp` files are unfinished
    shards (written then renamed, DESIGN §3) and are never read.
    """
    spec = str(spec)
    if is_url(spec):
        return _resolve_url(spec)
    path = Path(spec)
    if path.is_dir():
        shard_dir = path / "shards" if (path / "shards").is_dir() else path
        shards = sorted(p for p in shard_dir.iterdir() if p.name.endswith(".tar") and p.is_file())
        target = Target(spec=spec, shards=list(shards))
        if shard_dir != path:
            target.job_dir = path
            _load_job_files(
                target, lambda n: (path / n).read_text() if (path / n).is_file() else None
            )
        return target
    names = expand_braces(spec)
    _check_exist(names, lambda n: Path(n).is_file())
    return Target(spec=spec, shards=[Path(n) for n in names])


def _resolve_url(spec: str) -> Target:
    fs, root = _url_fs(spec)
    if "{" not in spec and fs.isdir(root):
        root = root.rstrip("/")
        is_job = fs.isdir(f"{root}/shards")
        listing = fs.ls(f"{root}/shards" if is_job else root, detail=False)
        shards = sorted(fs.unstrip_protocol(p) for p in listing if str(p).endswith(".tar"))
        target = Target(spec=spec, shards=list(shards))
        if is_job:
            target.job_dir = spec

            def read(name: str) -> str | None:
                path = f"{root}/{name}"
                return fs.cat_file(path).decode() if fs.exists(path) else None

            _load_job_files(target, read)
        return target
    names = expand_braces(spec)
    _check_exist(names, lambda n: fs.exists(_url_fs(n)[1]))
    return Target(spec=spec, shards=list(names))


def _check_exist(names: list[str], exists: Callable[[str], bool]) -> None:
    missing = [n for n in names if not exists(n)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(f"no such shard: {missing[0]}{more}")


# ---------------------------------------------------------------------------------------- tar reader


@dataclass(slots=True)
class Member:
    """One regular file in a tar: `data` is the whole payload, the first `head` bytes, or None."""

    name: str
    offset: int  # offset of its (first) header block in the file
    size: int
    data: bytes | None
    type: bytes = b"0"
    # an m3w/2 images member read with PackedHeads: (size, head) per array element, None for nil
    parts: list[tuple[int, bytes] | None] | None = None
    parts_error: str | None = None


class PackedHeads(int):
    """Asked of `want` for an m3w/2 `images.mp` member: read the first N bytes of each image in the
    msgpack array and seek past the rest, so `stats` still costs one header per image."""


_BIN_LEN = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin8/16/32: bytes of the big-endian length


# No file can hold a member past this (it is what a signed 64-bit seek can reach): a larger size is a
# bad header, not a truncation, and must never reach read() or seek() (OverflowError).
MAX_MEMBER_SIZE = (1 << 63) - 1
_ONE_READ = 64 << 20  # a pipe's member up to this size is read in one call


def _octal(field_: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 positive, 0xff negative)
    for sizes ≥ 8 GiB. Raises ValueError for anything that is no size."""
    if field_[:1] and field_[0] & 0x80:
        value = int.from_bytes(field_[1:], "big")
        if field_[0] == 0xFF:  # two's complement negative: never a size
            raise ValueError("negative base-256 number")
        return value
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    """POSIX sums the header bytes unsigned; some old tars summed them signed: accept either."""
    try:
        stored = _octal(header[148:156])
    except ValueError:
        return False
    rest = header[:148] + header[156:]
    if stored == sum(rest) + 256:  # the chksum field itself counts as 8 spaces
        return True
    return stored == sum(b - 256 if b > 127 else b for b in rest) + 256


def _pax_path(payload: bytes) -> str | None:
    """The `path=` record of a pax extended header (POSIX.1-2001 pax format: records
    `"%d %s=%s\n"`, the length counting the whole record). Raises ValueError for a record whose
    length is not a number, does not cover its own "length key=" prefix (a length of 0 would
    never advance: the reader hung forever) or runs past the header, or that lacks its newline."""
    pos = 0
    while pos < len(payload):
        if payload[pos:].strip(b"\0") == b"":
            break  # some writers pad the last record with NULs
        space = payload.find(b" ", pos, pos + 21)
        digits = payload[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ValueError(f"pax record at {pos}: no length")
        length = int(digits)
        end = pos + length
        if end <= space + 1 or end > len(payload) or payload[end - 1 : end] != b"\n":
            raise ValueError(f"pax record at {pos}: length {length} does not frame a record")
        key, _, value = payload[space + 1 : end - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos = end
    return None


class TarReader:
    """Iterate the regular-file members of one tar file, checking its structure as it goes.

    `want(name)` decides per member: True reads the payload, an int N reads only the first N bytes (and
    seeks past the rest on a seekable file), False/0 skips it. Raises TarFormatError with the offset on a
    bad header checksum, a truncated header or payload, or a missing end-of-archive marker.
    """

    def __init__(self, fileobj: IO[bytes], name: str) -> None:
        self.f = fileobj
        self.name = name
        self.pos = 0
        self.size: int | None = None  # None: a pipe or hashing stream, read everything
        try:
            size = os.fstat(fileobj.fileno()).st_size
            fileobj.seek(0, os.SEEK_CUR)  # raises on a pipe, whose fstat size means nothing
            self.size = size
        except (OSError, AttributeError, ValueError):
            remote_size = getattr(fileobj, "size", None)  # fsspec files know it and seek
            if isinstance(remote_size, int) and fileobj.seekable():
                self.size = remote_size

    def _read(self, n: int, what: str) -> bytes:
        """n bytes. A member that claims more than the file holds is reported before reading; on a
        pipe (no size to check) a claim over `_ONE_READ` is read in 1 MiB pieces, so it costs what
        the stream holds, never an n-byte allocation up front."""
        if self.size is not None and self.pos + n > self.size:
            got = max(0, self.size - self.pos)
        elif self.size is not None or n <= _ONE_READ:
            data = self.f.read(n)
            got = len(data)
        else:
            parts, got = [], 0
            while got < n:
                chunk = self.f.read(min(n - got, 1 << 20))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        if got < n:
            raise TarFormatError(
                self.name,
                self.pos + got,
                f"truncated: {what} needs {n:,} more bytes, only {got:,} left",
            )
        self.pos += n
        return data

    def _skip(self, n: int, what: str) -> None:
        if n <= 0:
            return
        if self.size is not None:
            if self.pos + n > self.size:
                raise TarFormatError(
                    self.name,
                    self.size,
                    f"truncated: {what} needs {n:,} more bytes, only {self.size - self.pos:,} left",
                )
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        while n > 0:
            chunk = self._read(min(n, 1 << 20), what)
            n -= len(chunk)

    def members(self, want: Callable[[str], bool | int] = lambda _: True) -> Iterator[Member]:
        long_name: str | None = None
        while True:
            start = self.pos
            header = self.f.read(BLOCK)
            if not header:
                raise TarFormatError(
                    self.name, start, "truncated: file ends without the end-of-archive marker"
                )
            if len(header) < BLOCK:
                raise TarFormatError(
                    self.name, start, f"truncated: partial header ({len(header)} of {BLOCK} bytes)"
                )
            self.pos += BLOCK
            if header == bytes(BLOCK):
                if self.f.read(BLOCK) != bytes(BLOCK):  # POSIX: two zero blocks end the archive
                    raise TarFormatError(self.name, start, "truncated end-of-archive marker")
                self.pos += BLOCK
                return
            if not _checksum_ok(header):
                raise TarFormatError(
                    self.name, start, "bad tar header checksum (corrupt or not a tar)"
                )
            try:
                size = _octal(header[124:136])
            except ValueError:
                raise TarFormatError(
                    self.name, start, "bad size field in tar header", "tar.bad_header"
                ) from None
            if size > MAX_MEMBER_SIZE:
                raise TarFormatError(
                    self.name, start, f"tar header claims a {size:,}-byte member", "tar.bad_header"
                )
            kind = header[156:157] or b"0"
            padded = -size % BLOCK
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            if kind in (b"x", b"L"):  # pax extended / GNU long name: applies to the next member
                payload = self._read(size, f"extended header at {start}")
                self._skip(padded, "padding")
                try:
                    long_name = (
                        _pax_path(payload)
                        if kind == b"x"
                        else payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
                    )
                except ValueError as e:
                    raise TarFormatError(
                        self.name, start, f"bad pax extended header: {e}", "tar.bad_header"
                    ) from None
                continue
            if kind == b"g":
                self._skip(size + padded, "global header")
                continue
            if long_name is not None:
                name, long_name = long_name, None
            regular = kind in REGULAR
            what = f"member {name!r} (header at byte {start:,}, {size:,} bytes)"
            wanted = want(name) if regular else False
            parts: list[tuple[int, bytes] | None] | None = None
            parts_error = None
            if wanted is True:
                data: bytes | None = self._read(size, what)
                self._skip(padded, what)
            elif isinstance(wanted, PackedHeads):
                data = None
                parts, parts_error, used = self._packed_heads(size, int(wanted), what)
                self._skip(size - used + padded, what)
            elif wanted:
                head = min(int(wanted), size)
                data = self._read(head, what)
                self._skip(size - head + padded, what)
            else:
                data = None
                self._skip(size + padded, what)
            yield Member(name, start, size, data, kind, parts, parts_error)

    def _packed_heads(
        self, size: int, head: int, what: str
    ) -> tuple[list[tuple[int, bytes] | None] | None, str | None, int]:
        """Walk a msgpack array of nil/bin elements (what `Document.packed_images` writes) inside
        a member of `size` bytes: ([(size, head bytes) | None per element] or None, an error,
        bytes consumed)."""
        used = 0

        def take(n: int) -> bytes:
            nonlocal used
            if used + n > size:
                raise ValueError("the array runs past the member")
            used += n
            return self._read(n, what)

        try:
            first = take(1)[0]
            if 0x90 <= first <= 0x9F:
                count = first & 0x0F
            elif first in (0xDC, 0xDD):
                count = int.from_bytes(take(2 if first == 0xDC else 4), "big")
            else:
                raise ValueError(f"starts with byte 0x{first:02x}, not an array")
            parts: list[tuple[int, bytes] | None] = []
            for _ in range(count):
                tag = take(1)[0]
                if tag == 0xC0:
                    parts.append(None)
                    continue
                if tag not in _BIN_LEN:
                    raise ValueError(f"element of type 0x{tag:02x}, not bytes or nil")
                n = int.from_bytes(take(_BIN_LEN[tag]), "big")
                if used + n > size:
                    raise ValueError("an element runs past the member")
                data = take(min(head, n))
                self._skip(n - len(data), what)
                used += n - len(data)
                parts.append((n, data))
            return parts, None, used
        except ValueError as e:
            return None, str(e), used


# ------------------------------------------------------------------------------------------- samples

# How much of each image member to read: all (True), none (False), a head of N bytes, or per member.
ImageMode = bool | int | Callable[[str], bool | int]


@dataclass(slots=True)
class Sample:
    """One document of a shard: its JSON record (None if absent or unparsable) and its members.

    `members` maps the suffix after the key ("1.jpg") to what was read (whole bytes or a head);
    `sizes` maps it to the full member size, so `stats` knows image bytes without reading them.
    An m3w/2 sample is shown in the same m3w/1-shaped view (`read_shard_sample`): `record` has
    `member` names and `members`/`sizes` one entry per image; `stored` is the record as stored.
    """

    shard: str
    key: str
    offset: int
    record: dict[str, Any] | None = None
    json_error: str | None = None
    members: dict[str, bytes | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    extra: list[tuple[str, str]] = field(default_factory=list)  # (code, message): odd entries
    stored: dict[str, Any] | None = None  # the record as stored (m3w/2), when it differs
    # m3w/2 images member read as heads: ([(size, head) | None per position] | None, error)
    packed_parts: tuple[list[tuple[int, bytes] | None] | None, str | None] | None = None

    @property
    def url(self) -> str:
        return self.view["url"]

    @property
    def view(self) -> dict[str, Any]:
        """The record with every field a reader prints coerced to its schema type (`record_view`):
        what stats, show, grep and html read, so a record of the wrong shape is shown, not a crash."""
        return record_view(self.record)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _real_or_none(value: Any) -> float | None:
    """A finite int/float (JSON's NaN and Infinity, and booleans, are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _size_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _image_view(image: Any) -> dict[str, Any] | None:
    if not isinstance(image, dict):
        return None
    view = {k: _str_or_none(image.get(k)) for k in ("member", "sha256", "attach", "phash")}
    view.update(src=_str_or_none(image.get("src")) or "", alt=_str_or_none(image.get("alt")) or "")
    view.update(width=_size_or_none(image.get("width")), height=_size_or_none(image.get("height")))
    return view


def record_view(record: Any) -> dict[str, Any]:
    """A record as the m3w/1 types (docs/format.md), whatever the shard holds: `texts` a list of str
    or None, `images` a list of image dicts (str/int fields) or None, `url` a str, `lang`, `fetched`
    str or None, `lang_score`, `p_next` finite floats or None, `source` and `stats` dicts. A field of
    another type reads as absent. `verify` checks the record itself and names each such field."""
    rec = record if isinstance(record, dict) else {}
    texts, images = rec.get("texts"), rec.get("images")
    source = rec.get("source") if isinstance(rec.get("source"), dict) else {}
    stats = rec.get("stats")
    offset = source.get("offset")
    return {
        "schema": _str_or_none(rec.get("schema")),
        "key": _str_or_none(rec.get("key")),
        "url": _str_or_none(rec.get("url")) or "",
        "texts": [t if isinstance(t, str) else None for t in texts]
        if isinstance(texts, list)
        else [],
        "images": [_image_view(im) for im in images] if isinstance(images, list) else [],
        "lang": _str_or_none(rec.get("lang")),
        "lang_score": _real_or_none(rec.get("lang_score")),
        "p_next": _real_or_none(rec.get("p_next")),
        "fetched": _str_or_none(rec.get("fetched")),
        "source": {
            "warc": _str_or_none(source.get("warc")),
            "offset": offset if isinstance(offset, int) and not isinstance(offset, bool) else None,
        },
        "stats": stats if isinstance(stats, dict) else {},
    }


def parse_record(data: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a JSON object, else (None, why): `m3w_builder.document.parse_record_json`
    without the exception, so one bad sample is a finding, never the end of the command."""
    try:
        return parse_record_json(data), None
    except RecordError as e:
        return None, str(e)


def iter_samples(
    path: Shard, images: ImageMode = True, fileobj: IO[bytes] | None = None
) -> Iterator[Sample]:
    """Group consecutive members by key (the name up to the first dot, as webdataset does).

    `images`: True reads image bytes, an int reads that many head bytes, False reads none; a callable
    gets each image member's name and answers per member. It is asked when the member is reached, i.e.
    after the sample's `.json` (written first) has been read and the previous sample handed out, so a
    caller can decide from the record or its own state which images to read and which to seek past.
    """
    name = shard_name(path)
    packed_mode: dict[str, bool | int] = {}  # key → what was asked for its m3w/2 images member

    def want(member: str) -> bool | int:
        if member.endswith(".json"):
            return True
        wanted = images(member) if callable(images) else images
        if member.endswith("." + IMAGES_MEMBER):  # all images in one member
            packed_mode[member.partition(".")[0]] = wanted
            return wanted if type(wanted) is bool else PackedHeads(wanted)
        return wanted

    def done(sample: Sample) -> Sample:
        if sample.record is not None and sample.record.get("schema") == SCHEMA:
            _unpack_v2(sample, packed_mode.pop(sample.key, False))
        return sample

    def run(f: IO[bytes]) -> Iterator[Sample]:
        current: Sample | None = None
        for m in TarReader(f, name).members(want):
            key, _, suffix = m.name.partition(".")
            if current is None or key != current.key:
                if current is not None:
                    yield done(current)
                current = Sample(shard=name, key=key, offset=m.offset)
            if m.type not in REGULAR:  # webdataset ignores these; a shard should not have them
                kind = m.type.decode("ascii", "replace")
                current.extra.append(
                    (
                        "member.not_file",
                        f"{m.name!r} at byte {m.offset:,} is not a file (type {kind})",
                    )
                )
                continue
            if suffix in current.sizes:
                current.extra.append(
                    ("member.duplicate", f"duplicate member {m.name!r} at byte {m.offset:,}")
                )
            current.sizes[suffix] = m.size
            if suffix == "json":
                current.record, current.json_error = parse_record(m.data or b"")
            else:
                current.members[suffix] = m.data
                if m.parts is not None or m.parts_error is not None:
                    current.packed_parts = (m.parts, m.parts_error)
        if current is not None:
            yield done(current)

    if fileobj is not None:
        yield from run(fileobj)
        return
    with open_shard(path) as f:
        yield from run(f)


def _unpack_v2(sample: Sample, mode: bool | int) -> None:
    """Replace an m3w/2 sample's record and images member by the m3w/1-shaped view, in place.

    `mode` is what the caller asked for the images: their bytes (True), heads of N bytes (then
    the member was walked, `packed_parts`), or none (False: the member was skipped, so per-image
    sizes are unknown and reported as 0)."""
    stored = sample.record
    assert stored is not None
    packed = sample.members.pop(IMAGES_MEMBER, None)
    total = sample.sizes.pop(IMAGES_MEMBER, None)
    if total is None:
        sample.extra.append(("member.missing", f"no {sample.key}.{IMAGES_MEMBER} in the shard"))
    sizes: dict[int, int] = {}
    if sample.packed_parts is not None:  # heads: rebuild a small member from them to parse
        parts, error = sample.packed_parts
        if error is not None or parts is None:
            sample.extra.append(("member.images", f"{sample.key}.{IMAGES_MEMBER}: {error}"))
        else:
            import msgpack

            sizes = {i: p[0] for i, p in enumerate(parts) if p is not None}
            packed = msgpack.packb([p[1] if p else None for p in parts], use_bin_type=True)
    try:
        view, blobs = read_shard_sample(stored, {IMAGES_MEMBER: packed} if packed else {})
    except RecordError as e:  # a bad images member: report it, and check the record without it
        sample.extra.append(("member.images", f"{sample.key}.{IMAGES_MEMBER}: {e}"))
        try:
            view, blobs = read_shard_sample(stored, {})
        except RecordError as e2:
            sample.record, sample.stored, sample.json_error = None, stored, str(e2)
            return
        packed = None
    sample.stored = stored
    sample.record = view
    for pos, image in enumerate(view.get("images") or []):
        member = image.get("member") if isinstance(image, dict) else None
        if not member:
            continue
        data = blobs.get(member)
        if data is None and packed is not None:
            continue  # absent from the member itself: verify reports member.missing
        sample.sizes[member] = sizes.get(pos, len(data) if data is not None else 0)
        if packed is not None and mode is not False:
            sample.members[member] = data  # type: ignore[assignment]


def iter_target(
    target: Target,
    images: ImageMode = True,
    progress: bool = False,
    on_error: Callable[[TarFormatError], None] | None = None,
) -> Iterator[Sample]:
    """All samples of all shards in order; `progress` shows a byte-based tqdm bar on stderr.

    A broken or unreadable shard raises TarFormatError, unless `on_error` is given: then it is called
    and the next shard is read (the samples before the break have been yielded already).
    """
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(shard_size(p) for p in target.shards)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="inspect", leave=False)
    try:
        for shard in target.shards:
            try:
                try:
                    yield from iter_samples(shard, images=images)
                except OSError as e:  # vanished, unreadable, or a remote read that failed
                    raise TarFormatError(shard_name(shard), 0, f"cannot read: {e}") from e
            except TarFormatError as e:
                if on_error is None:
                    raise
                on_error(e)
            if bar is not None:
                bar.update(shard_size(shard))
    finally:
        if bar is not None:
            bar.close()
