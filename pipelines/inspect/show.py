"""`m3w inspect show` and `grep`: read documents in the terminal, in reading order.

An image becomes a placeholder line, `[image 2 · 640×480 · attached → following · alt="..."]`, numbered
from 1 as in DESIGN §4 (chunk k is the text that image k's `<image>` token starts), so what you read is
the order the trainer sees. The arrow says which text the image conditions: → the text after it,
← the text before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pipelines.inspect.read import Sample, TarFormatError, Target, iter_target
from pipelines.inspect.stats import sniff_format

ARROWS = {"following": "attached → following", "preceding": "attached ← preceding"}
EXT_OF_FORMAT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}


def image_label(number: int, image: dict[str, Any]) -> str:
    """The placeholder text for image `number` (1-based) of a record's `images` list."""
    parts = [f"image {number}"]
    if image.get("width") and image.get("height"):
        parts.append(f"{image['width']}×{image['height']}")
    parts.append(ARROWS.get(str(image.get("attach")), f"attach={image.get('attach')!r}"))
    if image.get("alt"):
        alt = str(image["alt"])
        parts.append('alt="' + (alt if len(alt) <= 80 else alt[:77] + "...") + '"')
    return "[" + " · ".join(parts) + "]"


def render(sample: Sample, width: int) -> str:
    """The whole document as terminal text: a header, then text chunks and image placeholders."""
    rec = sample.view  # schema types only: a field of another type reads as absent
    source = rec.get("source") or {}
    lang = rec.get("lang") or "?"
    if rec.get("lang_score") is not None:
        lang += f" ({rec['lang_score']:.2f})"
    head = [
        f"key     {sample.key}   shard {sample.shard} @ byte {sample.offset:,}",
        f"url     {rec.get('url', '')}",
        f"lang    {lang}   p_next {rec.get('p_next')}   fetched {rec.get('fetched')}",
        f"source  {source.get('warc') or '-'} @ {source.get('offset')}",
    ]
    lines = [*head, "─" * min(width, 100)]
    number = 0
    for text, image in zip(rec.get("texts") or [], rec.get("images") or [], strict=False):
        if isinstance(text, str):
            lines.append(textwrap.fill(text, width=width) if text.strip() else "")
        elif isinstance(image, dict):
            number += 1
            label = image_label(number, image)
            lines.append(textwrap.fill(label, width=width, subsequent_indent="  "))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _warn(e: TarFormatError) -> None:
    """A broken shard does not stop show/grep: say so on stderr and read the next shard."""
    print(f"m3w inspect: warning: {e}", file=sys.stderr)


def _find(target: Target, key: str | None, index: int | None, images: bool) -> Sample | None:
    """Scan for the document; image bytes are read only for it (all others are seeked past)."""
    i = 0

    def want(member: str) -> bool:
        # asked after this sample's .json was read and `i` counts the samples already handed out
        return images and (member.partition(".")[0] == key if key is not None else i == index)

    for sample in iter_target(target, images=want, on_error=_warn):
        if (key is not None and sample.key == key) or (key is None and i == index):
            return sample
        i += 1
    return None


NAME_MAX = 255  # bytes in one file name on Linux/macOS file systems (ext4, APFS, XFS)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")  # separators, NUL, terminal control characters


def confined_path(out_dir: Path, name: str) -> Path | None:
    """`out_dir / name` when `name` (made from shard content) is one plain file name that stays in
    `out_dir`, else None: no separator, NUL or control character, not `.`/`..` or hidden, at most
    NAME_MAX bytes. A tar member named `../../x/.bashrc` or `/abs/path/pwn.1.jpg` is refused, never
    joined (pathlib drops `out_dir` when joined to an absolute name)."""
    if not name or name.startswith(".") or _UNSAFE_NAME.search(name):
        return None
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return None
    path = out_dir / name
    if path.parent.resolve() != out_dir.resolve():  # belt and braces: pathlib's own view
        return None
    return path


