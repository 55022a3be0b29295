"""Inputs → RawPage: what the build reads, and in what order.

Why a module of its own: every build starts by turning its inputs into a stream of
`RawPage(url, body, headers, source_file, source_offset, date)` (DESIGN §2), and two rules about
inputs must have one home each, because the build's plan, its page reader, its input check and
`m3w extract` all apply them:

- **what a file is** (`classify`: "archive", "html", "url_list" or "unsupported"): its first bytes
  first (`warc.sniff_format`; extensions lie), then its name; `kind_by_name` is the name alone, for
  the decisions made without opening a file (the build's plan, and URL lists, whose bytes are text);
- **the order of a folder's files** (`walk`): a folder's own files sorted, then its sorted
  subfolders (os.walk order), hidden names left out, so that a rebuild sees pages in the same order.

`iter_pages` reads one input (an archive, an HTML file or a folder) as pages; a file it cannot use is
a counted skip with a reason code (`input.unsupported`, `html.unreadable`, ...), never an exception.
`expand_inputs` turns command-line inputs (paths, globs, fsspec URLs) into files and folders, and
`iter_url_list` reads a URL list. Reading archives is `m3w_builder.warc`; decoding a page's bytes to
text is `m3w_builder.charset`.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from m3w_builder.config import SourceConfig
from m3w_builder.document import RawPage
from m3w_builder.reasons import Counts
from m3w_builder.warc import (
    GZIP_MAGIC,
    MAX_HEADER_BYTES,
    ArchiveRecord,
    is_remote,
    iter_records,
    local_path,
    looks_like_html,
    open_input,
    remote_fs,
    sniff_format,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# What a file is, and the order of a folder's files
# --------------------------------------------------------------------------------------------------

ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz", ".xhtml.gz")
URL_LIST_SUFFIXES = (".urls", ".txt", ".lst", ".urls.gz", ".txt.gz", ".lst.gz")


def kind_by_name(path: str) -> str | None:
    """What a file's name promises (case ignored): "url_list", "archive", "html", or None.

    The build's plan cuts its inputs into units by this alone (it opens no file: a folder of a
    million pages is planned from its listing), and a URL list is known by its name only (its bytes
    are plain text, which no sniffing tells from any other text)."""
    low = path.lower()
    if low.endswith(URL_LIST_SUFFIXES):
        return "url_list"
    if low.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if low.endswith(HTML_SUFFIXES):
        return "html"
    return None


def classify(path: str) -> str:
    """What a reader makes of a file: "archive", "html", "url_list" or "unsupported".

    The first bytes decide first (`sniff_format`, gzip looked through): a gzipped WARC named `.bin`
    or `.warc.gz.bad` is an archive, a `.warc` holding a web page is HTML. Where the bytes say
    nothing (a damaged first record, a file that cannot be opened, plain text) the name decides
    (`kind_by_name`): an archive whose first record is damaged still goes to the archive reader,
    which resyncs. Anything else is "unsupported". `iter_pages`, the build's input check and
    `m3w extract` all decide with this."""
    sniffed = sniff_format(path)
    if sniffed in ("warc", "arc"):
        return "archive"
    if sniffed == "html":
        return "html"
    return kind_by_name(path) or "unsupported"


def walk(path: str) -> Iterator[str]:
    """The files under a folder, recursively: each folder's own files in sorted order, then its
    subfolders in sorted order (os.walk order, not one sort of all paths: `a/1.html` comes after
    `b.html`); hidden files and folders are left out. An fsspec folder (s3://...) lists its files
    in one sorted pass (`fs.find`), leaving out any path with a hidden part.

    The build's plan (pipelines/build/stages.py) and `iter_pages` both walk with this, so a
    folder's pages are read in the same order whichever reads it: the shards depend on it."""
    if is_remote(path):
        fs, inner = remote_fs(path)
        yield from (fs.unstrip_protocol(p) for p in sorted(fs.find(inner)) if not _hidden(p))
        return
    for root, dirs, files in os.walk(local_path(path)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (os.path.join(root, f) for f in sorted(files) if not f.startswith("."))


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _is_dir(path: str) -> bool:
    if is_remote(path):
        try:
            fs, inner = remote_fs(path)
            return bool(fs.isdir(inner))
        except (ImportError, ValueError, OSError):
            return False
    return os.path.isdir(local_path(path))


def _exists(path: str) -> bool:
    if is_remote(path):
        try:
            fs, inner = remote_fs(path)
            return bool(fs.exists(inner))
        except (ImportError, ValueError, OSError):
            return False
    return os.path.exists(local_path(path))


# --------------------------------------------------------------------------------------------------
# Pages: archives, HTML files, folders
# --------------------------------------------------------------------------------------------------

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Servers label HTML with these when they don't know better; the body decides (WHATWG sniffing).
_UNLABELLED = frozenset({"", "unk", "unknown", "no-type", "application/octet-stream"})
_PAGE_TYPES = frozenset({"response", "resource", "revisit"})


def is_html_record(record: ArchiveRecord) -> bool:
    if record.content_type in HTML_TYPES:
        return True
    return record.content_type in _UNLABELLED and looks_like_html(record.body[:1024])


def iter_pages(
    path: str,
    counts: Counts,
    config: SourceConfig | None = None,
    on_record: Callable[[ArchiveRecord], object] | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[RawPage]:
    """Every HTML page in `path`: a WARC/ARC file (gzipped or not, told by its bytes), an HTML
    file (.html/.htm/.xhtml, optionally .gz) or a directory (recursively, in `walk` order, the
    build's, so that a rebuild sees pages in the same order); `classify` decides which. Everything
    else is a counted skip (`input.unsupported`; `warc.unreadable` for a path that is not there).

    `on_record` sees every response/resource/revisit record of an archive in the same pass (the
    build indexes the archived images with it: one read of each archive, each record counted
    once)."""
    config = config or SourceConfig()
    if _is_dir(path):
        for child in walk(path):
            yield from iter_pages(child, counts, config, on_record)
        return
    kind = classify(path)
    if kind == "archive":
        yield from _archive_pages(path, counts, config, on_record, byte_range)
    elif kind == "html":
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
    limit = config.max_html_bytes + MAX_HEADER_BYTES
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
# Inputs: paths, globs, fsspec URLs, URL lists
# --------------------------------------------------------------------------------------------------


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
    if is_remote(item):
        try:
            fs, inner = remote_fs(item)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"input {item!r}: no fsspec filesystem for it ({exc})") from exc
        if has_glob:
            return [fs.unstrip_protocol(p) for p in sorted(fs.glob(inner))]
        return [item] if fs.exists(inner) else []
    local = local_path(item)
    if has_glob:
        return sorted(p for p in glob.glob(local, recursive=True) if not fnmatch.fnmatch(p, "*/.*"))
    return [local] if os.path.exists(local) else []


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
