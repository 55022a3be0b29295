"""Reason codes and their counts: nothing is dropped without a code and a count (STYLE (a)3).

A code is `<stage>.<why>`, e.g. `html.too_large`, `text.stopword_ratio`, `image.too_small`. Stages raise
`Skip(code)` for whole-item drops; the stage boundary catches it, counts it and logs it. `Counts` is a
Counter so per-task counts merge with `+` and serialise to report.json as a plain dict.

`REASONS` is the registry of every code the build counts, each with its kind and a one-line meaning
(`m3w inspect codes` prints it; docs/build.md lists it):

- **input** counters say what was read (`warc.records`): they are no losses and never enter a share
  of drops;
- **progress** counters say where things went (`image.from_archive`, `fetch.requests`, the
  `yield.*` steps of the funnel);
- **drop** codes name why one page, paragraph or image was left out; `step` is the funnel step
  (`pipelines/build/funnel.py`) whose loss it explains.

Families share one entry: `image.http_404` and `page.http_503` are `image.http_*`, `page.http_*`;
every image-fetch code has a `page.` twin for pages fetched from URL lists.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Drop the current item with a reason code; `detail` names the input and offset for the log.

    `drops` carries the codes of the smaller drops the item had already collected (a page's
    images and paragraphs removed by the DOM rules before the page itself was dropped), so they
    reach the report too."""

    def __init__(self, code: str, detail: str = "", drops: list[str] | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.drops = list(drops or [])


class Counts(Counter):
    """Reason-code and progress counters, mergeable across tasks with `+` / `update`."""

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.items())}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    kind: str  # "input" | "progress" | "drop"
    step: str  # the funnel step a drop explains ("" for input/progress counters)
    meaning: str


# Funnel steps a drop can explain, in pipeline order (pipelines/build/funnel.py names them for people).
STEPS = (
    "html",  # a capture that is no HTML page (or could not be read or fetched)
    "extract",  # an HTML page that gave no document
    "text",  # a document the text rules dropped
    "dedup",  # a document removed as a duplicate, or by --max-docs
    "images",  # a document left without an image candidate, or without a kept image
    "image_dom",  # an <img> the DOM rules left out before any byte was read
    "image_resolve",  # an image whose bytes could not be had
    "image_filter",  # an image whose bytes failed a guard or filter
    "paragraph",  # a paragraph removed from a kept document
    "loader",  # the training loader's skips (no funnel step of the build)
)

_FETCH_FAILURES = {
    "bad_url": "the URL cannot be parsed or has no host",
    "ssrf_blocked": "refused by the SSRF guard (private, loopback or link-local address, or a "
    "scheme other than http/https)",
    "dns_error": "the host name does not resolve",
    "connect_error": "the connection was refused or failed",
    "fetch_timeout": "no complete answer within the fetch timeouts, after retries",
    "fetch_error": "the HTTP exchange failed (reset, protocol error)",
    "redirect_limit": "more redirects than fetch.max_redirects",
    "robots_noai": "the server said X-Robots-Tag: noai / noimageai",
    "too_large_bytes": "the body is larger than the byte cap",
    "http_*": "the server answered with this HTTP status",
}

