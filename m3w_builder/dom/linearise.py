"""Linearise (pass 5): one walk over the main-content blocks in reading order, text into paragraphs
split at block boundaries (link-dense ones and repeated captions dropped), `<img>` into ImageNodes
(candidates.py), at most `max_images` distinct ones per document (`image.too_many` after)."""

from __future__ import annotations

from lxml import etree

from m3w_builder.config import DomConfig
from m3w_builder.document import ImageNode, Node, TextNode
from m3w_builder.dom.candidates import image_node
from m3w_builder.dom.tree import BLOCK_TAGS, EMBED_CLASS, WS

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
            text = WS.sub(" ", raw).strip()
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
            self.captions.add(WS.sub(" ", node.alt).strip().lower())
        self.nodes.append(node)


def linearise_blocks(
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
                if tag in BLOCK_TAGS:
                    paras.flush()
                    block_tags.append(tag)
                    is_caption = tag in _CAPTION_TAGS or "caption" in (el.get("class") or "")
                    captions.append(is_caption)
                    paras.caption_depth += is_caption
                    if tag == "pre":
                        paras.pre += 1
                    elif tag == "blockquote" and EMBED_CLASS.search(el.get("class") or ""):
                        paras.embed_depth += 1
                        posts += 1
                elif tag == "a":
                    link = _CARD if paras.embed_depth and _wraps_blocks(el) else _LINK
                    links.append(link)
                elif tag == "br":
                    paras.br()
                elif tag == "img":
                    node = image_node(el, base, config, drops, stats)
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
            if tag in BLOCK_TAGS:
                paras.flush()
                if block_tags:
                    block_tags.pop()
                    paras.caption_depth -= captions.pop()
                if tag == "pre":
                    paras.pre -= 1
                elif tag == "blockquote" and paras.embed_depth:
                    if EMBED_CLASS.search(el.get("class") or ""):
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
    return any(isinstance(d.tag, str) and d.tag in BLOCK_TAGS for d in a.iterdescendants())
