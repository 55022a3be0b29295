"""Main content (pass 4): Readability-style container scoring (Mozilla Readability.js,
`_grabArticle`) and the choice of the article's container and siblings, including the second
choice with held boilerplate-named containers put back, and the fallback to the whole body."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from lxml import etree

from m3w_builder.config import DomConfig
from m3w_builder.dom.clean import HOLD_MIN_CHARS, Held, remove_marks
from m3w_builder.dom.comments import COMMENT_SCORE_WEIGHT, Comments, comment_blocks
from m3w_builder.dom.tree import BLOCK_TAGS, bump, count_chars, raw_text

# Readability.js `REGEXPS.positive` / `negative`: class/id words that raise or lower a container's
# content score.
_POSITIVE = re.compile(
    r"article|body|content|entry|hentry|h-entry|main|page|pagination|post|text|blog|story", re.I
)
_NEGATIVE = re.compile(
    r"-ad-|hidden|^hid$| hid$| hid |^hid |banner|combx|comment|com-|contact|footer|gdpr|masthead|"
    r"media|meta|outbrain|promo|related|scroll|share|shoutbox|sidebar|skyscraper|sponsor|shopping|"
    r"tags|widget",
    re.I,
)


# A held container competes again when its best candidate scores this share of the first winner.
_HOLD_COMPETE = 0.5


# Readability.js `_initializeNode`: a container's starting score by tag.
_TAG_WEIGHT = {
    "div": 5,
    "pre": 3,
    "td": 3,
    "blockquote": 3,
    "article": 10,
    "main": 10,
    "section": 2,
    "address": -3,
    "ol": -3,
    "ul": -3,
    "dl": -3,
    "dd": -3,
    "dt": -3,
    "li": -3,
    "form": -3,
    "h1": -5,
    "h2": -5,
    "h3": -5,
    "h4": -5,
    "h5": -5,
    "h6": -5,
    "th": -5,
}
_SCORED_TAGS = frozenset(("p", "td", "pre", "blockquote", "li", "figcaption", "dd"))
_PARA_CONTAINERS = frozenset(("div", "section", "article", "main"))


def _class_weight(el: etree._Element) -> int:
    return _names_weight(el.get("class"), el.get("id"))


@functools.lru_cache(maxsize=65_536)
def _names_weight(class_: str | None, id_: str | None) -> int:
    """Readability.js `_getClassWeight`: ±25 for positive/negative class and id words."""
    weight = 0
    for value in (class_, id_):
        if value:
            if _NEGATIVE.search(value):
                weight -= 25
            if _POSITIVE.search(value):
                weight += 25
    return weight


_COUNT_IMG = etree.XPath("count(.//img)")
_COMMAS = re.compile("[,\uff0c\u3001]")  # ASCII, fullwidth and ideographic commas


class _Measure:
    """Text length, link-text length and image count per element, computed on demand in C
    (libxml2 serialisation / compiled XPath) and memoised: Readability's per-node
    `_getInnerText` / `_getLinkDensity`, without a Python-level walk over every element."""

    __slots__ = ("cache", "links")

    def __init__(self) -> None:
        self.cache: dict[etree._Element, tuple[int, int]] = {}
        self.links: dict[etree._Element, int] = {}

    def link_len(self, a: etree._Element) -> int:
        """Text length of one link, memoised: containers share their links with the paragraphs
        inside them. A childless link's text is its `.text` (no serialisation needed)."""
        n = self.links.get(a)
        if n is None:
            n = self.links[a] = count_chars(raw_text(a) if len(a) else (a.text or ""))
        return n

    def __call__(self, el: etree._Element, text: str | None = None) -> tuple[int, int]:
        hit = self.cache.get(el)
        if hit is None:
            chars = count_chars(raw_text(el) if text is None else text)
            links = sum(map(self.link_len, el.iter("a"))) if chars else 0
            hit = self.cache[el] = (chars, min(links, chars))
        return hit

    def density(self, el: etree._Element) -> float:
        chars, links = self(el)
        return links / chars if chars else 0.0


