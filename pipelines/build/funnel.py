"""The yield funnel: where every page and image of a build went, from the counters in report.json.

A crawl that gives few documents must say why at a glance. The funnel lists, in pipeline order, how
many documents (then images) each step let through, its share of the first step, and the reason codes
that explain the step's loss (m3w_builder.reasons.REASONS maps each drop code to its step):

    documents: captures read → HTML pages → extracted → passed the text rules → after dedup
               → with ≥1 image candidate → kept
    images:    candidates → resolved (archive / web / data: URI) → kept

Every count comes from a `yield.*` counter or an image counter the stages increment once per event,
never from a difference of unrelated counters, so a resumed build or one with failed inputs still
adds up. The build writes it into report.json under "funnel" and prints it; `m3w inspect stats JOB`
prints it again from report.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from m3w_builder.reasons import reason

# (label, counter, the steps whose drop codes explain the loss into it)
DOC_STEPS = (
    ("captures read", "yield.read", ()),
    ("HTML pages", "yield.html", ("html",)),
    ("extracted", "yield.extracted", ("extract",)),
    ("passed text rules", "yield.text_ok", ("text",)),
    ("after dedup", "yield.deduped", ("dedup",)),
    ("with ≥1 image candidate", "yield.with_images", ("image_dom",)),
    ("documents kept", "yield.docs_kept", ("images", "image_resolve", "image_filter")),
)
IMAGE_SOURCES = ("image.from_archive", "image.from_web", "image.from_data_uri")
# what a reason's count counts, by its step: an image-level code beside a document step (a logo
# removed from 96,833 pages) must not read as 96,833 documents lost
COUNTED = {
    "image_dom": "images",
    "image_resolve": "images",
    "image_filter": "images",
    "paragraph": "paragraphs",
}
TOP_REASONS = 5


@dataclass(slots=True)
class Step:
    step: str
    count: int
    share: float  # of the first step's count
    reasons: list[tuple[str, int]] = field(default_factory=list)  # the loss into this step


def _reasons(counts: dict[str, int], steps: tuple[str, ...]) -> list[tuple[str, int]]:
    codes = [
        (c, n) for c, n in counts.items() if reason(c).kind == "drop" and reason(c).step in steps
    ]
    return sorted(codes, key=lambda cn: (-cn[1], cn[0]))[:TOP_REASONS]


def compute_funnel(counts: dict[str, int]) -> dict[str, Any]:
    """{"documents": [Step...], "images": [Step...], "images_resolved": {...}} as plain JSON."""
    docs: list[Step] = []
    for label, counter, steps in DOC_STEPS:
        n = int(counts.get(counter, 0))
        first = docs[0].count if docs else n
        docs.append(Step(label, n, round(n / first, 4) if first else 0.0, _reasons(counts, steps)))
    candidates = int(counts.get("yield.image_candidates", 0))
    sources = {code.split("from_", 1)[1]: int(counts.get(code, 0)) for code in IMAGE_SOURCES}
    resolved = sum(sources.values())
    kept = int(counts.get("image.kept", 0))

    def share(n: int) -> float:
        return round(n / candidates, 4) if candidates else 0.0

    images = [
        Step("image candidates", candidates, 1.0 if candidates else 0.0),
        Step("resolved", resolved, share(resolved), _reasons(counts, ("image_resolve",))),
        Step("kept", kept, share(kept), _reasons(counts, ("image_filter",))),
    ]
    return {
        "documents": [asdict(s) for s in docs],
        "images": [asdict(s) for s in images],
        "images_resolved": {**sources, "missing": max(candidates - resolved, 0)},
    }


def largest_loss(funnel: dict[str, Any]) -> str:
    """One line naming the main cause of a build that kept nothing: the step after "HTML pages"
    that lost the most documents and its top reason (a crawl is mostly non-HTML captures, so
    that first loss says nothing), or why no capture was a page at all."""
    steps = funnel["documents"]
    if not steps or steps[0]["count"] == 0:
        return "0 documents: no capture was read (are the inputs empty or unreadable?)"
    if steps[1]["count"] == 0:
        worst, lost = steps[1], steps[0]["count"]
        line = f"0 documents: none of the {lost:,} captures is an HTML page"
    else:
        worst, lost = None, -1
        for prev, cur in zip(steps[1:], steps[2:]):
            if prev["count"] - cur["count"] > lost:
                worst, lost = cur, prev["count"] - cur["count"]
        assert worst is not None
        line = (
            f"0 documents: the largest loss is at '{worst['step']}' "
            f"({lost:,} of {steps[1]['count']:,} HTML pages)"
        )
    if worst["reasons"]:
        code, n = worst["reasons"][0]
        meaning = reason(code).meaning
        line += f"; top reason {code} × {n:,}" + (f": {meaning}" if meaning else "")
    return line


def _counted(code: str, n: int, table: str) -> str:
    """`code N`, with what N counts when it is not the table's own unit."""
    unit = COUNTED.get(reason(code).step, "documents")
    return f"{code} {n:,}" + ("" if unit == table else f" {unit}")


def format_funnel(funnel: dict[str, Any]) -> str:
    """The funnel as a text table: count, share, and the top reasons of each step's loss."""
    rows = [("step", "count", "share", "reason codes counted at this step")]
    for title, key in (("documents", "documents"), ("images", "images")):
        rows.append((f"[{title}]", "", "", ""))
        for s in funnel[key]:
            why = ", ".join(_counted(c, n, key) for c, n in s["reasons"][:3])
            rows.append((s["step"], f"{s['count']:,}", f"{100 * s['share']:.1f}%", why))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    ]
    src = funnel.get("images_resolved") or {}
    if src:
        lines.append("images resolved from: " + ", ".join(f"{k} {v:,}" for k, v in src.items()))
    return "\n".join(lines)
