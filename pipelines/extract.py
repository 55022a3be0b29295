"""`m3w extract FILE`: show the Document m3w makes of one HTML page, or of every page of a WARC/ARC.

A stable user contract (docs/extract.md): for an HTML file, ONE JSON object; for a WARC/ARC file, one
JSON line per HTML record. Each object has `url`, `texts`, `images` (`src`, `alt`, `width`, `height`),
`lang`, `lang_score`, `drops` (reason codes of removed paragraphs and images) and `stats`; a page the
build would drop has `"dropped": "<code>"` and `"detail"` instead of content, so the user sees why.

Bounded like the build: files are read by the build's readers (`m3w_builder.sources`: a `.html.gz`
is inflated to at most `sources.max_html_bytes` + 1, archive records are streamed within their
caps), and every page is parsed in a child process killed at the build's per-page deadline
(`pipelines.page_worker`), so a page libxml2 cannot finish is `html.parse_timeout`, not a hang.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from m3w_builder.config import PROFILES, BuildConfig
from m3w_builder.document import Document, RawPage
from m3w_builder.extract import page_to_document
from m3w_builder.reasons import Counts, Skip
from pipelines.cli_help import DefaultsFormatter


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
    p.add_argument(
        "--page-kill-timeout",
        type=float,
        help="seconds before a page's parser process is killed (default, as the build: 3×parse+5)",
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
    """Whether the build reads `path` as a WARC/ARC (`sources.classify`: its first bytes, gzip
    looked through, else its name); anything else is shown as one HTML file."""
    from m3w_builder.sources import classify

    return classify(str(path)) == "archive"


def _iter_archive(path: Path, counts: Counts, config: BuildConfig) -> Iterator[RawPage]:
    """HTML records of a WARC/ARC as RawPages (`m3w_builder.sources.iter_pages`); records the
    reader itself skips (too large, not HTML, corrupt) are counted in `counts`."""
    from m3w_builder.sources import iter_pages

    yield from iter_pages(str(path), counts, config.sources)


def _html_page(path: Path, url: str | None, config: BuildConfig) -> RawPage | dict[str, Any]:
    """The page of an HTML file, read as the build reads one (gzip looked through, never past
    `max_html_bytes`: a 1.2 GB `.html.gz` costs 5 MB), or the drop the build would count."""
    from m3w_builder.sources import read_html_file

    counts = Counts()
    page = read_html_file(str(path), counts, config.sources)
    page_url = url or path.resolve().as_uri()
    if page is None:
        from m3w_builder.reasons import reason

        drops = [c for c in counts if reason(c).kind == "drop"]
        code = drops[0] if drops else "html.unreadable"
        return {"url": page_url, "dropped": code, "detail": f"{path}: {code}"}
    return dataclasses.replace(page, url=page_url)


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
    kill_timeout = args.page_kill_timeout
    if kill_timeout is None:
        from pipelines.page_worker import default_kill_timeout

        kill_timeout = default_kill_timeout(config)
    try:
        if kill_timeout > 0:
            from pipelines.page_worker import PageWorker

            with PageWorker(config, filter_text, kill_timeout) as worker:
                _emit(path, args.url, config, worker.run, sys.stdout)
        else:  # 0: parse in this process (debugging; no protection against a hang)
            _emit(path, args.url, config, lambda p: page_json(p, config, filter_text), sys.stdout)
    except BrokenPipeError:  # `m3w extract x.warc | head`: stop quietly, like other Unix filters
        sys.stderr.close()
    return 0


def _emit(
    path: Path,
    url: str | None,
    config: BuildConfig,
    to_json: Callable[[RawPage], dict[str, Any]],
    out: Any,
) -> None:
    if is_archive(path):
        counts = Counts()
        for page in _iter_archive(path, counts, config):
            out.write(json.dumps(to_json(page), ensure_ascii=False) + "\n")
        if counts:  # reader-level skips have no page to print: summarise them on stderr
            print(f"m3w extract: reader counts {json.dumps(counts.as_dict())}", file=sys.stderr)
        return
    page = _html_page(path, url, config)
    result = page if isinstance(page, dict) else to_json(page)
    out.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
