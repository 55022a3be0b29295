"""`m3w inspect html`: a self-contained HTML gallery of documents as they will be trained on.

One file, no network: CSS inline, images as `data:` URIs, histograms as inline SVG (no matplotlib
needed). The first section holds the stats of the whole target; then each document is drawn in reading
order with the training tokens (`<BOS>`, `<EOC>`, `<image>`, `<EOS>`, DESIGN §4) and, in a gutter on the
left, one coloured bracket per image joining it to the text chunk that attends to it: chunk k for an
image attached `following`, chunk k-1 for `preceding` (DESIGN §4). Text that sees no image (its
cross-attention output is exactly 0) is marked as such. Brackets that do not overlap share a gutter
column (greedy interval colouring), so a per-document draw needs one column and a per-image draw more.

The stats pass and the gallery share one streaming read; `--sample` keeps a uniform reservoir sample
(Vitter's algorithm R) of n documents, so memory is bounded by n documents, not by the shard set.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.inspect.read import Sample, TarFormatError, Target, iter_target, shard_size
from pipelines.inspect.stats import (
    HEAD_BYTES,
    HIST_PANELS,
    Histogram,
    Stats,
    human_bytes,
    reason_counts,
    sniff_format,
    whitespace_tokens,
)

log = logging.getLogger(__name__)

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0aa6a6", "#d4a106", "#f032e6"]
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
MAX_INLINE_BYTES = 150_000  # larger images are inlined as a JPEG thumbnail to keep the page light
THUMB_SIDE = 480
MAX_TEXT_CHARS = 2_000  # a longer chunk is cut in the gallery (the count of hidden chars is shown)


# ------------------------------------------------------------------------------------------- layout


@dataclass(slots=True)
class Row:
    """One line of a document's layout: a text node or an image, with the images that it belongs to."""

    pos: int
    text: str | None = None
    image: dict[str, Any] | None = None
    number: int = 0  # 1-based image number (DESIGN §4); 0 for text
    chunk: int = 0  # the training chunk the row belongs to


def layout(record: dict[str, Any]) -> tuple[list[Row], dict[int, tuple[int, int]]]:
    """Rows in reading order, and for each image number the inclusive row span of its bracket.

    The span runs from the image's row over the text rows of the chunk it conditions, so it is always
    contiguous: chunk k follows image k; chunk k-1 ends right before image k.
    """
    rows: list[Row] = []
    number = 0
    for pos, (text, image) in enumerate(
        zip(record.get("texts") or [], record.get("images") or [], strict=False)
    ):
        if isinstance(image, dict):
            number += 1
            rows.append(Row(pos=pos, image=image, number=number, chunk=number))
        elif isinstance(text, str):
            rows.append(Row(pos=pos, text=text, chunk=number))
    spans: dict[int, tuple[int, int]] = {}
    for i, row in enumerate(rows):
        attach = row.image.get("attach") if row.image is not None else None
        if attach not in ("following", "preceding"):
            continue  # text rows, and images with no valid attachment (verify: schema.attach)
        seen_chunk = row.number if attach == "following" else row.number - 1
        text_rows = [j for j, r in enumerate(rows) if r.text is not None and r.chunk == seen_chunk]
        spans[row.number] = (min([i, *text_rows]), max([i, *text_rows]))
    return rows, spans