def _score_paragraphs(
    body: etree._Element,
    config: DomConfig,
    measure: _Measure,
    comments: set[etree._Element] | None = None,
) -> dict[etree._Element, float]:
    """Readability's scoring: each paragraph-like element with ≥ 25 characters adds its score to
    its parent (×1), grandparent (×1/2) and ancestors up to 5 levels (×1/(3·level)); an ancestor
    starts from its tag and class weights. Returns raw (not yet link-discounted) scores."""
    candidates: dict[etree._Element, float] = {}
    stop = body.getparent()
    # Elements with a block descendant: each block marks its ancestors up to the first one already
    # marked, so the whole set costs O(n) (asking every div for block descendants was O(n·depth)).
    has_block: set[etree._Element] = set()
    # (lxml's multi-tag `iter(*tags)` matcher is ~15x slower than filtering `iter()` in Python.)
    scored = []
    for el in body.iter():
        tag = el.tag
        if tag in _SCORED_TAGS or tag in _PARA_CONTAINERS:
            scored.append(el)
        if tag not in BLOCK_TAGS:
            continue
        ancestor = el.getparent()
        while ancestor is not None and ancestor not in has_block:
            has_block.add(ancestor)
            ancestor = ancestor.getparent()
    in_comment: set[etree._Element] = set()
    for root_ in comments or ():
        in_comment.update(root_.iter())
    for el in scored:
        tag = el.tag
        # A div-like container counts as a paragraph only without block descendants (Readability
        # turns such divs into <p>).
        if tag not in _SCORED_TAGS and el in has_block:
            continue
        text = raw_text(el)
        if count_chars(text) < 20:  # Readability: 25 characters, spaces included
            continue
        chars, links = measure(el, text)
        # Two departures from Readability, measured on the readability corpus: a paragraph's own
        # link text discounts it (a 1,000-name "kudos" list of links, commas and all, out-scored
        # the story on archive-of-our-own), and commas count up to 20.
        density = links / chars if chars else 0.0
        if density > config.max_link_density:
            continue
        commas = len(_COMMAS.findall(text))
        score = (1 + min(commas, 20) + min(chars // 100, 3)) * (1 - density)
        if el in in_comment:
            score *= COMMENT_SCORE_WEIGHT
        ancestor, level = el.getparent(), 0
        while ancestor is not None and ancestor is not stop and level < 5:
            if ancestor not in candidates:
                candidates[ancestor] = _TAG_WEIGHT.get(ancestor.tag, 0) + _class_weight(ancestor)
            candidates[ancestor] += score / (1 if level == 0 else 2 if level == 1 else level * 3)
            ancestor, level = ancestor.getparent(), level + 1
    return candidates


class _Scores:
    """Final candidate scores: raw × (1 − link density), the density computed only for the
    candidates actually compared (Readability computes it for every candidate)."""

    __slots__ = ("raw", "measure", "cache")

    def __init__(self, raw: dict[etree._Element, float], measure: _Measure) -> None:
        self.raw, self.measure, self.cache = raw, measure, {}

    def get(self, el: etree._Element) -> float | None:
        if el not in self.raw:
            return None
        hit = self.cache.get(el)
        if hit is None:
            hit = self.cache[el] = self.raw[el] * (1 - self.measure.density(el))
        return hit

    def best(self, k: int) -> list[etree._Element]:
        """The k best by final score, searched among the 3k best raw scores (the discount only
        lowers scores, so a candidate outside them rarely wins)."""
        pool = sorted(self.raw, key=self.raw.__getitem__, reverse=True)[: 3 * k]
        return sorted(pool, key=self.get, reverse=True)[:k]


@dataclass(slots=True)
class _Main:
    """One main-content choice: the blocks, their characters and the body's, images left out."""

    blocks: list[etree._Element]
    kept: int
    total: int
    outside: int = 0
    fallback: bool = False  # no container won: the whole body
    top: etree._Element | None = None  # the winning container, before its siblings joined
    top_score: float = 0.0


def select_main(
    root: etree._Element,
    config: DomConfig,
    drops: list[str],
    stats: dict[str, int],
    held: list[Held] | None = None,
    seen_comments: Comments | None = None,
) -> list[etree._Element]:
    """The elements holding the main content, in document order (Readability.js `_grabArticle`):
    returns `[body]` when main-content focus is off or nothing wins.

    `held` are the large boilerplate-named containers `clean_tree` set aside. When there are any, they
    are put back and the choice is made again with them competing (Readability's retry without
    its "unlikely candidates" rule, for these containers alone): the second choice stands if its
    winner is a different container that is, lies in or mostly consists of a held one — the
    scoring, class penalties included, preferred it to the first winner, which was still there —
    else they go out again and the first choice stands.
    """
    held = held or []
    body = next(root.iter("body"), None)
    if body is None:
        body = root
    if not config.main_content:
        return [body]
    # Comment posts, named or found by their shape; held containers are back for the search.
    for h in held:
        h.restore()
    comments = comment_blocks(body, seen_comments or Comments(set(), []))
    for h in held:
        h.set_aside()
    first = _choose_main(body, config, comments)
    chosen = first
    # Only a held container that could win competes: one whose own best candidate, scored alone
    # (its subtree is detached, so the scores stay inside it), comes near the first winner's.
    suspects = [h for h in held if _could_win(h, first, config, comments)]
    if suspects:
        for h in suspects:
            h.restore()
        second = _choose_main(body, config, comments)
        if _won_by(second, first, suspects):
            chosen = second
            bump(stats, "boilerplate_put_back", len(suspects))
            for h in suspects:
                remove_marks(h.inner, drops, stats)
        else:
            for h in suspects:
                h.set_aside()
    for h in held:
        if not h.restored:
            bump(stats, "removed_boilerplate")
            drops.extend("image.boilerplate" for _ in h.el.iter("img"))
    if chosen.blocks != [body]:
        stats["main_chars"] = chosen.kept
        stats["body_chars"] = chosen.total
        drops.extend("image.outside_main" for _ in range(max(chosen.outside, 0)))
    return chosen.blocks


def _could_win(held: Held, first: _Main, config: DomConfig, comments: set[etree._Element]) -> bool:
    """Whether a held container competes again. Readability's rule: when the first choice is
    poor (no winner, or under 500 characters). Beyond it, only a container whose own name also
    claims content (`entry`, `post`, `story`, `article`: the positive class words, as in
    `div.entry.theme.share`) and whose best candidate, scored alone, comes near the first
    winner's: a gallery of captions named `legends` stays out however well its text scores."""
    if first.fallback or first.kept < 500:
        return True
    if held.chars < max(HOLD_MIN_CHARS, first.kept / 4):
        return False
    if not _POSITIVE.search(f"{held.el.get('class') or ''} {held.el.get('id') or ''}"):
        return False
    measure = _Measure()
    raw = _score_paragraphs(held.el, config, measure, comments)
    if not raw:
        return False
    best = max(_Scores(raw, measure).get(el) or 0.0 for el in raw)
    return best >= _HOLD_COMPETE * first.top_score


def _won_by(second: _Main, first: _Main, held: list[Held]) -> bool:
    """The second choice is a different winner that is a held container, lies inside one, or
    holds one that makes up most of its text: the article was among the held."""
    top = second.top
    if top is None or second.fallback or (top is first.top and not first.fallback):
        return False
    for h in held:
        if h.el is top or any(a is h.el for a in top.iterancestors()):
            return True
        if any(a is top for a in h.el.iterancestors()) and 2 * h.chars >= second.kept:
            return True
    return False


def _choose_main(body: etree._Element, config: DomConfig, comments: set[etree._Element]) -> _Main:
    if not config.main_content:
        return _Main([body], 0, 0)
    measure = _Measure()
    total = measure(body)[0]
    if total == 0:
        return _Main([body], 0, 0)
    raw = _score_paragraphs(body, config, measure, comments)
    if not raw:
        return _Main([body], total, total, fallback=True)
    scores = _Scores(raw, measure)
    top = _promote(body, scores)
    top_score = scores.get(top) or 0.0
    # Readability: when the winner is the only child of its parent, the parent is the article.
    parent = top.getparent()
    while parent is not None and parent is not body and len(parent) == 1:
        top, parent = parent, parent.getparent()
    if top is body or parent is None:
        return _Main([body], total, total, fallback=True)
    blocks = _with_siblings(top, top_score, scores, measure, comments)
    kept = sum(measure(b)[0] for b in blocks)
    if kept < config.main_min_fraction * total and kept < 500:
        return _Main([body], total, total, fallback=True)
    outside = int(_COUNT_IMG(body)) - sum(int(_COUNT_IMG(b)) for b in blocks)
    return _Main(blocks, kept, total, outside, top=top, top_score=top_score)


def _promote(body: etree._Element, scores: _Scores) -> etree._Element:
    """The best candidate, moved up to a common ancestor where the content is split across
    containers (Readability.js `_grabArticle`): (1) when at least 3 of the other top-5 candidates
    score ≥ 75% of the winner and share an ancestor with it, that ancestor (step-by-step how-tos,
    one container per step); (2) while walking up, an ancestor scoring higher than the node below
    it (score rising means more article around)."""
    ranked = scores.best(5)
    top = ranked[0]
    top_score = scores.get(top) or 0.0
    close = [c for c in ranked[1:] if (scores.get(c) or 0.0) >= 0.75 * top_score]
    if len(close) >= 3:
        lineages = [set(c.iterancestors()) for c in close]
        ancestor = top.getparent()
        while ancestor is not None and ancestor is not body:
            if sum(ancestor in lineage for lineage in lineages) >= 3:
                top = ancestor
                break
            ancestor = ancestor.getparent()
    last = scores.get(top)
    last = top_score if last is None else last
    threshold = last / 3
    ancestor = top.getparent()
    while ancestor is not None and ancestor is not body:
        score = scores.get(ancestor)
        if score is not None:
            if score < threshold:
                break
            if score > last:
                top = ancestor
                break
            last = score
        ancestor = ancestor.getparent()
    return top


def _with_siblings(
    top: etree._Element,
    top_score: float,
    scores: _Scores,
    measure: _Measure,
    comments: set[etree._Element] | None = None,
) -> list[etree._Element]:
    """The winner plus siblings that look like article too (Readability.js: score above
    max(10, 20% of the winner's), or a paragraph of ≥ 80 characters with link density < 0.25, or a
    short one without links that ends a sentence; plus figures/images next to the article)."""
    parent = top.getparent()
    if parent is None:
        return [top]
    threshold = max(10.0, top_score * 0.2)
    top_class = top.get("class") or ""
    out = []
    for sib in parent:
        if not isinstance(sib.tag, str):
            continue
        if sib is top:
            out.append(sib)
            continue
        if comments and _mostly_comments(sib, comments, measure):
            continue
        bonus = top_score * 0.2 if top_class and sib.get("class") == top_class else 0.0
        score = scores.get(sib)
        if score is not None and score + bonus >= threshold:
            out.append(sib)
            continue
        if sib.tag == "p":
            chars, links = measure(sib)
            density = links / chars if chars else 0.0
            if chars >= 80 and density < 0.25:
                out.append(sib)
            elif 0 < chars < 80 and links == 0 and re.search(r"\.(\s|$)", raw_text(sib).strip()):
                out.append(sib)
        elif sib.tag in ("figure", "img", "picture") and measure.density(sib) < 0.5:
            if sib.tag == "img" or _COUNT_IMG(sib):
                out.append(sib)
    return out


def _mostly_comments(el: etree._Element, comments: set[etree._Element], measure: _Measure) -> bool:
    """`el` is a comment block, or comment blocks inside it hold most of its text."""
    if el in comments:
        return True
    chars = measure(el)[0]
    if not chars:
        return False
    inside = sum(measure(c)[0] for c in el.iterdescendants() if c in comments)
    return inside > chars / 2
