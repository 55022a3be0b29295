"""Clean (pass 3): what is removed from the tree before main content is chosen, and why. The
removal rules and their tables: chrome and code tags, hidden elements, boilerplate named by
class/id/role (Readability.js's "unlikely candidates"), with their exceptions — embedded-post
wrappers, chrome inside tables and code, containers too large to be chrome — and the large
boilerplate-named containers held aside (`Held`) for `select_main` to put back if the article was
among them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from lxml import etree

from m3w_builder.config import DomConfig
from m3w_builder.dom.candidates import merge_noscript_copies
from m3w_builder.dom.comments import AUTHOR, AUTHOR_WORDS, COMMENT_WORDS, TIME, Comments
from m3w_builder.dom.tree import EMBED_CLASS, bump, drop_tree, text_len

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
# Removed even when large: their text is never prose (see clean_tree's size guard).
_NEVER_SPARED = frozenset(
    """script style template svg math canvas object embed applet select iframe frame frameset
    button input textarea option label audio video map dialog menu link meta head title base
    noscript""".split()
)
_SPARE_SCAN_FACTOR = 4  # size checks may read the page's text at most this many times: O(n)
# <math> is MathML, which has no text a language model can read as prose; wikipedia's rendered math
# images are `<img>` and survive.


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
# A chrome-named wrapper is kept when its one embedded post holds at least this share of its text.
_EMBED_WRAPPER_SHARE = 2 / 3


_PROTECTING = frozenset(("table", "code", "pre"))
_NOT_BOILERPLATE = frozenset(("html", "body", "a", "article", "main"))


def _mark(
    root: etree._Element,
    comments: Comments | None = None,
    embeds: list[etree._Element] | None = None,
) -> list[tuple[etree._Element, str]]:
    """Every element to remove, with its reason, in document order (nested ones included; the
    caller keeps the outermost). One flat `iter()`, reading each element's attributes once via
    `items()` — 2.5× faster than an `iterwalk` asking `get()` per attribute. Elements whose
    class, id or itemprop name a comment, and comment-post markers, go to `comments` in the
    same pass; embedded-post blockquotes (`EMBED_CLASS`) go to `embeds` and are never marked
    by their names."""
    marks: list[tuple[etree._Element, str]] = []
    for el in root.iter():
        tag = el.tag
        if tag in _DROP_TAGS:
            marks.append((el, "tag"))
            continue
        if tag == "time" and comments is not None:
            comments.markers.append((el, TIME))
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
                comments.markers.append((el, TIME))
            elif name == "rel" and value.strip().lower() == "author" and comments is not None:
                comments.markers.append((el, AUTHOR))
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
        if tag == "blockquote" and cls and embeds is not None and EMBED_CLASS.search(cls):
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
                comments.markers.append((el, AUTHOR))
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
        (COMMENT_WORDS, _COMMENT_NAME),
        (AUTHOR_WORDS, _AUTHOR_NAME),
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


_WORD_FLAGS = _word_flags()
_NAME_WORDS_RE = re.compile(
    "|".join(re.escape(w) for w in sorted(_WORD_FLAGS, key=len, reverse=True))
)


# Boilerplate-named containers holding at least this many characters are set aside, not deleted:
# they might be the article itself under an unlucky class name (`select_main` may put them back).
HOLD_MIN_CHARS = 500


@dataclass(slots=True)
class Held:
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


def clean_tree(
    root: etree._Element,
    config: DomConfig,
    drops: list[str],
    stats: dict[str, int],
    comments: Comments | None = None,
) -> list[Held]:
    """Remove `<head>`, code elements (`strip_elements`, one C pass), then chrome, hidden and
    boilerplate subtrees: `_mark` lists candidates in one flat pass, then each candidate not inside
    an already removed one is checked and removed. Returns the large boilerplate-named containers
    it set aside instead (`Held`), for `select_main` to put back if the article was among them.

    Readability keeps boilerplate-looking containers inside tables and code; that needs the
    candidate's ancestors, read only for candidates (a few percent of elements), in the same
    ancestor walk that finds whether it is nested in a removed subtree. A candidate container
    holding at least `config.spare_text_fraction` of the page's text is spared: a sidebar cannot
    hold most of a page, but ASP.NET wraps whole pages in `<form>`, and Drupal/WordPress themes
    name article wrappers "sidebar-right-mix" or "site_header". An article can still hold less
    than that fraction (a long list of teasers beside it) under a name like `entry theme share`:
    such containers are held, and Readability's answer — run the extraction again without the
    rule when the first result is poor — is applied to them alone (`select_main`). Checking sizes
    costs one text scan per outermost candidate, up to `_SPARE_SCAN_FACTOR` times the page's text,
    so it stays linear.
    """
    for head in root.findall("head"):
        drop_tree(head)
    etree.strip_elements(root, *_CODE_TAGS, with_tail=False)
    merge_noscript_copies(root, stats)
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
    total = text_len(body)
    spare_at = max(config.spare_text_fraction * total, 200)
    scanned, scan_budget = 0, _SPARE_SCAN_FACTOR * total + 10_000
    doomed: dict[etree._Element, str] = {}
    held: dict[etree._Element, Held] = {}
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
            bump(stats, "spared_embed_wrapper")
            continue
        if protected and reason == "boilerplate":
            # Readability keeps chrome-looking text inside tables (data tables name their cells
            # oddly), but a picture inside share or ad chrome is chrome even in a layout table.
            for img in list(el.iter("img")):
                drops.append("image.boilerplate")
                drop_tree(img)
            continue
        size = -1
        if el.tag not in _NEVER_SPARED and scanned < scan_budget:
            size = text_len(el)
            scanned += size
        # A container named like boilerplate but big enough to be the article is held, whatever
        # its share of the page (a 50-slide gallery of captions is most of a page, and must not
        # win just by size); a comment section or a chrome tag (form, header) that big is spared.
        holdable = reason == "boilerplate" and not _comment_named(el)
        if size >= spare_at and not holdable:
            bump(stats, f"spared_{reason}")
            continue
        doomed[el] = reason
        if holdable and size >= HOLD_MIN_CHARS:
            held[el] = Held(el, etree.Element("m3w-held"), size, [])
    for el, reason in doomed.items():
        if el in held:
            continue  # its images are counted once it is known to stay out (select_main)
        bump(stats, f"removed_{reason}")
        drops.extend(f"image.{reason}" for _ in el.iter("img"))
        drop_tree(el)
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
    post = text_len(inner[0])
    return post > 0 and post >= _EMBED_WRAPPER_SHARE * text_len(el)


def remove_marks(
    marks: list[tuple[etree._Element, str]], drops: list[str], stats: dict[str, int]
) -> None:
    """Remove the outermost of `marks` (the chrome inside a container that was put back)."""
    gone: set[etree._Element] = set()
    for el, reason in marks:
        if any(a in gone for a in el.iterancestors()):
            continue
        gone.add(el)
        bump(stats, f"removed_{reason}")
        drops.extend(f"image.{reason}" for _ in el.iter("img"))
        drop_tree(el)