def assign_columns(spans: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Greedy interval colouring: brackets that do not overlap share a gutter column."""
    column_end: list[int] = []
    columns: dict[int, int] = {}
    for number, (lo, hi) in sorted(spans.items(), key=lambda kv: kv[1]):
        for c, end in enumerate(column_end):
            if end < lo:
                column_end[c] = hi
                columns[number] = c
                break
        else:
            columns[number] = len(column_end)
            column_end.append(hi)
    return columns


# ------------------------------------------------------------------------------------------- images


def data_uri(data: bytes | None) -> tuple[str | None, str]:
    """(data: URI or None if not displayable, description). Big images become JPEG thumbnails.

    Every image is fully decoded first: a browser shows a cut-off JPEG as a broken icon, and the
    gallery must say "not decodable" instead (the same finding `verify` reports as image.undecodable).
    """
    if not data:
        return None, "missing"
    fmt = sniff_format(data[:16])
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if fmt in MIME and len(data) <= MAX_INLINE_BYTES:
                return f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode()}", fmt
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=80)
    except Exception as e:  # noqa: BLE001 - an undecodable image is shown as such, not fatal
        return None, f"{fmt}, not decodable ({type(e).__name__})"
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}", f"{fmt}, thumb"


# -------------------------------------------------------------------------------------------- parts


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# Only an http(s) URL becomes a link: a record's `javascript:` or `data:` URL would run in the
# gallery's origin when clicked. Nothing a browser strips or folds (leading spaces, tabs, newlines,
# control characters) may appear, so what is checked is what the browser sees.
_WEB_URL = re.compile(r"^https?://[^\x00-\x20\x7f]+$", re.IGNORECASE)


def is_web_url(url: Any) -> bool:
    return isinstance(url, str) and bool(_WEB_URL.match(url))


def link(url: Any, label: str, cls: str) -> str:
    """`<a>` for an http(s) URL, else the label alone (as text, never as a live link)."""
    if not is_web_url(url):
        return f'<span class="{cls}">{label}</span>'
    return f'<a class="{cls}" href="{esc(url)}" rel="noreferrer noopener">{label}</a>'


def svg_histogram(hist: Histogram, title: str, width: int = 300, height: int = 150) -> str:
    """Bars of a Histogram as inline SVG, with the first/middle/last bin edges and the max count."""
    bins = hist.bins()
    pad_l, pad_b, pad_t = 34, 28, 18
    parts = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<text x="{width / 2}" y="12" text-anchor="middle" class="t">{esc(title)}</text>',
    ]
    if bins:
        top = max(c for _, _, c in bins) or 1
        plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
        bar_w = plot_w / len(bins)
        for i, (lo, hi, c) in enumerate(bins):
            h = plot_h * c / top
            parts.append(
                f'<rect x="{pad_l + i * bar_w:.1f}" y="{pad_t + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" fill="#4a7ab5">'
                f"<title>[{lo:,}, {hi:,}): {c:,}</title></rect>"
            )
        for i in sorted({0, len(bins) // 2, len(bins) - 1}):
            x = pad_l + (i + 0.5) * bar_w
            parts.append(
                f'<text x="{x:.1f}" y="{height - pad_b + 14}" text-anchor="middle" class="a">'
                f"{bins[i][0]:,}</text>"
            )
        parts.append(f'<text x="2" y="{pad_t + 8}" class="a">{top:,}</text>')
        parts.append(
            f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 4}" y2="{pad_t + plot_h}" '
            'stroke="#888"/>'
        )
    else:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text>')
    parts.append("</svg>")
    return "".join(parts)


def stats_section(stats: Stats, target: Target) -> str:
    j = stats.to_json()

    def dist(key: str) -> str:
        s = j[key]
        return (
            f"mean {s['mean']:,.1f} · min {s['min'] or 0:,} · p50 {s['p50']:,.0f} · "
            f"p90 {s['p90']:,.0f} · max {s['max'] or 0:,}"
        )

    def counts(d: dict[str, int]) -> str:
        total = sum(d.values()) or 1
        return ", ".join(f"{esc(k)} {v:,} ({100 * v / total:.0f}%)" for k, v in d.items()) or "–"

    rows = [
        ("target", esc(target.spec)),
        ("shards", f"{stats.shards:,} ({human_bytes(stats.shard_bytes)})"),
        ("documents", f"{stats.docs:,}"),
        ("images", f"{stats.images:,} ({human_bytes(stats.image_bytes)} stored)"),
        (f"tokens ({esc(stats.tokenizer)})", f"{stats.tokens:,}"),
        ("images / doc", dist("images_per_doc")),
        ("tokens / doc", dist("tokens_per_doc")),
        ("image width px", dist("image_width")),
        ("image height px", dist("image_height")),
        ("formats", counts(j["formats"])),
        ("attachment", counts(j["attach"])),
        ("languages", counts(j["languages"])),
        ("reason codes", counts(stats.reasons)),
    ]
    if stats.errors:
        rows.append(("errors", "<br>".join(esc(e) for e in stats.errors[:20])))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    charts = "".join(svg_histogram(getattr(stats, a), t) for a, t in HIST_PANELS)
    return f'<section id="stats"><h2>Stats</h2><table class="stats">{table}</table><div class="charts">{charts}</div></section>'


def document_card(sample: Sample, index: int) -> str:
    """One document: metadata header, then a grid of gutter columns + content rows (see module doc)."""
    rec = sample.view  # schema types only: a field of another type reads as absent
    rows, spans = layout(rec)
    columns = assign_columns(spans)
    n_cols = max(columns.values(), default=-1) + 1
    colour = {n: PALETTE[(n - 1) % len(PALETTE)] for n in spans}
    seen_by: dict[int, list[int]] = {}
    for number, (lo, hi) in spans.items():
        for r in range(lo, hi + 1):
            if rows[r].text is not None:
                seen_by.setdefault(r, []).append(number)

    meta = [
        link(rec.get("url", ""), esc(rec.get("url", "")), "url"),
        f"key <code>{esc(sample.key)}</code> · shard {esc(sample.shard)} @ {sample.offset:,}",
        f"lang <b>{esc(rec.get('lang') or '?')}</b>"
        + (f" ({rec['lang_score']:.2f})" if isinstance(rec.get("lang_score"), int | float) else "")
        + f" · p_next {esc(rec.get('p_next'))} · fetched {esc(rec.get('fetched'))}",
    ]
    source = rec.get("source") or {}
    if source.get("warc"):
        meta.append(f"source {esc(source['warc'])} @ {esc(source.get('offset'))}")
    chips = "".join(
        f'<span class="chip">{esc(k)}: {esc(_short(v))}</span>'
        for k, v in _flatten(rec.get("stats") or {})
    )

    cells = ['<div class="tok" style="grid-column: 1 / -1">&lt;BOS&gt;</div>']
    for r, row in enumerate(rows):
        gutter = []
        for c in range(n_cols):
            style = ' class="gap"'
            for number, col in columns.items():
                lo, hi = spans[number]
                if col == c and lo <= r <= hi:
                    ends = ("top" if r == lo else "") + (" bottom" if r == hi else "")
                    mark = " dot" if rows[r].number == number else ""
                    style = f' class="br {ends}{mark}" style="--c:{colour[number]}"'
            gutter.append(f"<div{style}></div>")
        cells.append("".join(gutter))
        lonely = row.number in spans and spans[row.number] == (r, r)
        cells.append(_content(row, colour, seen_by.get(r, []), sample, lonely))
    cells.append('<div class="tok" style="grid-column: 1 / -1">&lt;EOC&gt; &lt;EOS&gt;</div>')
    grid = (
        f'<div class="doc-grid" style="grid-template-columns: repeat({n_cols}, 14px) 1fr">'
        + "".join(cells)
        + "</div>"
    )
    return (
        f'<article class="doc" id="doc-{index}" data-key="{esc(sample.key)}">'
        f'<header><span class="idx">#{index}</span> {"<br>".join(meta)}'
        f'<div class="chips">{chips}</div></header>{grid}</article>'
    )


_FLATTEN_DEPTH = 4  # the build writes stats two levels deep; deeper values are shown summarised
_MAX_CHIPS = 200


def _flatten(d: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """The record's filter statistics as dotted `stage.name: value` pairs (nested dicts opened, to
    `_FLATTEN_DEPTH` levels and `_MAX_CHIPS` pairs: a hostile record cannot recurse or flood)."""
    out: list[tuple[str, Any]] = []
    for k, v in sorted(d.items()):
        if isinstance(v, dict) and depth < _FLATTEN_DEPTH:
            out += _flatten(v, f"{prefix}{k}.", depth + 1)
        else:
            out.append((f"{prefix}{k}", v))
        if len(out) >= _MAX_CHIPS:
            return out[:_MAX_CHIPS]
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str):
        s = v
    else:
        try:
            s = json.dumps(v)
        except (RecursionError, ValueError):
            s = f"<{type(v).__name__}>"
    return s if len(s) <= 40 else s[:37] + "..."


def _content(
    row: Row, colour: dict[int, str], seen: list[int], sample: Sample, lonely: bool = False
) -> str:
    """One row's HTML; `lonely`: the image's chunk holds no text, so no text token attends to it."""
    if row.image is not None:
        im = row.image
        n = row.number
        arrow = {
            "following": "attached → following text ↓",
            "preceding": "attached ← preceding text ↑",
        }.get(im.get("attach"), f"attach={im.get('attach')!r}: seen by no text")
        if lonely:
            arrow += " · no text there: seen by no text token"
        uri, fmt = data_uri(sample.members.get(str(im.get("member"))))
        size = f"{im.get('width')}×{im.get('height')}" if im.get("width") else "?×?"
        if uri:
            pic = f'<img src="{uri}" alt="{esc(im.get("alt", ""))}" loading="eager">'
        else:
            pic = f'<div class="noimg">image {esc(fmt)}</div>'
        caption = (
            f'<div class="cap"><span class="badge" style="background:{colour.get(n, "#777")}">'
            f"image {n} · {arrow}</span> "
            f"{size} · {esc(fmt)} · <code>{esc(im.get('member'))}</code>"
            + (f' · alt="{esc(im["alt"])}"' if im.get("alt") else "")
            + (
                f" · {link(im['src'], esc(_short(im['src'])), 'src')}"
                if is_web_url(im.get("src"))
                else ""
            )
            + "</div>"
        )
        return (
            f'<div class="row img-row" data-image="{n}" data-attach="{esc(im.get("attach"))}">'
            f'<div class="tok">&lt;EOC&gt; &lt;image&gt;</div>'
            f'<figure style="--c:{colour.get(n, "#777")}">{pic}{caption}</figure></div>'
        )
    text = row.text or ""
    hidden = ""
    if len(text) > MAX_TEXT_CHARS:
        hidden = f' <span class="more">… {len(text) - MAX_TEXT_CHARS:,} more chars</span>'
        text = text[:MAX_TEXT_CHARS]
    if seen:
        tags = "".join(
            f'<span class="sees" style="background:{colour[n]}">sees image {n}</span>' for n in seen
        )
        tint = f' style="--c:{colour[seen[0]]}"'
        cls = "row text-row seen"
    else:
        tags = '<span class="sees none">sees no image</span>'
        tint, cls = "", "row text-row unseen"
    return (
        f'<div class="{cls}" data-sees="{",".join(map(str, seen))}"{tint}>{tags}'
        f"<p>{esc(text)}{hidden}</p></div>"
    )


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f4f1;color:#222}
main{max-width:1000px;margin:0 auto;padding:16px}
h1{font-size:22px;margin:8px 0} h2{font-size:18px;border-bottom:2px solid #ccc;padding-bottom:4px}
.legend{background:#fff;border:1px solid #ddd;padding:8px 12px;border-radius:6px;font-size:13px}
table.stats{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
table.stats th{text-align:left;white-space:nowrap;padding:3px 10px;color:#555;vertical-align:top}
table.stats td{padding:3px 10px} table.stats tr:nth-child(odd){background:#fafafa}
.charts{display:flex;flex-wrap:wrap;gap:8px;margin-top:10px}
svg.hist{background:#fff;border:1px solid #ddd;border-radius:4px}
svg .t{font-size:11px;font-weight:600} svg .a{font-size:9px;fill:#555}
article.doc{background:#fff;border:1px solid #ccc;border-radius:8px;margin:18px 0;padding:12px 14px}
article.doc header{font-size:12.5px;color:#444;border-bottom:1px solid #eee;padding-bottom:6px;margin-bottom:6px}
.idx{font-weight:700;color:#000;margin-right:6px} a.url{font-size:14px;font-weight:600;word-break:break-all}
.chip{display:inline-block;background:#eef;border-radius:10px;padding:0 7px;margin:3px 3px 0 0;font-size:11px}
.doc-grid{display:grid;column-gap:0;row-gap:0}
.doc-grid>.gap{}
.br{background:linear-gradient(var(--c),var(--c)) center/4px 100% no-repeat}
.br.top{border-top:3px solid var(--c);margin-top:10px}
.br.bottom{border-bottom:3px solid var(--c);margin-bottom:10px}
.br.dot{background:radial-gradient(circle,var(--c) 5px,transparent 6px) center/100% 100% no-repeat,
        linear-gradient(var(--c),var(--c)) center/4px 100% no-repeat}
.row{padding:4px 0 4px 10px;min-width:0}
.text-row.seen{background:color-mix(in srgb,var(--c) 9%,white);border-left:4px solid var(--c)}
.text-row.unseen{border-left:4px dashed #bbb;color:#666}
.text-row p{margin:2px 0 0}
.sees{display:inline-block;color:#fff;font-size:10.5px;border-radius:3px;padding:0 5px;margin-right:4px}
.sees.none{background:#999}
figure{margin:4px 0;border:4px solid var(--c);border-radius:6px;display:inline-block;padding:4px;background:#fff}
figure img{display:block;max-width:min(100%,420px);max-height:360px}
.cap{font-size:12px;color:#333;margin-top:4px;max-width:420px}
.badge{color:#fff;border-radius:3px;padding:1px 6px;font-weight:600}
.noimg{width:160px;height:90px;background:repeating-linear-gradient(45deg,#eee,#eee 8px,#ddd 8px,#ddd 16px);
       display:flex;align-items:center;justify-content:center;font-size:12px;color:#a00}
.tok{font:11px ui-monospace,monospace;color:#999}
.more{color:#999;font-style:italic}
a.src{color:#557;font-size:11px;word-break:break-all}
"""