_ENTRIES: list[Reason] = [
    # --- inputs
    Reason("warc.records", "input", "", "WARC/ARC records read (requests and metadata included)"),
    Reason("warc.html_pages", "input", "", "archive records handed to the parser as HTML pages"),
    Reason("html.files", "input", "", "HTML files read"),
    Reason("archive.indexed", "input", "", "archived non-HTML responses indexed for images"),
    Reason("archive.revisits", "input", "", "revisit records indexed (resolved by digest or URI)"),
    # --- progress
    Reason("yield.read", "progress", "", "captures read: archive responses, HTML files, URLs"),
    Reason("yield.html", "progress", "", "HTML pages handed to the parser"),
    Reason("yield.extracted", "progress", "", "pages the DOM rules turned into a document"),
    Reason("yield.text_ok", "progress", "", "documents that passed the text rules"),
    Reason("yield.deduped", "progress", "", "documents left after job-wide dedup"),
    Reason("yield.with_images", "progress", "", "documents with at least one image candidate"),
    Reason("yield.image_candidates", "progress", "", "image candidates of those documents"),
    Reason("yield.docs_kept", "progress", "", "documents written to shards"),
    Reason("image.from_archive", "progress", "", "images whose bytes came from the job's archives"),
    Reason("image.from_web", "progress", "", "images whose bytes were fetched from the web"),
    Reason("image.from_data_uri", "progress", "", "images decoded from a data: URI"),
    Reason("image.kept", "progress", "", "images written to shards"),
    Reason("fetch.requests", "progress", "", "HTTP requests sent"),
    Reason("fetch.retries", "progress", "", "HTTP requests retried after a timeout or 5xx"),
    Reason("fetch.redirects", "progress", "", "HTTP redirects followed"),
    Reason("fetch.bytes", "progress", "", "HTTP body bytes received"),
    # --- step "html": captures that are no page
    Reason("warc.not_html", "drop", "html", "an archived response that is not HTML"),
    Reason("warc.http_status", "drop", "html", "an archived response whose status is not 200"),
    Reason("warc.revisit", "drop", "html", "a revisit record (no payload of its own)"),
    Reason("warc.corrupt_record", "drop", "html", "a damaged archive record, skipped"),
    Reason("warc.undecodable_body", "drop", "html", "an archived body whose encoding is broken"),
    Reason("warc.unreadable", "drop", "html", "an archive that cannot be opened or read"),
    Reason("html.unreadable", "drop", "html", "an HTML file that cannot be read"),
    Reason("html.empty", "drop", "html", "an archived HTML response with an empty body"),
    Reason("input.unsupported", "drop", "html", "an input that is neither an archive nor HTML"),
    Reason("input.error", "drop", "html", "an input that failed while being read (see the log)"),
    # --- step "extract": HTML pages that give no document
    Reason("html.too_large", "drop", "extract", "the page is over sources.max_html_bytes"),
    Reason("html.no_content", "drop", "extract", "no text or image survived the DOM rules"),
    Reason("html.not_html", "drop", "extract", "the body is binary, not HTML"),
    Reason("html.too_deep", "drop", "extract", "the DOM is deeper than sources.max_depth"),
    Reason("html.parse_timeout", "drop", "extract", "parsing ran past the deadline"),
    Reason("html.parse_crash", "drop", "extract", "parsing crashed its worker twice"),
    Reason("html.parse_error", "drop", "extract", "the parser failed on this page"),
    Reason("html.parser_error", "drop", "extract", "an unexpected error in the page recipe"),
    # --- step "dedup"
    Reason("dedup.page_url", "drop", "dedup", "an older capture of the same page URL"),
    Reason("dedup.identical_doc", "drop", "dedup", "the same document under another URL"),
    Reason("dedup.near_duplicate", "drop", "dedup", "a near copy of another document (MinHash)"),
    Reason("job.max_docs", "drop", "dedup", "beyond --max-docs"),
    Reason("doc.no_text", "drop", "dedup", "no text left after boilerplate paragraphs went"),
    # --- step "images"
    Reason("doc.no_images", "drop", "images", "no image left (Flamingo keeps pages with one)"),
    # --- step "image_dom": <img> left out by the DOM rules
    Reason("image.no_src", "drop", "image_dom", "an <img> naming no URL"),
    Reason("image.tiny_data_uri", "drop", "image_dom", "a data: URI too small to be a picture"),
    Reason("image.tracking_pixel", "drop", "image_dom", "a beacon or spacer (1x1, known URL)"),
    Reason("image.url_rule", "drop", "image_dom", "a URL naming a logo, icon, button or ad"),
    Reason("image.outside_main", "drop", "image_dom", "outside the page's main content"),
    Reason("image.boilerplate", "drop", "image_dom", "inside navigation, share or ad chrome"),
    Reason("image.tag", "drop", "image_dom", "inside a non-content element (nav, form, aside)"),
    Reason("image.hidden", "drop", "image_dom", "inside an element that is not rendered"),
    Reason("image.duplicate_in_page", "drop", "image_dom", "the same URL earlier on the page"),
    Reason(
        "image.too_many", "drop", "image_dom", "beyond images.max_images_per_doc (in reading order)"
    ),
    Reason("image.duplicate", "drop", "image_dom", "the same URL twice in one document"),
    Reason("dedup.image_url_frequent", "drop", "image_dom", "a URL on too many pages (a logo)"),
    # --- step "image_resolve": no bytes
    Reason("image.not_archived", "drop", "image_resolve", "not in the archives, fetching off"),
    Reason("image.archive_error", "drop", "image_resolve", "the archived record is unreadable"),
    Reason("image.internal_error", "drop", "image_resolve", "an unexpected error (see the log)"),
    Reason("image.unknown", "drop", "image_resolve", "resolution gave no reason (a bug)"),
    # --- step "image_filter": bytes that fail a guard or filter
    Reason("image.bad_content_type", "drop", "image_filter", "the bytes are not an image"),
    Reason("image.unsupported_format", "drop", "image_filter", "SVG, HEIC or another format"),
    Reason("image.decode_error", "drop", "image_filter", "the image cannot be decoded"),
    Reason("image.truncated", "drop", "image_filter", "the image file is cut short"),
    Reason("image.bomb", "drop", "image_filter", "more pixels than images.max_pixels"),
    Reason("image.too_small", "drop", "image_filter", "a side under images.min_side"),
    Reason("image.too_large", "drop", "image_filter", "a side over images.max_side"),
    Reason("image.aspect", "drop", "image_filter", "aspect ratio over images.max_aspect"),
    Reason("image.uniform", "drop", "image_filter", "a single-coloured picture"),
    Reason("image.near_duplicate", "drop", "image_filter", "a near copy of an image before it"),
    # --- step "paragraph"
    Reason("dedup.paragraph_repeat", "drop", "paragraph", "boilerplate repeated across a domain"),
    Reason("text.link_dense", "drop", "paragraph", "a paragraph that is mostly link text"),
    Reason("text.duplicate_caption", "drop", "paragraph", "a caption already shown once"),
    # --- the training loader (pipelines/train/data.py): counted in the trainer's logs, not report.json
    Reason("data.shard_open", "drop", "loader", "a shard that cannot be opened (skipped)"),
    Reason("data.shard_truncated", "drop", "loader", "a shard cut short or corrupt (rest skipped)"),
    Reason("data.bad_json", "drop", "loader", "a sample whose .json is not JSON"),
    Reason("data.bad_record", "drop", "loader", "a record whose lists or images member disagree"),
    Reason("data.no_text", "drop", "loader", "a sample with no text to train on"),
    Reason("data.unknown_sample", "drop", "loader", "neither an m3w record nor an image-text pair"),
    Reason("data.missing_image", "drop", "loader", "an image the record names is not in the shard"),
    Reason("data.image_decode", "drop", "loader", "an image that does not decode (slot invalid)"),
]
for _why, _meaning in _FETCH_FAILURES.items():
    _ENTRIES.append(Reason(f"image.{_why}", "drop", "image_resolve", _meaning))
    _ENTRIES.append(Reason(f"page.{_why}", "drop", "html", f"a listed page: {_meaning}"))

