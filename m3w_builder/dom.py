"""DOM → Document: the HTML page as an ordered list of paragraphs and images (DESIGN §2).

`extract(html, url, config)` is a recipe of named private steps. Each step is ONE pass over the tree
(an `etree.iterwalk` or one `iter()`), never a loop that restarts from the top after every edit — the
quadratic mistake of OBELICS's DOM simplifier (obelics/processors/dom_tree_simplificator.py, which
re-walks the whole tree once per rule and per change). The steps, in order:

1. `parse`: lxml's libxml2 HTML parser (17× faster than BeautifulSoup on the dev corpus, see
   benchmarks/results/extract.md), comments and processing instructions removed while parsing.
2. `_base_url`: `<base href>` resolved against the page URL (HTML §4.2.3) for every relative URL.
3. `_clean`: drop non-content elements (script/style/nav/footer/aside/form/...), hidden elements
   (`hidden`, `aria-hidden=true`, inline `display:none`/`visibility:hidden`) and boilerplate
   containers named by class/id/role (Readability.js's "unlikely candidates" list), except a
   wrapper that is essentially one embedded post (a tweet in `div.social-embed`). `<noscript>` is
   unwrapped when it carries the only copy of a lazy-loaded image, dropped otherwise.
4. `_select_main`: main-content focus by Readability-style scoring (Mozilla Readability.js,
   `_grabArticle`): paragraphs score by length and commas, pass the score up to their parent and
   grandparent; the best container, discounted by its link density, plus qualifying siblings, is the
   article. Falls back to the whole body when the winner holds too little text, so non-article pages
   (galleries, forums) are not emptied.
5. `_linearise`: one walk in reading order that segments text into paragraphs at block boundaries
   (p, div, li, h1-6, td/th, figcaption, blockquote, pre, two consecutive `<br>`), normalises
   whitespace, drops link-dense paragraphs (menus, tag clouds, "related" lists; not the text of an
   embedded post, whose links quote it) and emits an ImageNode for every `<img>` (src, srcset,
   lazy-load attributes, `<picture><source>`), dropping tracking pixels, tiny `data:` URIs and URLs
   matching `config.url_block_rules`.

Every removed image and paragraph leaves its reason code in `doc.drops`; removed elements are counted
in `doc.stats["dom"]`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

from lxml import etree

from m3w_builder.config import DomConfig, ImageConfig
from m3w_builder.document import Document, ImageNode, Node, TextNode

log = logging.getLogger(__name__)

# Elements that never hold article content. Chrome (nav/header/footer/aside), code and embeds
# (script/style/template/iframe/object/svg/canvas), forms and their controls. Mirrors the tag list of
# OBELICS obelics/utils/tags_attributes.py (TAGS_TO_REMOVE) plus HTML5 sectioning chrome.
_DROP_TAGS = frozenset(
    """script style noscript template nav header footer aside form iframe frame frameset svg math
    canvas object embed applet audio video map button input select textarea option label dialog
    menu link meta head title base""".split()
)
# Code and data, never text: removed up front by one `strip_elements` call (C speed).
_CODE_TAGS = ("script", "style", "template")
# Removed even when large: their text is never prose (see _clean's size guard).
_NEVER_SPARED = frozenset(
    """script style template svg math canvas object embed applet select iframe frame frameset
    button input textarea option label audio video map dialog menu link meta head title base
    noscript""".split()
)
_SPARE_SCAN_FACTOR = 4  # size checks may read the page's text at most this many times: O(n)
# <math> is MathML, which has no text a language model can read as prose; wikipedia's rendered math
# images are `<img>` and survive.

# Block-level elements: their start and end close the current paragraph (HTML §3.2.5.2.x "flow
# content" that browsers render as blocks). Inline elements (a, span, b, em...) do not.
_BLOCK_TAGS = frozenset(
    """p div li ul ol dl dt dd h1 h2 h3 h4 h5 h6 td th tr table thead tbody tfoot caption figure
    figcaption blockquote pre section article main address hr center details summary fieldset
    legend body html""".split()
)

# Readability.js `REGEXPS.unlikelyCandidates` / `okMaybeItsACandidate` (mozilla/readability,
# Readability.js): class/id words that mark comment sections, share widgets, menus, sidebars,
# related-article lists and ads. A container matching the first but not the second is dropped.
_UNLIKELY_WORDS = tuple(
    """-ad- ai2html banner breadcrumbs combx comment community cover-wrap disqus extra footer gdpr
    header legends menu related remark replies rss shoutbox sidebar skyscraper social sponsor
    supplemental ad-break agegate pagination pager popup yom-remote newsletter promo subscribe
    cookie signup outbrain taboola paywall""".split()
)
# Share widgets, but not "shared-history" or "sharing-with-a-developer" (mercurial's sections).
_SHARE = re.compile(
    r"(?<![a-z])shar(?:e|ing)(?:[-_]?(?:bar|buttons?|tools?|links?|widgets?|icons?|this|box))?"
    r"(?![\w-])"
)
_MAYBE_WORDS = ("and", "article", "body", "column", "content", "main", "shadow")
_UNLIKELY_ROLES = frozenset(
    "menu menubar complementary navigation alert alertdialog dialog banner contentinfo".split()
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
# Embedded posts: the `<blockquote>` each network's embed code writes into the page (the post's text
# and attribution, which the network's script turns into a widget; crawlers archive the blockquote).
# Inside the article it is quoted content: never chrome by its name, its wrapper kept when it is
# little more than the post (`_clean`), its link text not a menu (`_linearise`).
_EMBED_CLASS = re.compile(
    r"(?<![\w-])(?:twitter-tweet|twitter-video|instagram-media|tiktok-embed|reddit-card|"
    r"reddit-embed-bq|bluesky-embed|mastodon-embed)(?![\w-])"
)
# A chrome-named wrapper is kept when its one embedded post holds at least this share of its text.
_EMBED_WRAPPER_SHARE = 2 / 3

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

# Lazy-loading libraries keep the real image URL in one of these (lazysizes, lozad, jQuery lazyload,
# WordPress Jetpack, Medium, NYT...). srcset-like ones list "url descriptor" candidates.
_LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-src-set", "data-original-set")
_LAZY_SRC_ATTRS = (
    "data-src",
    "data-original",
    "data-lazy-src",
    "data-url",
    "data-hi-res-src",
    "data-full-src",
    "data-lazy",
    "data-echo",
    "data-actualsrc",
    "data-img-src",
    "data-original-src",
    "data-large-src",
    "data-orig-src",
    "data-image",
    "data-raw-src",
)
# Known 1×1 beacon/spacer URL shapes (Adobe `/b/ss/`, comScore, "1x1", blank/clear/transparent gifs).
_PIXEL_URL = re.compile(
    r"1x1|/b/ss/|/beacon|[/_.-]pixel\.(?:gif|png)|/p\.gif|blank\.gif|clear\.gif|"
    r"transparent\.(?:gif|png)|scorecardresearch\.com|/pixel[/?]",
    re.I,
)
_WS = re.compile(r"\s+")
_DIMENSION = re.compile(r"^\s*(\d+)(?:\.\d+)?\s*(?:px)?\s*$", re.I)


MAX_IMAGES_PER_DOC = ImageConfig.max_images_per_doc


def extract(
    html: str | bytes,
    url: str,
    config: DomConfig | None = None,
    *,
    max_images: int = MAX_IMAGES_PER_DOC,
) -> Document:
    """Parse `html` and return its Document: nodes in reading order, removed items in `drops`.

    `html` as `str` is parsed as such; as `bytes` libxml2 sniffs the charset from BOM / `<meta>`
    (m3w_builder.extract decodes with the HTTP headers first and passes `str`).
    """
    root = parse(html)
    if root is None:
        return Document(url=url, stats={"dom": {}})
    return extract_tree(root, url, config, max_images=max_images)


# --------------------------------------------------------------------------------------- 1. parse


def make_parser(encoding: str | None = None) -> etree.HTMLParser:
    """libxml2 HTML parser. `huge_tree` lifts the 10 MB text-node and 256-depth limits to 2048
    levels (deeper content is cut by libxml2 itself and logged as "Excessive depth", which
    m3w_builder.extract turns into `html.too_deep`); network access is never allowed."""
    return etree.HTMLParser(
        remove_comments=True,
        remove_pis=True,
        huge_tree=True,
        no_network=True,
        recover=True,
        encoding=encoding,
    )


def parse(html: str | bytes, parser: etree.HTMLParser | None = None) -> etree._Element | None:
    if isinstance(html, str):
        # Parsing UTF-8 bytes with a fixed encoding sidesteps lxml's refusal of `str` input that
        # carries an XML encoding declaration, and is as fast as parsing the str.
        html = html.encode("utf-8", "surrogatepass")
        parser = parser or make_parser("utf-8")
    if not html.strip():
        return None
    return etree.fromstring(html, parser or make_parser())


def extract_tree(
    root: etree._Element,
    url: str,
    config: DomConfig | None = None,
    *,
    check: Callable[[], None] | None = None,
    max_images: int = MAX_IMAGES_PER_DOC,
) -> Document:
    """`extract` for an already parsed tree (m3w_builder.extract parses itself to bound the parse).

    `check` runs between passes; m3w_builder.extract passes a deadline check that raises Skip, which
    bounds the time of a page because each pass is linear in the (capped) page size.
    """
    config = config or DomConfig()
    check = check or _no_check
    doc = Document(url=url)
    stats: dict[str, int] = {}
    base = _base_url(root, url)
    comments = _Comments(set(), [])
    held = _clean(root, config, doc.drops, stats, comments)
    check()
    blocks = _select_main(root, config, doc.drops, stats, held, comments)
    check()
    doc.nodes = _linearise(blocks, base, config, doc.drops, stats, max_images)
    doc.stats["dom"] = stats
    return doc


def _no_check() -> None:
    return None


# ------------------------------------------------------------------------------------ 2. base URL


def _base_url(root: etree._Element, url: str) -> str:
    """The URL relative links resolve against: the first `<base href>` (itself resolved against the
    document URL, HTML §4.2.3), else the page URL."""
    for base in root.iter("base"):
        href = (base.get("href") or "").strip()
        if href and not href.lower().startswith(("javascript:", "data:")):
            try:
                return urljoin(url, href)
            except ValueError:
                return url
        break
    return url


# --------------------------------------------------------------------------------------- 3. clean


def _bump(stats: dict[str, int], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


# Attributes m3w writes on a visible `<img>` to carry its `<noscript>` copy's URLs and alt text into
# the candidate list (one per line); never in real markup.
_NOSCRIPT_URLS = "data-m3w-noscript"
_NOSCRIPT_ALT = "data-m3w-noscript-alt"


def _merge_noscript_copies(root: etree._Element, stats: dict[str, int]) -> None:
    """A `<noscript><img>` next to a visible `<img>` is the same picture for browsers without
    JavaScript (the lazy-loading pattern: the visible one carries a placeholder `src`, the copy the
    real URL). Its URLs become fallback candidates of the visible image (`_candidates`), so the
    copy is never a duplicate and never the only survivor of a placeholder: resolution decides by
    what each URL turns out to be. A copy with no visible partner is unwrapped: it is the image."""
    for noscript in list(root.iter("noscript")):
        copies = list(noscript.iter("img"))
        if not copies:
            continue  # text for browsers without JavaScript ("enable JavaScript"): dropped later
        visible = _visible_partner(noscript, len(copies))
        if visible is None:
            _bump(stats, "unwrapped_noscript")
            _drop_tag(noscript)
            continue
        for img, copy in zip(visible, copies, strict=True):
            urls = [url for url, _ in _own_candidates(copy) if url]
            if urls:
                img.set(_NOSCRIPT_URLS, "\n".join(urls))
            alt = (copy.get("alt") or "").strip()
            if alt:
                img.set(_NOSCRIPT_ALT, alt)
        _bump(stats, "noscript_merged")
        _drop_tree(noscript)


def _visible_partner(noscript: etree._Element, n: int) -> list[etree._Element] | None:
    """The `n` visible `<img>` a noscript copy stands for: the element just before it (an `<img>`,
    or a wrapper such as `<picture>`/`<a>`/`<span>` holding exactly `n` images), else an `<img>`
    just after it (some themes put the copy first)."""
    prev = noscript.getprevious()
    while prev is not None and not isinstance(prev.tag, str):
        prev = prev.getprevious()
    if prev is not None and prev.tag != "noscript":
        imgs = [prev] if prev.tag == "img" else list(prev.iter("img"))
        if len(imgs) == n:
            return imgs
    nxt = noscript.getnext()
    while nxt is not None and not isinstance(nxt.tag, str):
        nxt = nxt.getnext()
    if nxt is not None and nxt.tag == "img" and n == 1:
        return [nxt]
    return None


def _text_len(el: etree._Element) -> int:
    """Characters of text, whitespace runs collapsed; libxml2 serialises, Python only splits."""
    return _chars(_raw_text(el))


_PROTECTING = frozenset(("table", "code", "pre"))
_NOT_BOILERPLATE = frozenset(("html", "body", "a", "article", "main"))


def _mark(
    root: etree._Element,
    comments: _Comments | None = None,
    embeds: list[etree._Element] | None = None,
) -> list[tuple[etree._Element, str]]:
    """Every element to remove, with its reason, in document order (nested ones included; the
    caller keeps the outermost). One flat `iter()`, reading each element's attributes once via
    `items()` — 2.5× faster than an `iterwalk` asking `get()` per attribute. Elements whose
    class, id or itemprop name a comment, and comment-post markers, go to `comments` in the
    same pass; embedded-post blockquotes (`_EMBED_CLASS`) go to `embeds` and are never marked
    by their names."""
    marks: list[tuple[etree._Element, str]] = []
    for el in root.iter():
        tag = el.tag
        if tag in _DROP_TAGS:
            marks.append((el, "tag"))
            continue
        if tag == "time" and comments is not None:
            comments.markers.append((el, _TIME))
        items = el.items()
        if not items or tag in ("html", "body"):
            continue
        cls = id_ = role = itemprop = None
        hidden = aria_hidden = False
        for name, value in items:
            if name == "class":
                cls = value
            elif name == "id":
                id_ = value
            elif name == "role":
                role = value
            elif name == "itemprop":
                itemprop = value
            elif name == "datetime" and comments is not None and tag != "time":
                comments.markers.append((el, _TIME))
            elif name == "rel" and value.strip().lower() == "author" and comments is not None:
                comments.markers.append((el, _AUTHOR))
            elif name == "hidden":
                hidden = True
            elif name == "aria-hidden":
                aria_hidden = value.strip().lower() == "true"
            elif name == "style" and _HIDDEN_STYLE.search(value):
                hidden = True
        # Not rendered: Readability.js `_isProbablyVisible` inverted, with its exception for
        # Wikipedia's `fallback-image` class (aria-hidden, yet the only copy of a math image).
        if hidden or (aria_hidden and "fallback-image" not in (cls or "")):
            marks.append((el, "hidden"))
            continue
        if cls is None and id_ is None and itemprop is None:
            if tag not in _NOT_BOILERPLATE and role and role.strip().lower() in _UNLIKELY_ROLES:
                marks.append((el, "boilerplate"))
            continue
        if tag == "blockquote" and cls and embeds is not None and _EMBED_CLASS.search(cls):
            embeds.append(el)
            continue
        flags = (
            (_name_flags(cls) if cls else 0)
            | (_name_flags(id_) if id_ else 0)
            | (_name_flags(itemprop) if itemprop else 0)
        )
        if comments is not None and flags & (_COMMENT_NAME | _AUTHOR_NAME):
            if flags & _COMMENT_NAME:
                comments.named.add(el)
            if flags & _AUTHOR_NAME:
                comments.markers.append((el, _AUTHOR))
        if tag in _NOT_BOILERPLATE:
            continue
        if role and role.strip().lower() in _UNLIKELY_ROLES:
            marks.append((el, "boilerplate"))
        elif flags & _UNLIKELY_NAME and not flags & _MAYBE_NAME:
            marks.append((el, "boilerplate"))
    return marks


_UNLIKELY_NAME, _MAYBE_NAME, _COMMENT_NAME, _AUTHOR_NAME = 1, 2, 4, 8


@functools.lru_cache(maxsize=65_536)
def _name_flags(name: str) -> int:
    """What one class, id or itemprop value says, as bits: it holds a Readability "unlikely
    candidate" word (`_UNLIKELY_WORDS`, share widgets), an "ok maybe it's a candidate" word
    (`_MAYBE_WORDS`), a comment word, an author word. An element is boilerplate when its class and
    id together hold an unlikely word and no maybe word. One alternation of every word finds them
    (3× faster than a substring scan per list, which mattered for the first sight of each value);
    cached per value: pages repeat the same class strings on hundreds of elements."""
    low = name.lower()
    flags = 0
    for m in _NAME_WORDS_RE.finditer(low):
        flags |= _WORD_FLAGS[m.group(0)]
    if not flags & _UNLIKELY_NAME and "shar" in low and _SHARE.search(low):
        flags |= _UNLIKELY_NAME
    return flags


def _word_flags() -> dict[str, int]:
    flags: dict[str, int] = {}
    for words, bit in (
        (_UNLIKELY_WORDS, _UNLIKELY_NAME),
        (_MAYBE_WORDS, _MAYBE_NAME),
        (_COMMENT_WORDS, _COMMENT_NAME),
        (_AUTHOR_WORDS, _AUTHOR_NAME),
    ):
        for word in words:
            flags[word] = flags.get(word, 0) | bit
    # A word inside a longer listed word is found by the longer one's entry too.
    for word, bits in list(flags.items()):
        for other in flags:
            if other != word and other in word:
                flags[word] = bits | flags[other]
                bits = flags[word]
    return flags


# Boilerplate-named containers holding at least this many characters are set aside, not deleted:
# they might be the article itself under an unlucky class name (`_select_main` may put them back).
_HOLD_MIN_CHARS = 500
# A held container competes again when its best candidate scores this share of the first winner.
_HOLD_COMPETE = 0.5
# Class/id words of comment sections: never put back, and their paragraphs barely score.
_COMMENT_WORDS = ("comment", "disqus", "replies", "reply", "remark", "shoutbox", "discussion")


@dataclass(slots=True)
class _Held:
    """A boilerplate-named subtree taken out of the tree but kept aside (a placeholder holds its
    place and its tail text), with the removal marks found inside it."""

    el: etree._Element
    placeholder: etree._Element
    chars: int
    inner: list[tuple[etree._Element, str]]
    restored: bool = False

    def restore(self) -> None:
        self.el.tail, self.placeholder.tail = self.placeholder.tail, None
        self.placeholder.getparent().replace(self.placeholder, self.el)
        self.restored = True

    def set_aside(self) -> None:
        self.placeholder.tail, self.el.tail = self.el.tail, None
        self.el.getparent().replace(self.el, self.placeholder)
        self.restored = False


def _clean(
    root: etree._Element,
    config: DomConfig,
    drops: list[str],
    stats: dict[str, int],
    comments: _Comments | None = None,
) -> list[_Held]:
    """Remove `<head>`, code elements (`strip_elements`, one C pass), then chrome, hidden and
    boilerplate subtrees: `_mark` lists candidates in one flat pass, then each candidate not inside
    an already removed one is checked and removed. Returns the large boilerplate-named containers
    it set aside instead (`_Held`), for `_select_main` to put back if the article was among them.

    Readability keeps boilerplate-looking containers inside tables and code; that needs the
    candidate's ancestors, read only for candidates (a few percent of elements), in the same
    ancestor walk that finds whether it is nested in a removed subtree. A candidate container
    holding at least `config.spare_text_fraction` of the page's text is spared: a sidebar cannot
    hold most of a page, but ASP.NET wraps whole pages in `<form>`, and Drupal/WordPress themes
    name article wrappers "sidebar-right-mix" or "site_header". An article can still hold less
    than that fraction (a long list of teasers beside it) under a name like `entry theme share`:
    such containers are held, and Readability's answer — run the extraction again without the
    rule when the first result is poor — is applied to them alone (`_select_main`). Checking sizes
    costs one text scan per outermost candidate, up to `_SPARE_SCAN_FACTOR` times the page's text,
    so it stays linear.
    """
    for head in root.findall("head"):
        _drop_tree(head)
    etree.strip_elements(root, *_CODE_TAGS, with_tail=False)
    _merge_noscript_copies(root, stats)
    embeds: list[etree._Element] = []
    marks = _mark(root, comments, embeds)
    if not marks:
        return []
    # The embedded posts inside each element (few per page: one ancestor walk each).
    wraps: dict[etree._Element, list[etree._Element]] = {}
    for embed in embeds:
        for ancestor in embed.iterancestors():
            wraps.setdefault(ancestor, []).append(embed)
    body = next(root.iter("body"), root)
    total = _text_len(body)
    spare_at = max(config.spare_text_fraction * total, 200)
    scanned, scan_budget = 0, _SPARE_SCAN_FACTOR * total + 10_000
    doomed: dict[etree._Element, str] = {}
    held: dict[etree._Element, _Held] = {}
    for el, reason in marks:
        nested = protected = False
        wrapper = reason == "boilerplate" and el in wraps and _embed_wrapper(el, wraps[el])
        for ancestor in el.iterancestors():
            if ancestor in doomed:
                nested = True
                if ancestor in held and not wrapper:
                    held[ancestor].inner.append((el, reason))
                break
            if ancestor.tag in _PROTECTING:
                protected = True
        if nested:
            continue
        if wrapper:
            # `div.social-embed` around a tweet: the post is the content, the name its widget's.
            # Chrome beside the post (share buttons) is still marked on its own. Whether the post
            # belongs to the article is main-content selection's call, as for any blockquote.
            _bump(stats, "spared_embed_wrapper")
            continue
        if protected and reason == "boilerplate":
            # Readability keeps chrome-looking text inside tables (data tables name their cells
            # oddly), but a picture inside share or ad chrome is chrome even in a layout table.
            for img in list(el.iter("img")):
                drops.append("image.boilerplate")
                _drop_tree(img)
            continue
        size = -1
        if el.tag not in _NEVER_SPARED and scanned < scan_budget:
            size = _text_len(el)
            scanned += size
        # A container named like boilerplate but big enough to be the article is held, whatever
        # its share of the page (a 50-slide gallery of captions is most of a page, and must not
        # win just by size); a comment section or a chrome tag (form, header) that big is spared.
        holdable = reason == "boilerplate" and not _comment_named(el)
        if size >= spare_at and not holdable:
            _bump(stats, f"spared_{reason}")
            continue
        doomed[el] = reason
        if holdable and size >= _HOLD_MIN_CHARS:
            held[el] = _Held(el, etree.Element("m3w-held"), size, [])
    for el, reason in doomed.items():
        if el in held:
            continue  # its images are counted once it is known to stay out (_select_main)
        _bump(stats, f"removed_{reason}")
        drops.extend(f"image.{reason}" for _ in el.iter("img"))
        _drop_tree(el)
    for keep in held.values():
        keep.set_aside()
    return list(held.values())


def _comment_named(el: etree._Element) -> bool:
    return any(
        _name_flags(value) & _COMMENT_NAME
        for value in (el.get("class"), el.get("id"), el.get("itemprop"))
        if value
    )


def _embed_wrapper(el: etree._Element, inner: list[etree._Element]) -> bool:
    """Whether a chrome-named `el` is essentially one embedded post: it holds exactly one, whose
    text is at least `_EMBED_WRAPPER_SHARE` of its own, and neither an unlikely role nor a comment
    name says it is chrome anyway. A feed of several posts, or a widget with more of its own text
    than the post, stays chrome."""
    if len(inner) != 1 or _comment_named(el):
        return False
    if (el.get("role") or "").strip().lower() in _UNLIKELY_ROLES:
        return False
    post = _text_len(inner[0])
    return post > 0 and post >= _EMBED_WRAPPER_SHARE * _text_len(el)


def _remove_marks(
    marks: list[tuple[etree._Element, str]], drops: list[str], stats: dict[str, int]
) -> None:
    """Remove the outermost of `marks` (the chrome inside a container that was put back)."""
    gone: set[etree._Element] = set()
    for el, reason in marks:
        if any(a in gone for a in el.iterancestors()):
            continue
        gone.add(el)
        _bump(stats, f"removed_{reason}")
        drops.extend(f"image.{reason}" for _ in el.iter("img"))
        _drop_tree(el)


def too_deep(root: etree._Element, max_depth: int) -> bool:
    """Whether any element sits deeper than `max_depth` levels (libxml2 with `huge_tree` cuts a
    DOM at 2048 levels without an error, so a deeper page must be caught by asking). One compiled
    XPath `/*/*/…` of max_depth+1 steps: libxml2 evaluates it level by level, O(n)."""
    return bool(_depth_xpath(max_depth + 1)(root))


@functools.lru_cache(maxsize=8)
def _depth_xpath(steps: int) -> etree.XPath:
    return etree.XPath("boolean(" + "/*" * steps + ")")


def _append_text(parent: etree._Element, previous: etree._Element | None, text: str) -> None:
    if previous is None:
        parent.text = (parent.text or "") + text
    else:
        previous.tail = (previous.tail or "") + text


def _drop_tree(el: etree._Element) -> None:
    """Remove `el` and its subtree but keep its tail text, which belongs to the parent (as
    lxml.html's `drop_tree`, for plain etree elements)."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        _append_text(parent, el.getprevious(), el.tail)
    parent.remove(el)


def _drop_tag(el: etree._Element) -> None:
    """Replace `el` by its children and text (lxml.html's `drop_tag`, for plain etree elements)."""
    parent = el.getparent()
    if parent is None:
        return
    previous = el.getprevious()
    if el.text:
        _append_text(parent, previous, el.text)
    if el.tail:
        if len(el):
            last = el[-1]
            last.tail = (last.tail or "") + el.tail
        else:
            _append_text(parent, previous, el.tail)
    index = parent.index(el)
    parent[index : index + 1] = list(el)


# --------------------------------------------------------------------------------- 4. main content

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


def _raw_text(el: etree._Element) -> str:
    """The element's text as libxml2 serialises it (whitespace as in the source)."""
    return etree.tostring(el, method="text", encoding=str, with_tail=False)


def _chars(text: str) -> int:
    """Non-whitespace characters: the length measure of the scoring. Four C-speed counts instead
    of collapsing whitespace (split/join), which cost more than the serialisation itself."""
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t") - text.count("\r")


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
            n = self.links[a] = _chars(_raw_text(a) if len(a) else (a.text or ""))
        return n

    def __call__(self, el: etree._Element, text: str | None = None) -> tuple[int, int]:
        hit = self.cache.get(el)
        if hit is None:
            chars = _chars(_raw_text(el) if text is None else text)
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
        if tag not in _BLOCK_TAGS:
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
        text = _raw_text(el)
        if _chars(text) < 20:  # Readability: 25 characters, spaces included
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
            score *= _COMMENT_SCORE_WEIGHT
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


def _select_main(
    root: etree._Element,
    config: DomConfig,
    drops: list[str],
    stats: dict[str, int],
    held: list[_Held] | None = None,
    seen_comments: _Comments | None = None,
) -> list[etree._Element]:
    """The elements holding the main content, in document order (Readability.js `_grabArticle`):
    returns `[body]` when main-content focus is off or nothing wins.

    `held` are the large boilerplate-named containers `_clean` set aside. When there are any, they
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
    comments = _comment_blocks(body, seen_comments or _Comments(set(), []))
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
            _bump(stats, "boilerplate_put_back", len(suspects))
            for h in suspects:
                _remove_marks(h.inner, drops, stats)
        else:
            for h in suspects:
                h.set_aside()
    for h in held:
        if not h.restored:
            _bump(stats, "removed_boilerplate")
            drops.extend("image.boilerplate" for _ in h.el.iter("img"))
    if chosen.blocks != [body]:
        stats["main_chars"] = chosen.kept
        stats["body_chars"] = chosen.total
        drops.extend("image.outside_main" for _ in range(max(chosen.outside, 0)))
    return chosen.blocks


def _could_win(held: _Held, first: _Main, config: DomConfig, comments: set[etree._Element]) -> bool:
    """Whether a held container competes again. Readability's rule: when the first choice is
    poor (no winner, or under 500 characters). Beyond it, only a container whose own name also
    claims content (`entry`, `post`, `story`, `article`: the positive class words, as in
    `div.entry.theme.share`) and whose best candidate, scored alone, comes near the first
    winner's: a gallery of captions named `legends` stays out however well its text scores."""
    if first.fallback or first.kept < 500:
        return True
    if held.chars < max(_HOLD_MIN_CHARS, first.kept / 4):
        return False
    if not _POSITIVE.search(f"{held.el.get('class') or ''} {held.el.get('id') or ''}"):
        return False
    measure = _Measure()
    raw = _score_paragraphs(held.el, config, measure, comments)
    if not raw:
        return False
    best = max(_Scores(raw, measure).get(el) or 0.0 for el in raw)
    return best >= _HOLD_COMPETE * first.top_score


def _won_by(second: _Main, first: _Main, held: list[_Held]) -> bool:
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


# Comment threads without comment class names: a container with at least this many children of
# which most hold a date (`<time>`, `datetime=`) or an author marker — the shape of every
# comment system (WordPress, Disqus, Discourse, phpBB) whatever it calls its classes.
_THREAD_MIN_POSTS = 4
_THREAD_POST_SHARE = 0.6
_THREAD_MAX_UP = 6
_TIME, _AUTHOR = 1, 2  # what a post marker says: when, and who
_AUTHOR_WORDS = ("author", "byline", "username", "user-name", "vcard", "commenter", "poster")
_WORD_FLAGS = _word_flags()
_NAME_WORDS_RE = re.compile(
    "|".join(re.escape(w) for w in sorted(_WORD_FLAGS, key=len, reverse=True))
)
_COMMENT_SCORE_WEIGHT = 0.1  # a comment's paragraph scores a tenth of an article paragraph


@dataclass(slots=True)
class _Comments:
    """What `_mark` saw of comments: elements named for them, and the post markers (`<time>`,
    `datetime=`, author names) that reveal a thread whatever its classes say."""

    named: set[etree._Element]
    markers: list[tuple[etree._Element, int]]


def _comment_blocks(body: etree._Element, seen: _Comments) -> set[etree._Element]:
    """Roots of comment posts and threads: the elements named for comments, and the structural
    threads — a container with at least `_THREAD_MIN_POSTS` children of which most hold both a
    date and an author (every comment system's shape: WordPress, Disqus, Discourse, phpBB). A
    live blog's entries carry dates but no per-entry author, and stay article. Their paragraphs
    score little, and they are never added to a chosen article as siblings, so a long
    discussion cannot outvote the story it discusses; a page that is only a discussion keeps it
    (every candidate is discounted alike)."""
    out = set(seen.named)
    hits: dict[etree._Element, dict[etree._Element, int]] = {}
    for marker, kind in seen.markers:
        child, ancestor = marker, marker.getparent()
        for _ in range(_THREAD_MAX_UP):
            if ancestor is None or ancestor is body:
                break
            posts = hits.setdefault(ancestor, {})
            posts[child] = posts.get(child, 0) | kind
            child, ancestor = ancestor, ancestor.getparent()
    for container, posts in hits.items():
        full = sum(1 for kinds in posts.values() if kinds == _TIME | _AUTHOR)
        if full < _THREAD_MIN_POSTS:
            continue
        children = sum(1 for c in container if isinstance(c.tag, str))
        if full >= _THREAD_POST_SHARE * children:
            out.add(container)
    return out


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
            elif 0 < chars < 80 and links == 0 and re.search(r"\.(\s|$)", _raw_text(sib).strip()):
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


# ------------------------------------------------------------------------------------ 5. linearise


def _dimension(value: str | None) -> int | None:
    if not value:
        return None
    m = _DIMENSION.match(value)
    return int(m.group(1)) if m else None


def srcset_candidates(srcset: str) -> list[tuple[str, str]]:
    """(URL, descriptor) pairs of a srcset, per the HTML parsing algorithm (§4.8.4.3.10): a URL is a
    run of non-whitespace (so commas inside it, as in Cloudinary `w_300,h_200` paths, belong to
    it); trailing commas end a candidate; otherwise descriptors run to the next comma."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(srcset)
    while i < n:
        while i < n and (srcset[i].isspace() or srcset[i] == ","):
            i += 1
        j = i
        while j < n and not srcset[j].isspace():
            j += 1
        if j == i:
            break
        url, i = srcset[i:j], j
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            k = srcset.find(",", i)
            k = n if k < 0 else k
            descriptor, i = srcset[i:k].strip(), k + 1
        if url:
            out.append((url, descriptor))
    return out


def _descriptor_size(descriptor: str) -> tuple[int, float]:
    """Sort key of a srcset descriptor: any `w` beats any `x` (a width says more than a density);
    a missing or unreadable descriptor means 1x (HTML §4.8.4.3.10)."""
    desc = descriptor.split()[0].lower() if descriptor else ""
    try:
        if desc.endswith("w"):
            return (1, float(desc[:-1]))
        if desc.endswith("x"):
            return (0, float(desc[:-1]))
    except ValueError:
        pass
    return (0, 1.0)


def srcset_by_size(srcset: str) -> list[str]:
    """A srcset's candidate URLs, largest first; equal sizes keep their order."""
    pairs = srcset_candidates(srcset)
    order = sorted(range(len(pairs)), key=lambda i: _descriptor_size(pairs[i][1]), reverse=True)
    return [pairs[i][0] for i in order]


def largest_candidate(srcset: str) -> str | None:
    """The largest candidate of a srcset (ties to the first)."""
    urls = srcset_by_size(srcset)
    return urls[0] if urls else None


def _usable(value: str | None) -> str:
    """An attribute value that can be a URL: not empty, not a JSON blob some lazy loaders store."""
    value = (value or "").strip()
    return "" if value.startswith(("{", "[")) else value


def _own_candidates(img: etree._Element) -> list[tuple[str, str]]:
    """(raw URL, rule) for what one `<img>` itself names, in preference order: srcset-like
    attributes (largest first), the `<picture>` sources around it, lazy-load attributes, `src`."""
    attrs = dict(img.items())
    out: list[tuple[str, str]] = []
    for name in _SRCSET_NAMES:
        value = attrs.get(name)
        if value and value.strip():
            out.extend((url, "srcset") for url in srcset_by_size(value))
    # libxml2 does not know <source> is void and nests the <img> inside it: look two levels up.
    parent = img.getparent()
    if parent is not None and parent.tag == "source":
        parent = parent.getparent()
    if parent is not None and parent.tag == "picture":
        for source in parent.iter("source"):
            value = source.get("srcset") or source.get("data-srcset")
            if value:
                out.extend((url, "picture") for url in srcset_by_size(value))
    if len(attrs) > 1:
        for name in _LAZY_SRC_ATTRS:
            value = _usable(attrs.get(name))
            if value:
                out.append((value, "lazy_attr"))
    src = _usable(attrs.get("src"))
    if src:
        out.append((src, "src"))
    return out


_SRCSET_NAMES = ("srcset", *_LAZY_SRCSET_ATTRS)


def _candidates(img: etree._Element) -> list[tuple[str, str]]:
    """Every URL that may hold this image's picture, best first (`_own_candidates`, then the
    `<noscript>` copy's). Evidence, not names, demotes a placeholder `src`: when a lazy attribute
    or the noscript copy names another URL, `src` goes last (the visible `src` of a lazy image is
    what the page shows before its script runs)."""
    own = _own_candidates(img)
    copy = [(url, "noscript") for url in (img.get(_NOSCRIPT_URLS) or "").split("\n") if url]
    if not copy:
        return own
    src = [c for c in own if c[1] == "src"]
    rest = [c for c in own if c[1] != "src"]
    if src and all(url != src[0][0] for url, _ in copy):
        return rest + copy + src
    return rest + src + copy


def _data_uri_bytes(uri: str) -> int:
    """Decoded payload size of a data: URI without decoding it (base64 → ×3/4)."""
    head, _, payload = uri.partition(",")
    if head.lower().endswith(";base64"):
        return len(payload) * 3 // 4
    return len(payload)


def _image_node(
    img: etree._Element, base: str, config: DomConfig, drops: list[str], stats: dict[str, int]
) -> ImageNode | None:
    """The ImageNode for one `<img>` (its candidate URLs resolved against `base`, placeholders and
    pixels removed), or None with the reason code appended to `drops`. Which rule named the
    preferred URL is counted in `stats` (`image_from_<rule>`)."""
    raw = _candidates(img)
    if not raw:
        drops.append("image.no_src")
        return None
    width, height = _dimension(img.get("width")), _dimension(img.get("height"))
    urls: list[str] = []
    rules: list[str] = []
    refused: list[str] = []  # why each refused candidate is not a picture, in order
    src_url = None  # what `src` names: a URL, or the reason it is none
    for value, rule in raw:
        url = _candidate_url(value, base, config)
        if rule == "src":
            src_url = url
        if url.startswith("image."):
            # The preferred URL naming a logo or button makes the image one, whatever else the
            # tag names; a placeholder `src` is only passed over.
            if url == "image.url_rule" and not urls and rule != "src":
                drops.append(url)
                return None
            refused.append(url)
        elif url not in urls:
            urls.append(url)
            rules.append(rule)
    if not urls:
        drops.append(refused[0])
        return None
    # A tag declaring a 1×1 box shows nothing at a readable size, whatever URLs it names (NYT puts
    # width=1 height=1 on recirculation thumbnails; beacons do it with src alone).
    if (width is not None and width <= 1) or (height is not None and height <= 1):
        drops.append("image.tracking_pixel")
        return None
    # Evidence, recorded: another attribute decided only when it named a URL other than `src`'s
    # (a lazy attribute repeating `src`, as in a page saved after its lazy loader ran, is none).
    if src_url is not None and src_url != urls[0]:
        _bump(stats, "image_src_passed_over")
    _bump(stats, f"image_from_{'src' if src_url == urls[0] else rules[0]}")
    alt = _WS.sub(" ", img.get("alt") or img.get(_NOSCRIPT_ALT) or "").strip()
    return ImageNode(src=urls[0], alt=alt, width=width, height=height, candidates=urls)


def _candidate_url(value: str, base: str, config: DomConfig) -> str:
    """An absolute candidate URL, or the reason code why it is no picture: a tiny `data:` URI
    (`image.tiny_data_uri`), a known beacon or spacer (`image.tracking_pixel`), unparsable or not
    http(s) (`image.bad_url`), a `url_block_rules` match (`image.url_rule`). Absolute and
    scheme-relative URLs (most srcset candidates) skip `urljoin`, the costliest step."""
    if value.startswith(("http://", "https://")):
        url = value
    elif value.startswith("data:"):
        if _data_uri_bytes(value) < config.min_data_uri_bytes:
            return "image.tiny_data_uri"
        return value
    else:
        try:
            url = urljoin(base, value)
        except ValueError:
            return "image.bad_url"
        if not url.startswith(("http://", "https://")):
            return "image.bad_url"
    low = url.lower()
    if _PIXEL_URL.search(low):
        return "image.tracking_pixel"
    if any(rule in low for rule in config.url_block_rules):
        return "image.url_rule"
    return url


_CAPTION_TAGS = frozenset(("figure", "figcaption", "caption"))


# What a run of text is, for `_Paragraphs.add`: outside links, in a link, or in a card link of an
# embedded post (an `<a>` wrapping block elements: the widget's clickable placeholder, whose text
# is a label such as "View this post on Instagram").
_NO_LINK, _LINK, _CARD = 0, 1, 2


class _Paragraphs:
    """Accumulates inline text into paragraphs; `flush()` at each block boundary."""

    __slots__ = (
        "nodes", "parts", "link_chars", "chars", "tag", "config", "drops", "brs", "pre",
        "caption_depth", "caption", "emitted", "captions", "embed_depth", "embedded", "plain",
    )  # fmt: skip

    def __init__(self, config: DomConfig, drops: list[str]) -> None:
        self.nodes: list[Node] = []
        self.parts: list[str] = []
        self.link_chars = 0
        self.chars = 0
        self.tag = "p"
        self.config = config
        self.drops = drops
        self.brs = 0
        self.pre = 0
        self.caption_depth = 0  # open figure / figcaption / caption-classed blocks
        self.caption = False  # the current paragraph started inside one
        self.emitted: set[str] = set()  # normalised text of every paragraph emitted
        self.captions: set[str] = set()  # ... of those that were captions, and image alt texts
        self.embed_depth = 0  # open embedded-post blockquotes
        self.embedded = False  # the current paragraph is part of an embedded post
        self.plain = False  # ... and has visible text outside a card link's label

    def add(self, text: str | None, in_link: int, tag: str) -> None:
        """Append `text`; `in_link` is `_NO_LINK`, `_LINK` or `_CARD`."""
        if not text:
            return
        visible = not text.isspace()
        if self.brs >= 2 and visible:
            self.flush()
        if visible:
            self.brs = 0
            if in_link != _CARD:
                self.plain = True
        if not self.parts:
            self.tag = tag
            self.caption = self.caption_depth > 0
            self.embedded = self.embed_depth > 0
        self.parts.append(text)
        n = len(text)
        self.chars += n
        if in_link:
            self.link_chars += n

    def br(self) -> None:
        self.brs += 1
        self.parts.append("\n")

    def flush(self) -> None:
        self.brs = 0
        if not self.parts:
            return
        raw = "".join(self.parts)
        if self.pre:  # preformatted: keep line breaks and indentation, trim blank edges
            text = "\n".join(line.rstrip() for line in raw.strip("\n").split("\n")).strip("\n")
        else:
            text = _WS.sub(" ", raw).strip()
        link_chars, chars, plain = self.link_chars, self.chars, self.plain
        self.parts, self.link_chars, self.chars, self.plain = [], 0, 0, False
        if not text:
            return
        # An embedded post's links (hashtags, mentions, its permalink around an Instagram caption)
        # quote the post, they are no menu: its text stays unless all of it is a card's label.
        if (
            chars
            and link_chars / chars > self.config.max_link_density
            and not (self.embedded and plain)
        ):
            self.drops.append("text.link_dense")
            return
        key = text.lower()
        # A caption shown twice (a <figcaption> and the same words under a gallery thumbnail, or
        # an image's alt text printed beside it) is one caption: emitted once. Other repeats are
        # left to the document rules, which judge repetition as a whole.
        if key in self.emitted and (self.caption or key in self.captions):
            self.drops.append("text.duplicate_caption")
            return
        self.emitted.add(key)
        if self.caption:
            self.captions.add(key)
        self.nodes.append(TextNode(text, self.tag))

    def image(self, node: ImageNode) -> None:
        self.flush()
        if node.alt:
            self.captions.add(_WS.sub(" ", node.alt).strip().lower())
        self.nodes.append(node)


def _linearise(
    blocks: list[etree._Element],
    base: str,
    config: DomConfig,
    drops: list[str],
    stats: dict[str, int],
    max_images: int,
) -> list[Node]:
    """One walk in reading order: text into paragraphs split at block boundaries, `<img>` into
    ImageNodes, the first `max_images` distinct ones (images.max_images_per_doc; image.too_many
    after). A paragraph's tag is the innermost block element open when its text started."""
    paras = _Paragraphs(config, drops)
    seen: set[str] = set()
    images = 0
    posts = 0
    for block in blocks:
        links: list[int] = []  # per open <a>: _LINK, or _CARD inside an embedded post
        link = _NO_LINK  # what the innermost open <a> is
        block_tags: list[str] = []
        captions: list[bool] = []  # per open block: does it hold a caption
        for event, el in etree.iterwalk(block, events=("start", "end")):
            tag = el.tag
            if not isinstance(tag, str):
                continue
            if event == "start":
                if tag in _BLOCK_TAGS:
                    paras.flush()
                    block_tags.append(tag)
                    is_caption = tag in _CAPTION_TAGS or "caption" in (el.get("class") or "")
                    captions.append(is_caption)
                    paras.caption_depth += is_caption
                    if tag == "pre":
                        paras.pre += 1
                    elif tag == "blockquote" and _EMBED_CLASS.search(el.get("class") or ""):
                        paras.embed_depth += 1
                        posts += 1
                elif tag == "a":
                    link = _CARD if paras.embed_depth and _wraps_blocks(el) else _LINK
                    links.append(link)
                elif tag == "br":
                    paras.br()
                elif tag == "img":
                    node = _image_node(el, base, config, drops, stats)
                    if node is not None:
                        if node.src in seen:
                            drops.append("image.duplicate_in_page")
                        elif images >= max_images:
                            drops.append("image.too_many")
                        else:
                            seen.add(node.src)
                            images += 1
                            paras.image(node)
                current = block_tags[-1] if block_tags else "p"
                paras.add(el.text, link, "p" if current == "div" else current)
                continue
            if tag in _BLOCK_TAGS:
                paras.flush()
                if block_tags:
                    block_tags.pop()
                    paras.caption_depth -= captions.pop()
                if tag == "pre":
                    paras.pre -= 1
                elif tag == "blockquote" and paras.embed_depth:
                    if _EMBED_CLASS.search(el.get("class") or ""):
                        paras.embed_depth -= 1
            elif tag == "a" and links:
                links.pop()
                link = links[-1] if links else _NO_LINK
            if el is not block:
                current = block_tags[-1] if block_tags else "p"
                paras.add(el.tail, link, "p" if current == "div" else current)
        paras.flush()
        paras.embed_depth = 0
    stats["paragraphs"] = sum(isinstance(n, TextNode) for n in paras.nodes)
    stats["images"] = images
    if posts:
        stats["embedded_posts"] = posts
    return paras.nodes


def _wraps_blocks(a: etree._Element) -> bool:
    """A link wrapping block elements: a clickable card, not a link in running text."""
    return any(isinstance(d.tag, str) and d.tag in _BLOCK_TAGS for d in a.iterdescendants())