LEGEND = (
    '<div class="legend">Each document is shown in reading order as the trainer sees it: '
    "<code>&lt;BOS&gt; text &lt;EOC&gt; &lt;image&gt; text … &lt;EOC&gt; &lt;EOS&gt;</code>. "
    "Each image has a colour; the bracket in the left gutter and the tinted text show which text "
    "chunk attends to it: <b>→ following</b> (the text after it, Flamingo's default) or "
    "<b>← preceding</b> (the text before it). Text marked <i>sees no image</i> has its "
    "cross-attention output set to 0 (DESIGN §4).</div>"
)


def render_page(
    stats: Stats, target: Target, samples: list[tuple[int, Sample]], sampled: bool
) -> str:
    how = "a uniform random sample of" if sampled else "the first"
    docs = "".join(document_card(s, i) for i, s in samples)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>m3w inspect: {esc(target.spec)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>m3w shards: {esc(target.spec)}</h1>{LEGEND}{stats_section(stats, target)}"
        f'<section id="docs"><h2>Documents ({how} {len(samples)} of {stats.docs:,})</h2>{docs}'
        "</section></main></body></html>"
    )


# ---------------------------------------------------------------------------------------------- run


def write_gallery(
    target: Target,
    out: str | Path,
    n: int = 50,
    sample: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> str:
    """Stream the target once (stats + the first n or a reservoir sample of n), write one HTML file."""
    stats = Stats()
    stats.shards = len(target.shards)
    stats.shard_bytes = sum(shard_size(p) for p in target.shards)
    stats.reasons = reason_counts(target.report)
    stats.errors.extend(target.problems)
    rng = random.Random(seed)
    chosen: list[tuple[int, Sample]] = []

    def broken(e: TarFormatError) -> None:
        stats.errors.append(str(e))
        log.warning("%s", e)

    # Algorithm R's draw does not depend on the document, so it is made before the document's images
    # are reached: only the images of documents that will be shown are read, the rest are seeked past
    # (16-byte heads for the format stats), and a 10 GB set costs about what `stats` costs.
    seen = 0
    slot = 0 if n > 0 else -1  # where the next document goes; -1: not shown

    def want(member: str) -> bool | int:
        return True if slot >= 0 else HEAD_BYTES

    for s in iter_target(target, images=want, progress=progress, on_error=broken):
        stats.add(s, whitespace_tokens)
        if s.record is None:
            continue
        if slot >= 0:
            if slot < len(chosen):
                chosen[slot] = (seen, s)
            else:
                chosen.append((seen, s))
        seen += 1
        if len(chosen) < n:
            slot = len(chosen)
        elif sample:
            j = rng.randrange(seen + 1)  # keep with probability n / (seen + 1)
            slot = j if j < n else -1
        else:
            slot = -1
    chosen.sort(key=lambda t: t[0])
    page = render_page(stats, target, chosen, sampled=sample)
    Path(out).write_text(page, encoding="utf-8")
    return f"{len(chosen)} documents, {len(page) / 1e6:.1f} MB"
