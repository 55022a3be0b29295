"""WebDataset tar shards of schemas m3w/2 (written) and m3w/1 (still read): writer and streaming reader.

An m3w/2 sample is always the same two members, `{key}.json` and `{key}.images.mp`; an m3w/1 sample
is `{key}.json` plus one `{key}.{pos}.{ext}` member per image (docs/format.md says why it changed).

Why our own writer rather than `webdataset.TarWriter`: wds does not reject keys with dots (a dot splits a
sample at read time), does not write atomically, and stamps the current time into every member, which
makes two identical builds differ byte for byte. Here members get mtime 0, uid/gid 0 and fixed modes, the
file is written as `NAME.tmp` and renamed only when complete, and the sha256 of the finished file is
computed while writing. The result reads back with plain `webdataset.WebDataset(...)` and `tar`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from m3w_builder.atomic import AtomicFile
from m3w_builder.document import IMAGES_MEMBER, SCHEMA, SCHEMA_V1, Document, read_shard_sample

KEY_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(slots=True)
class ShardInfo:
    """One line of manifest.jsonl."""

    name: str
    docs: int
    images: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through, so the shard is read once."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.hash.update(b)
        self.size += len(b)
        return self.raw.write(b)


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode()


class ShardWriter:
    """Write documents into one tar shard; the shard appears under its final name only on `close()`.

    Use as a context manager: an exception inside the block removes the partial `.tmp` file, so a failed
    attempt never leaves a shard with partial work behind.
    """

    def __init__(self, path: str | Path, schema: str = SCHEMA) -> None:
        if schema not in (SCHEMA, SCHEMA_V1):
            raise ValueError(f"cannot write schema {schema!r}")
        self.schema = schema  # m3w/1 only for tests and tools that read the old layout
        self.path = Path(path)
        self._target = AtomicFile(self.path)  # the one write-fsync-rename recipe
        self.tmp_path = self._target.tmp_path
        self._raw = self._target.file
        self._hashing = _HashingFile(self._raw)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.USTAR_FORMAT)
        self.docs = 0
        self.images = 0
        self._keys: set[str] = set()

    def write(self, doc: Document) -> None:
        key = doc.key
        if not KEY_RE.match(key):
            raise ValueError(f"invalid shard key {key!r}: must be 32 hex chars with no dots")
        if key in self._keys:
            raise ValueError(f"duplicate key {key} ({doc.url}) in shard {self.path.name}")
        self._keys.add(key)
        if self.schema == SCHEMA:
            self._add(f"{key}.json", _dumps(doc.shard_record()))
            self._add(f"{key}.{IMAGES_MEMBER}", doc.packed_images())
            self.images += len(doc.image_nodes)
            self.docs += 1
            return
        record = doc.to_json()
        self._add(f"{key}.json", _dumps(record))
        for pos, node in enumerate(doc.nodes):
            image = record["images"][pos]
            if image is None:
                continue
            if image["member"] is None or getattr(node, "data", None) is None:
                raise ValueError(f"{doc.url}: image at position {pos} has no stored bytes")
            self._add(f"{key}.{image['member']}", node.data)  # type: ignore[union-attr]
            self.images += 1
        self.docs += 1

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    @property
    def bytes_written(self) -> int:
        return self._hashing.size

    def close(self) -> ShardInfo:
        try:
            self._tar.close()
        except BaseException:  # a full disk (ENOSPC) while finishing: leave no partial .tmp
            self.abort()
            raise
        self._target.commit()  # fsync + rename; removes its temporary file if that fails
        return ShardInfo(
            name=self.path.name,
            docs=self.docs,
            images=self.images,
            bytes=self._hashing.size,
            sha256=self._hashing.hash.hexdigest(),
        )

    def abort(self) -> None:
        try:
            self._tar.close()
        except Exception:  # noqa: BLE001 - best effort; the tmp file is removed either way
            pass
        self._target.abort()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._raw.closed:
                self.close()
        else:
            self.abort()


@dataclass(slots=True)
class ShardSample:
    """One sample read back from a shard: the JSON record and its image members by member name."""

    key: str
    record: dict[str, Any]  # the m3w/1-shaped view (`member` names), whatever the schema
    members: dict[str, bytes]  # image bytes by member name ("1.jpg"), whatever the schema
    offset: int  # byte offset of the sample's first tar header in the shard
    stored: dict[str, Any] | None = None  # an m3w/2 record as stored

    def document(self) -> Document:
        return Document.from_json(self.record, self.members)


def _view(sample: ShardSample) -> ShardSample:
    """Readers see one shape: an m3w/2 sample becomes the m3w/1-shaped view (read_shard_sample)."""
    if sample.record.get("schema") == SCHEMA:
        sample.stored = sample.record
        sample.record, sample.members = read_shard_sample(sample.record, sample.members)
    return sample


def iter_shard(fileobj_or_path: str | Path | IO[bytes]) -> Iterator[ShardSample]:
    """Stream the samples of one shard in order, holding one sample in memory at a time.

    Members are grouped by the key before the first dot, as webdataset does. Tar errors propagate as
    `tarfile.TarError` / `EOFError` with the offset reached; callers decide whether to skip or fail.
    """
    if isinstance(fileobj_or_path, str | Path):
        with open(fileobj_or_path, "rb") as f:
            yield from iter_shard(f)
        return
    current: ShardSample | None = None
    with tarfile.open(fileobj=fileobj_or_path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, suffix = info.name.partition(".")
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if current is None or key != current.key:
                if current is not None:
                    yield _view(current)
                current = ShardSample(key=key, record={}, members={}, offset=info.offset)
            if suffix == "json":
                current.record = json.loads(data)
            else:
                current.members[suffix] = data
    if current is not None:
        yield _view(current)


def estimated_bytes(doc: Document, schema: str = SCHEMA) -> int:
    """Upper estimate of a document's size in a shard: tar headers and 512-byte padding included.

    Used to roll a shard *before* it would cross `max_shard_bytes`, so no shard is rewritten. The
    record is measured; m3w/2's images member is bounded by the image bytes plus msgpack's at most
    5 bytes per position and array header."""
    data = [len(n.data or b"") for n in doc.image_nodes]
    if schema == SCHEMA:
        members = [len(_dumps(doc.shard_record())), sum(data) + 5 * (len(doc.nodes) + 1)]
    else:
        members = [len(_dumps(doc.to_json())), *data]
    return sum(512 + -(-size // 512) * 512 for size in members)


def _tar_size(member_bytes: int) -> int:
    """Size of the finished tar: members, the 1024-byte end-of-archive marker, and tarfile's padding of
    the stream to whole 10240-byte records (tarfile.RECORDSIZE)."""
    return -(-(member_bytes + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class RollingShardWriter:
    """Write a stream of documents into numbered shards of at most `docs_per_shard` documents and about
    `max_shard_bytes` bytes (a single larger document still gets a shard of its own).

    Shards are named `{first_index + i:06d}.tar` in `directory`; each appears only when complete
    (ShardWriter's tmp+rename). `close()` returns the ShardInfo of every shard written, in order; on an
    exception inside the `with` block the open shard is discarded and finished ones stay.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        docs_per_shard: int,
        max_shard_bytes: int,
        first_index: int = 0,
        schema: str = SCHEMA,
    ) -> None:
        if docs_per_shard < 1 or max_shard_bytes < 1:
            raise ValueError("docs_per_shard and max_shard_bytes must be positive")
        self.directory = Path(directory)
        self.docs_per_shard = docs_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.next_index = first_index
        self.schema = schema
        self.infos: list[ShardInfo] = []
        self._writer: ShardWriter | None = None
        self._estimate = 0

    def write(self, doc: Document) -> None:
        size = estimated_bytes(doc, self.schema)
        if self._writer is not None and (
            self._writer.docs >= self.docs_per_shard
            or _tar_size(self._estimate + size) > self.max_shard_bytes
        ):
            self._roll()
        if self._writer is None:
            self._writer = ShardWriter(self.directory / f"{self.next_index:06d}.tar", self.schema)
            self.next_index += 1
            self._estimate = 0
        self._writer.write(doc)
        self._estimate += size

    def _roll(self) -> None:
        if self._writer is not None:
            self.infos.append(self._writer.close())
            self._writer = None

    def close(self) -> list[ShardInfo]:
        self._roll()
        return self.infos

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> RollingShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
