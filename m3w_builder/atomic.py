"""Write a local file so that readers see the old file or the whole new one, never a torn write.

One recipe for every file m3w finishes — shards, completion markers, manifests, reports, checkpoint
pointers: write a temporary file beside the target, flush, fsync, rename over the target (POSIX
rename is atomic within a filesystem), and on any error remove the temporary file, so a full disk
(ENOSPC) or a killed process leaves the previous file and no partial one.

The temporary name belongs to one attempt (pid + random suffix, ending in `.tmp`): two attempts of
one task can run at once (a driver killed with SIGKILL leaves its local Ray's workers running the
tasks it had submitted, and the rerun submits them again); with one shared `NAME.tmp`, the first to
finish renamed the other's file away under it (a FileNotFoundError seen in CI). Outputs are
deterministic, so whichever attempt renames last leaves the same bytes. Object stores are
pipelines/storage.py's business (one complete PUT); it uses this module for local paths.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def attempt_tmp(path: Path) -> Path:
    """A temporary name next to `path` that belongs to this attempt alone."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


class AtomicFile:
    """A file written under a temporary name and renamed to `path` by `commit()`.

    `file` is open for binary writing; a writer that wants a path instead (pyarrow) writes
    `tmp_path` and leaves `file` alone. `abort()` removes the temporary file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = attempt_tmp(self.path)
        self.file: IO[bytes] = open(self.tmp_path, "wb")  # noqa: SIM115 - closed by commit/abort

    def commit(self) -> None:
        """Flush, fsync, rename over `path`; on failure nothing of this attempt is left."""
        try:
            if not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            else:  # written through tmp_path by another writer: make its bytes durable too
                with open(self.tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # flushing the buffer may fail again (ENOSPC)
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through: it appears, whole, when the block ends without an
    error; nothing of it is left when the block raises."""
    target = AtomicFile(path)
    try:
        yield target.file
    except BaseException:
        target.abort()
        raise
    target.commit()


def atomic_write(path: str | Path, data: bytes) -> None:
    """`data` as the whole new content of `path` (write, fsync, rename)."""
    with open_atomic(path) as f:
        f.write(data)