def write_images(sample: Sample, out_dir: Path, refused: list[str] | None = None) -> list[Path]:
    """Write `{key}.{pos}.{ext}` files into `out_dir` and nowhere else; the extension follows the
    bytes' real format. A name that would leave `out_dir` is appended to `refused` (with why) and
    not written. Files are opened without following a symlink already sitting at the name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, data in sorted(sample.members.items()):
        if not data:
            continue
        stem, _, ext = suffix.rpartition(".")
        ext = EXT_OF_FORMAT.get(sniff_format(data[:16]), ext)
        name = f"{sample.key}.{stem}.{ext}"
        path = confined_path(out_dir, name)
        if path is None:
            if refused is not None:
                refused.append(f"{name!r}: not a plain file name inside {out_dir}")
            continue
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:  # e.g. ELOOP: a symlink sits there
            if refused is not None:
                refused.append(f"{name!r}: {e.strerror}")
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def show(
    target: Target,
    key: str | None = None,
    index: int | None = None,
    images_dir: Path | None = None,
    width: int | None = None,
    out: TextIO | None = None,
    as_json: bool = False,
) -> bool:
    """Print one document (by key, or the index-th of the target); False if there is no such one.

    `as_json` prints the shard record as stored (m3w/2 or m3w/1) instead of the reading-order view."""
    if (key is None) == (index is None):
        raise ValueError("give exactly one of a key or an index")
    sample = _find(target, key, index, images=True if images_dir else False)
    if sample is None:
        return False
    width = width or max(40, shutil.get_terminal_size((100, 24)).columns)
    if as_json:
        try:
            text = json.dumps(sample.stored or sample.record, indent=1, ensure_ascii=False) + "\n"
        except RecursionError:  # json.loads took it; a deeper stack here may not
            text = f"(record of {sample.key!r} is nested too deeply to print)\n"
    else:
        text = render(sample, width)
    if images_dir is not None:
        refused: list[str] = []
        paths = write_images(sample, images_dir, refused)
        text += f"\n{len(paths)} images written to {images_dir}\n"
        for why in refused:
            print(f"m3w inspect: refused to write {why}", file=sys.stderr)
    if out is not None:
        out.write(text)
    return True


def snippet(
    text: str, m: re.Match[str], context: int = 60, mark: tuple[str, str] = ("»", "«")
) -> str:
    """The match with `context` characters each side, on one line."""
    a, b = max(0, m.start() - context), min(len(text), m.end() + context)
    inner = f"{mark[0]}{text[m.start() : m.end()]}{mark[1]}"
    s = (
        ("…" if a else "")
        + text[a : m.start()]
        + inner
        + text[m.end() : b]
        + ("…" if b < len(text) else "")
    )
    return " ".join(s.split())


def grep_target(
    target: Target,
    pattern: str,
    ignore_case: bool = False,
    url_only: bool = False,
    on_error: Callable[[TarFormatError], None] | None = None,
) -> Iterator[tuple[Sample, str, str]]:
    """(sample, where, snippet) for the first match in each matching document; `where` is url or text N."""
    regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    for sample in iter_target(target, images=False, on_error=on_error or _warn):
        rec = sample.view
        url = rec["url"]
        m = regex.search(url)
        if m:
            yield sample, "url", snippet(url, m)
            continue
        if url_only:
            continue
        for pos, text in enumerate(rec.get("texts") or []):
            if isinstance(text, str) and (m := regex.search(text)):
                yield sample, f"text {pos}", snippet(text, m)
                break


def grep(
    target: Target,
    pattern: str,
    ignore_case: bool = False,
    url_only: bool = False,
    max_results: int = 0,
    out: TextIO | None = None,
) -> tuple[int, int]:
    """Print `key  shard  url` and a snippet per matching document; returns (matches, broken shards)."""
    n, broken = 0, []

    def on_error(e: TarFormatError) -> None:
        broken.append(e)
        _warn(e)

    for sample, where, snip in grep_target(target, pattern, ignore_case, url_only, on_error):
        n += 1
        if out is not None:
            out.write(f"{sample.key}  {sample.shard}  {sample.url}\n    {where}: {snip}\n")
        if max_results and n >= max_results:
            break
    return n, len(broken)
