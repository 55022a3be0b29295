"""`m3w inspect stats`: one streaming pass over a shard set, constant memory, mergeable summaries.

Per-document quantities go into fixed-bin histograms (`Histogram`) rather than lists, so a 10 GB shard set
with millions of documents needs a few kB; quantiles are read off the bins (exact up to 8, then within one
quarter-octave, ≤ 19% relative error), min/max/mean are exact. Image sizes come from the record
(`width`/`height` = original decoded size, docs/format.md) and image formats from the stored bytes' magic
numbers (16-byte head; the rest of each image is skipped, not read).
"""

from __future__ import annotations

import bisect
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m3w_builder.fetch import sniff_image_format
from m3w_builder.reasons import reason
from pipelines.build.funnel import format_funnel
from pipelines.inspect.read import Sample, TarFormatError, Target, iter_target, shard_size

log = logging.getLogger(__name__)

HEAD_BYTES = 16  # enough for the JPEG/PNG/WebP/GIF signatures


def _edges() -> list[int]:
    """0..8 one by one, then 4 bins per octave (8, 10, 12, 14, 16, 20, 24, 28, 32, ...) up to 2^40."""
    edges = list(range(9))
    base = 8
    while base < 1 << 40:
        edges += [base + base // 4 * i for i in range(1, 5)]
        base *= 2
    return sorted(set(edges))


EDGES = _edges()


@dataclass(slots=True)
class Histogram:
    """Counts per bin of EDGES (bin i holds values in [EDGES[i], EDGES[i+1])), plus exact moments."""

    counts: Counter = field(default_factory=Counter)
    n: int = 0
    total: float = 0.0
    lo: float | None = None
    hi: float | None = None

    def add(self, value: float) -> None:
        self.counts[max(0, bisect.bisect_right(EDGES, value) - 1)] += 1
        self.n += 1
        self.total += value
        self.lo = value if self.lo is None else min(self.lo, value)
        self.hi = value if self.hi is None else max(self.hi, value)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.n += other.n
        self.total += other.total
        for v in (other.lo, other.hi):
            if v is not None:
                self.lo = v if self.lo is None else min(self.lo, v)
                self.hi = v if self.hi is None else max(self.hi, v)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def quantile(self, q: float) -> float:
        """The lower edge of the bin holding the q-quantile, clamped to [min, max]."""
        if not self.n:
            return 0.0
        if q >= 1.0:
            return float(self.hi or 0)
        rank, seen = q * (self.n - 1), 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                return float(min(max(EDGES[i], self.lo or 0), self.hi or 0))
        return float(self.hi or 0)

    def bins(self) -> list[tuple[int, int, int]]:
        """(lower edge, upper edge, count) for the non-empty span of bins."""
        if not self.counts:
            return []
        first, last = min(self.counts), max(self.counts)
        return [(EDGES[i], EDGES[i + 1], self.counts.get(i, 0)) for i in range(first, last + 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": round(self.mean, 3),
            "min": self.lo,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "max": self.hi,
            "bins": [[a, b, c] for a, b, c in self.bins()],
        }


def sniff_format(head: bytes | None) -> str:
    """Image container from its signature, not from the file name: the build's own table
    (`m3w_builder.fetch.sniff_image_format`); "missing" for no bytes, "unknown" for no match."""
    if not head:
        return "missing"
    return sniff_image_format(head) or "unknown"


_REASON_RE = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")


def reason_counts(report: dict[str, Any] | None) -> dict[str, int]:
    """Reason-code counts (`stage.why` → n) from a build's report.json, wherever the build put them.

    A report of `m3w build` keeps them all under "counts" (and again split by kind under "inputs",
    "progress" and "drops"): that one dict is read. Any other layout is searched for codes by their
    `<stage>.<why>` shape (DESIGN §2), at top level or one level down (e.g. under "reasons").
    """
    found: dict[str, int] = {}
    if isinstance(report, dict) and isinstance(report.get("counts"), dict):
        counts = {k: v for k, v in report["counts"].items() if isinstance(v, int) and v}
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def scan(d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, int) and not isinstance(v, bool) and _REASON_RE.match(str(k)):
                found[k] = found.get(k, 0) + v

    if isinstance(report, dict):
        scan(report)
        for v in report.values():
            if isinstance(v, dict):
                scan(v)
    return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def whitespace_tokens(texts: list[str]) -> list[int]:
    """Default token count: whitespace-separated words (Gopher's word count, Rae et al. 2021 app. A)."""
    return [len(t.split()) for t in texts]


def hf_token_counter(name: str) -> Callable[[list[str]], list[int]]:
    """Token counts from any transformers tokenizer (hub id when online, or a local directory)."""
    from transformers import AutoTokenizer  # lazy: stats without --tokenizer never imports torch

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:  # not found locally, and no hub access (HF_HUB_OFFLINE)
        raise ValueError(f"cannot load tokenizer {name!r}: {e}") from e

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    return count


@dataclass(slots=True)
class Stats:
    """Everything `stats` reports; `add(sample)` is the only mutator, `to_json()` the only view."""

    tokenizer: str = "whitespace"
    shards: int = 0
    shard_bytes: int = 0
    docs: int = 0
    images: int = 0
    text_chunks: int = 0
    tokens: int = 0
    json_bytes: int = 0
    image_bytes: int = 0
    images_per_doc: Histogram = field(default_factory=Histogram)
    tokens_per_doc: Histogram = field(default_factory=Histogram)
    chars_per_doc: Histogram = field(default_factory=Histogram)
    image_width: Histogram = field(default_factory=Histogram)
    image_height: Histogram = field(default_factory=Histogram)
    image_stored_bytes: Histogram = field(default_factory=Histogram)
    formats: Counter = field(default_factory=Counter)
    attach: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    reasons: dict[str, int] = field(default_factory=dict)
    funnel: dict[str, Any] = field(default_factory=dict)  # report.json's, when the job has one
    errors: list[str] = field(default_factory=list)

    def add(self, sample: Sample, count_tokens: Callable[[list[str]], list[int]]) -> None:
        self.json_bytes += sample.sizes.get("json", 0)
        record = sample.record
        if record is None:
            self.errors.append(
                f"{sample.shard}: sample {sample.key!r} at byte {sample.offset:,}: "
                + (sample.json_error or "no .json record")
            )
            return
        record = sample.view  # schema types only: a field of another type reads as absent
        texts = [t for t in record.get("texts") or [] if isinstance(t, str)]
        images = [im for im in record.get("images") or [] if isinstance(im, dict)]
        self.docs += 1
        self.images += len(images)
        self.text_chunks += len(texts)
        n_tokens = sum(count_tokens(texts))
        self.tokens += n_tokens
        self.images_per_doc.add(len(images))
        self.tokens_per_doc.add(n_tokens)
        self.chars_per_doc.add(sum(len(t) for t in texts))
        self.languages[record.get("lang") or "unknown"] += 1
        for im in images:
            self.attach[im.get("attach") or "none"] += 1
            for hist, key in ((self.image_width, "width"), (self.image_height, "height")):
                if isinstance(im.get(key), int):
                    hist.add(im[key])
            member = im.get("member")
            size = sample.sizes.get(member, 0) if member else 0
            self.image_bytes += size
            self.image_stored_bytes.add(size)
            self.formats[sniff_format(sample.members.get(member) if member else None)] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "shards": self.shards,
            "bytes": {
                "shards": self.shard_bytes,
                "json": self.json_bytes,
                "images": self.image_bytes,
            },
            "docs": self.docs,
            "images": self.images,
            "text_chunks": self.text_chunks,
            "tokens": self.tokens,
            "images_per_doc": self.images_per_doc.summary(),
            "tokens_per_doc": self.tokens_per_doc.summary(),
            "chars_per_doc": self.chars_per_doc.summary(),
            "image_width": self.image_width.summary(),
            "image_height": self.image_height.summary(),
            "image_stored_bytes": self.image_stored_bytes.summary(),
            "formats": dict(self.formats.most_common()),
            "attach": dict(self.attach.most_common()),
            "languages": dict(self.languages.most_common()),
            "reasons": self.reasons,
            "funnel": self.funnel,
            "errors": self.errors,
        }


def compute_stats(target: Target, tokenizer: str | None = None, progress: bool = False) -> Stats:
    """One pass over every shard of `target`; a broken shard is recorded in `errors`, not raised."""
    count = hf_token_counter(tokenizer) if tokenizer else whitespace_tokens
    stats = Stats(tokenizer=tokenizer or "whitespace")
    stats.shards = len(target.shards)
    stats.shard_bytes = sum(shard_size(p) for p in target.shards)
    stats.reasons = reason_counts(target.report)
    if isinstance(target.report, dict) and isinstance(target.report.get("funnel"), dict):
        stats.funnel = target.report["funnel"]
    stats.errors.extend(target.problems)

    def broken(e: TarFormatError) -> None:
        stats.errors.append(str(e))
        log.warning("%s", e)

    for sample in iter_target(target, images=HEAD_BYTES, progress=progress, on_error=broken):
        stats.add(sample, count)
    return stats


# ------------------------------------------------------------------------------------------ output


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def _top(counter: dict[str, int], k: int = 8) -> str:
    total = sum(counter.values()) or 1
    items = list(counter.items())
    shown = ", ".join(f"{name} {n:,} ({100 * n / total:.0f}%)" for name, n in items[:k])
    return shown + (f", +{len(items) - k} more" if len(items) > k else "") or "-"


SPARKS = " ▁▂▃▄▅▆▇█"


def sparkline(hist: Histogram) -> str:
    """The histogram's bins as one line of block characters, so the table shows each shape too."""
    counts = [c for _, _, c in hist.bins()]
    if not counts:
        return ""
    top = max(counts)
    return "".join(SPARKS[0 if not c else max(1, round(8 * c / top))] for c in counts)


def format_table(stats: Stats) -> str:
    """The human summary: one aligned `name  value` table, distributions as mean/p50/p90/max."""
    j = stats.to_json()
    rows: list[tuple[str, str]] = [
        ("shards", f"{stats.shards:,} ({human_bytes(stats.shard_bytes)})"),
        ("documents", f"{stats.docs:,}"),
        ("images", f"{stats.images:,} ({human_bytes(stats.image_bytes)} stored)"),
        ("text chunks", f"{stats.text_chunks:,}"),
        (f"tokens ({stats.tokenizer})", f"{stats.tokens:,}"),
    ]
    for label, key in (
        ("images / doc", "images_per_doc"),
        ("tokens / doc", "tokens_per_doc"),
        ("chars / doc", "chars_per_doc"),
        ("image width px", "image_width"),
        ("image height px", "image_height"),
        ("image stored bytes", "image_stored_bytes"),
    ):
        s = j[key]
        rows.append(
            (
                label,
                f"mean {s['mean']:>9,.1f}  min {s['min'] or 0:>7,}  p50 {s['p50']:>7,.0f}  "
                f"p90 {s['p90']:>7,.0f}  max {s['max'] or 0:>9,}  {sparkline(getattr(stats, key))}",
            )
        )
    rows += [
        ("formats", _top(j["formats"])),
        ("attachment", _top(j["attach"])),
        ("languages", _top(j["languages"])),
    ]
    drops = {c: n for c, n in stats.reasons.items() if reason(c).kind == "drop"}
    if drops:  # counts only: drops of pages, paragraphs and images are not shares of one whole
        shown = ", ".join(f"{c} {n:,}" for c, n in list(drops.items())[:12])
        rows.append(
            ("drop reasons", shown + (f", +{len(drops) - 12} more" if len(drops) > 12 else ""))
        )
    if stats.errors:
        rows.append(("ERRORS", f"{len(stats.errors)} (first: {stats.errors[0]})"))
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    if stats.funnel:
        table += "\n\nyield funnel (report.json)\n" + format_funnel(stats.funnel)
    return table


HIST_PANELS = (
    ("images_per_doc", "images per document"),
    ("tokens_per_doc", "tokens per document"),
    ("image_width", "image width (px)"),
    ("image_height", "image height (px)"),
    ("image_stored_bytes", "stored image bytes"),
    ("chars_per_doc", "characters per document"),
)


def plot_histograms(stats: Stats, path: str, dpi: int = 100) -> None:
    """A 2×3 grid of the histograms as a PNG (matplotlib imported here only: it is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (attr, title) in zip(axes.flat, HIST_PANELS, strict=True):
        bins = getattr(stats, attr).bins()
        if bins:
            ax.bar(range(len(bins)), [c for _, _, c in bins], width=0.9, color="#4a7ab5")
            step = max(1, len(bins) // 6)
            ticks = list(range(0, len(bins), step))
            ax.set_xticks(ticks, [f"{bins[i][0]:,}" for i in ticks], rotation=30, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("count", fontsize=8)
    fig.suptitle(f"{stats.docs:,} documents, {stats.images:,} images, {stats.shards} shards")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
