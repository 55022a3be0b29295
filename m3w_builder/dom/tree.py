"""What several DOM passes share: the block-element and embedded-post tables, text measures (C-speed
serialisation and counts) and element removal that keeps tail text. One home, so that cleaning,
main-content scoring and linearisation agree on what a block is and how long a text is."""

from __future__ import annotations

import re

from lxml import etree

# Block-level elements: their start and end close the current paragraph (HTML §3.2.5.2.x "flow
# content" that browsers render as blocks). Inline elements (a, span, b, em...) do not.
BLOCK_TAGS = frozenset(
    """p div li ul ol dl dt dd h1 h2 h3 h4 h5 h6 td th tr table thead tbody tfoot caption figure
    figcaption blockquote pre section article main address hr center details summary fieldset
    legend body html""".split()
)


# Embedded posts: the `<blockquote>` each network's embed code writes into the page (the post's text
# and attribution, which the network's script turns into a widget; crawlers archive the blockquote).
# Inside the article it is quoted content: never chrome by its name, its wrapper kept when it is
# little more than the post (`clean_tree`), its link text not a menu (`linearise_blocks`).
EMBED_CLASS = re.compile(
    r"(?<![\w-])(?:twitter-tweet|twitter-video|instagram-media|tiktok-embed|reddit-card|"
    r"reddit-embed-bq|bluesky-embed|mastodon-embed)(?![\w-])"
)


WS = re.compile(r"\s+")


def bump(stats: dict[str, int], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def raw_text(el: etree._Element) -> str:
    """The element's text as libxml2 serialises it (whitespace as in the source)."""
    return etree.tostring(el, method="text", encoding=str, with_tail=False)


def count_chars(text: str) -> int:
    """Non-whitespace characters: the length measure of the scoring. Four C-speed counts instead
    of collapsing whitespace (split/join), which cost more than the serialisation itself."""
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t") - text.count("\r")


def text_len(el: etree._Element) -> int:
    """Characters of text, whitespace runs collapsed; libxml2 serialises, Python only splits."""
    return count_chars(raw_text(el))


def _append_text(parent: etree._Element, previous: etree._Element | None, text: str) -> None:
    if previous is None:
        parent.text = (parent.text or "") + text
    else:
        previous.tail = (previous.tail or "") + text


def drop_tree(el: etree._Element) -> None:
    """Remove `el` and its subtree but keep its tail text, which belongs to the parent (as
    lxml.html's `drop_tree`, for plain etree elements)."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        _append_text(parent, el.getprevious(), el.tail)
    parent.remove(el)


def drop_tag(el: etree._Element) -> None:
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
