"""Where a job folder lives: a POSIX path, or any fsspec URL (`s3://bucket/job`, `gs://...`).

The build writes every file of a job — state under `_work/`, shards, manifest, report — through the
few operations below, so `--out` may be object storage, which has no rename and no append:

- `job_path(root)`: a `pathlib.Path`, or a `upath.UPath` for a URL (the same `/`, `exists`,
  `read_bytes`, `glob` API);
- `atomic_write(path, data)` and `open_atomic(path)`: readers see the whole file or none. Locally a
  temporary name is renamed; on object storage the object is written once, complete (a PUT or a
  multipart upload appears only when it finishes), from a local temporary file;
- `local_copy(path)`: a local file with the same bytes, for memory maps (a remote file is fetched once
  into a per-machine cache and reused while its size matches);
- `read_range(path, start, n)`: bytes of a file without reading the rest (ranged GETs remotely);
- `move(src, dst)`: `os.replace` locally, a server-side copy then delete remotely;
- `remove_tree(path)`.

The manifest stays the commit point: finalize moves each part shard to its final name, then writes
`manifest.jsonl`, then `report.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from m3w_builder import atomic
from m3w_builder.atomic import attempt_tmp

JobPath = Any  # pathlib.Path or upath.UPath


def is_url(root: str | os.PathLike) -> bool:
    text = str(root)
    return "://" in text and not text.startswith("file://")


def job_path(root: str | os.PathLike | JobPath) -> JobPath:
    """`root` as a Path (local) or a UPath (a URL); a path object is returned as it is."""
    if not isinstance(root, str):
        return root
    if is_url(root):
        from upath import UPath

        return UPath(root)
    return Path(root.removeprefix("file://"))


def is_remote(path: JobPath) -> bool:
    return not isinstance(path, Path)


def _scratch(name: str) -> Path:
    folder = Path(tempfile.gettempdir()) / "m3w-upload"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"


@contextlib.contextmanager
def open_atomic(path: JobPath) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through; the file appears (whole) when the block ends
    without an error, and nothing of it is left when it raises (a full disk included)."""
    if is_remote(path):
        tmp = _scratch(path.name)
        try:
            with open(tmp, "wb") as f:
                yield f
            path.fs.put_file(str(tmp), path.path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with atomic.open_atomic(path) as f:  # write, fsync, rename (m3w_builder.atomic)
        yield f


def atomic_write(path: JobPath, data: bytes) -> None:
    """Write-then-rename (locally), one complete PUT (remotely): readers see the old file or the
    whole new one, never a torn write."""
    with open_atomic(path) as f:
        f.write(data)


def upload(local: Path, path: JobPath) -> None:
    """A finished local file to `path` (remote), or renamed there (local)."""
    if is_remote(path):
        path.fs.put_file(str(local), path.path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, path)


def local_copy(path: JobPath) -> Path:
    """A local file holding `path`'s bytes (itself when local)."""
    if not is_remote(path):
        return path
    size = path.fs.size(path.path)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:20]
    cache = Path(tempfile.gettempdir()) / "m3w-cache" / digest / path.name
    if cache.exists() and cache.stat().st_size == size:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = attempt_tmp(cache)
    path.fs.get_file(path.path, str(tmp))
    os.replace(tmp, cache)
    return cache


def read_range(path: JobPath, start: int, n: int) -> bytes:
    if n <= 0:
        return b""
    with path.open("rb") as f:
        f.seek(start)
        return f.read(n)


def move(src: JobPath, dst: JobPath) -> None:
    """A file renamed (locally) or copied server-side then deleted (remotely)."""
    if is_remote(src):
        src.fs.copy(src.path, dst.path)
        src.fs.rm(src.path)
    else:
        os.replace(src, dst)


def remove_tree(path: JobPath) -> None:
    if is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove(path: JobPath) -> None:
    if is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            path.fs.rm(path.path)
    else:
        path.unlink(missing_ok=True)


def mkdirs(path: JobPath) -> None:
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)


def node_local(path: JobPath, name: str) -> Path:
    """A node-local place for what cannot live on object storage (the append-only page journal of
    an extract task): `path` itself locally, a per-job folder under the temp dir remotely."""
    if not is_remote(path):
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / "m3w-journal" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
