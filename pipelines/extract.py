"""`m3w extract FILE`: show the Document m3w makes of one HTML page, or of every page of a WARC/ARC.

A stable user contract (docs/extract.md): for an HTML file, ONE JSON object; for a WARC/ARC file, one
JSON line per HTML record. Each object has `url`, `texts`, `images` (`src`, `alt`, `width`, `height`),
`lang`, `lang_score`, `drops` (reason codes of removed paragraphs and images) and `stats`; a page the
build would drop has `"dropped": "<code>"` and `"detail"` instead of content, so the user sees why.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m3w_builder.config import PROFILES, BuildConfig
from m3w_builder.document import Document, RawPage
from m3w_builder.extract import page_to_document
from m3w_builder.reasons import Counts, Skip
from pipelines.cli_help import DefaultsFormatter

_ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="show the Document m3w makes of an HTML page or WARC file",
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("file", help="an .html/.htm (optionally .gz) file, or a .warc[.gz]/.arc[.gz]")
    p.add_argument("--url", help="page URL for an HTML file (default: its file:// URL)")
    p.add_argument("--profile", choices=PROFILES, default="m3w", help="threshold profile")
    p.add_argument("--config", help="a build.yaml overriding the profile")
    p.add_argument(
        "--no-filter",
        action="store_true",
        help="skip the text filters: show the DOM extraction alone",
    )
    p.set_defaults(func=run)


def document_json(doc: Document) -> dict[str, Any]:
    """The user-facing view of a Document (a subset of the shard record plus `drops`)."""
    return {
        "url": doc.url,
        "texts": doc.texts,
        "images": [
            {"src": n.src, "alt": n.alt, "width": n.width, "height": n.height}
            if n is not None
            else None
            for n in doc.images
        ],
        "lang": doc.lang,
        "lang_score": doc.lang_score,
        "drops": doc.drops,
        "stats": doc.stats,
    }


def page_json(page: RawPage, config: BuildConfig, filter_text: bool) -> dict[str, Any]:
    try:
        return document_json(page_to_document(page, config, filter_text=filter_text))
    except Skip as skip:
        return {"url": page.url, "dropped": skip.code, "detail": skip.detail}


def is_archive(path: Path) -> bool:
    """By name, else by the first bytes ("WARC/" or an ARC "filedesc://" header, gzipped or not)."""
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    with path.open("rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            start = f.read(16)
    except OSError:
        return False
    return start.startswith((b"WARC/", b"filedesc://"))


def _iter_archive(path: Path, counts: Counts, config: BuildConfig) -> Iterator[RawPage]:
    """HTML records of a WARC/ARC as RawPages (`m3w_builder.sources.iter_pages`); records the
    reader itself skips (too large, not HTML, corrupt) are counted in `counts`."""
    from m3w_builder.sources import iter_pages

    yield from iter_pages(str(path), counts, config.sources)


def _read_html(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"m3w extract: no such file: {path}", file=sys.stderr)
        return 2
    config = (
        BuildConfig.from_yaml(args.config, profile=args.profile)
        if args.config
        else BuildConfig.for_profile(args.profile)
    )
    filter_text = not args.no_filter
    try:
        _emit(path, args.url, config, filter_text, sys.stdout)
    except BrokenPipeError:  # `m3w extract x.warc | head`: stop quietly, like other Unix filters
        sys.stderr.close()
    return 0


def _emit(path: Path, url: str | None, config: BuildConfig, filter_text: bool, out: Any) -> None:
    if is_archive(path):
        counts = Counts()
        for page in _iter_archive(path, counts, config):
            out.write(json.dumps(page_json(page, config, filter_text), ensure_ascii=False) + "\n")
        if counts:  # reader-level skips have no page to print: summarise them on stderr
            print(f"m3w extract: reader counts {json.dumps(counts.as_dict())}", file=sys.stderr)
        return
    page = RawPage(url=url or path.resolve().as_uri(), body=_read_html(path), source_file=str(path))
    out.write(json.dumps(page_json(page, config, filter_text), ensure_ascii=False, indent=2) + "\n")