REASONS: dict[str, Reason] = {}
for _reason in _ENTRIES:
    REASONS.setdefault(_reason.code, _reason)

# Text rules: paragraph-level ones remove a paragraph, the rest drop the document.
_TEXT_MEANINGS = {
    "too_short": "under the word minimum",
    "too_long": "over the word maximum",
    "doc_too_short": "fewer words than text.doc_min_words",
    "doc_too_long": "more words than text.doc_max_words",
    "alpha_words": "too few words with a letter",
    "mean_word_len": "mean word length out of range",
    "symbol_ratio": "too many '#' or ellipsis symbols per word",
    "bullets": "too many lines start with a bullet",
    "ellipsis": "too many lines end with an ellipsis",
    "stopwords": "too few English stop words",
    "dup_para": "too many duplicate paragraphs",
    "dup_para_chars": "too many characters in duplicate paragraphs",
    "top_ngram": "one word n-gram covers too much of the text",
    "dup_ngram": "too much text in repeated word n-grams",
    "lang": "not a wanted language, or unsure",
    "punct_end": "too few lines end in punctuation",
    "stopword_ratio": "too few stop words",
    "special_chars": "too many special characters",
    "char_rep": "repeated character n-grams",
    "word_rep": "repeated word n-grams",
    "flagged": "too many flagged words",
    "punct": "too little punctuation",
}
_PATTERNS = (
    (re.compile(r"^(image|page)\.http_\d{3}$"), lambda m: REASONS[f"{m.group(1)}.http_*"]),
    (
        re.compile(r"^text\.para_(\w+)$"),
        lambda m: Reason(
            m.group(0),
            "drop",
            "paragraph",
            f"a paragraph {_TEXT_MEANINGS.get(m.group(1), m.group(1).replace('_', ' '))}",
        ),
    ),
    (
        re.compile(r"^text\.(\w+)$"),
        lambda m: Reason(
            m.group(0),
            "drop",
            "text",
            "the document fails a text rule: "
            + _TEXT_MEANINGS.get(m.group(1), m.group(1).replace("_", " ")),
        ),
    ),
)


def reason(code: str) -> Reason:
    """The registry entry of `code` (families resolved); an unregistered code is a drop of
    unknown step, so a new code never breaks a report."""
    if code in REASONS:
        return REASONS[code]
    for pattern, make in _PATTERNS:
        m = pattern.match(code)
        if m:
            return make(m)
    return Reason(code, "drop", "", "")


def split_counts(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """`counts` as {"inputs": ..., "progress": ..., "drops": ...}, each sorted by code."""
    out: dict[str, dict[str, int]] = {"inputs": {}, "progress": {}, "drops": {}}
    section = {"input": "inputs", "progress": "progress", "drop": "drops"}
    for code in sorted(counts):
        out[section[reason(code).kind]][code] = counts[code]
    return out


# Families matched by pattern rather than listed one by one (shown by `m3w inspect codes`).
FAMILIES: tuple[Reason, ...] = (
    Reason("text.para_<rule>", "drop", "paragraph", "a paragraph removed by a paragraph text rule"),
    Reason("text.<rule>", "drop", "text", "the document fails a document-level text rule"),
)


def format_registry(kind: str | None = None) -> str:
    """The registry as a text table (kind, funnel step, code, meaning), grouped by kind in the
    order input → progress → drop, for `m3w inspect codes` and docs/build.md."""
    kinds = ("input", "progress", "drop") if kind is None else (kind,)
    text_rules = [
        Reason(f"text.{rule}", "drop", "text", reason(f"text.{rule}").meaning)
        for rule in sorted(_TEXT_MEANINGS)
    ]
    entries = [*REASONS.values(), *FAMILIES, *text_rules]
    rows = [
        (r.kind, r.step or "-", r.code, r.meaning)
        for k in kinds
        for r in sorted(
            (e for e in entries if e.kind == k),
            key=lambda e: (STEPS.index(e.step) if e.step in STEPS else -1, e.code),
        )
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = ("kind", "step", "code", "meaning")
    widths = [max(w, len(h)) for w, h in zip(widths, head)]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:<{widths[2]}}  {head[3]}"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)
