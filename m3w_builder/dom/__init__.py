"""DOM → Document: the HTML page as an ordered list of paragraphs and images (DESIGN §2).

`extract(html, url, config)` is a recipe of named passes, one module each. Each pass is ONE pass
over the tree (an `etree.iterwalk` or one `iter()`), never a loop that restarts from the top after
every edit — the quadratic mistake of OBELICS's DOM simplifier
(obelics/processors/dom_tree_simplificator.py, which re-walks the whole tree once per rule and per
change). The passes, in order (`extract_tree` runs 2-5):

1. `parse` (parser.py): lxml's libxml2 HTML parser (17× faster than BeautifulSoup on the dev
   corpus, see benchmarks/results/extract.md), comments and processing instructions removed while
   parsing; `too_deep` asks whether libxml2 cut the tree at its depth limit.
2. `base_url` (parser.py): `<base href>` resolved against the page URL (HTML §4.2.3) for every
   relative URL.
3. `clean_tree` (clean.py): drop non-content elements (script/style/nav/footer/aside/form/...),
   hidden elements (`hidden`, `aria-hidden=true`, inline `display:none`/`visibility:hidden`) and
   boilerplate containers named by class/id/role (Readability.js's "unlikely candidates" list),
   except a wrapper that is essentially one embedded post (a tweet in `div.social-embed`); large
   boilerplate-named containers are held aside, not deleted. A `<noscript>` copy of an image
   becomes fallback candidates of its visible partner, or is unwrapped when it is the only copy
   (candidates.py, `merge_noscript_copies`); other `<noscript>` is dropped. Comment sections are
   noted on the way (comments.py).
4. `select_main` (main_content.py): main-content focus by Readability-style scoring (Mozilla
   Readability.js, `_grabArticle`): paragraphs score by length and commas, pass the score up to
   their parent and grandparent; the best container, discounted by its link density, plus
   qualifying siblings, is the article. Held containers compete again when they could win; comment
   threads (comments.py, `comment_blocks`) score little. Falls back to the whole body when the
   winner holds too little text, so non-article pages (galleries, forums) are not emptied.
5. `linearise_blocks` (linearise.py): one walk in reading order that segments text into paragraphs
   at block boundaries (p, div, li, h1-6, td/th, figcaption, blockquote, pre, two consecutive
   `<br>`), normalises whitespace, drops link-dense paragraphs (menus, tag clouds, "related" lists;
   not the text of an embedded post, whose links quote it) and emits an ImageNode for every `<img>`
   up to the per-document cap. Which URL is the image is candidates.py's (`image_node`: src,
   srcset, lazy-load attributes, `<picture><source>`, the noscript copy; placeholders demoted by
   evidence), which also drops tracking pixels, tiny `data:` URIs and URLs matching
   `config.url_block_rules`.

tree.py holds what several passes share: text measures, element removal, the block-tag and
embedded-post tables.

Every removed image and paragraph leaves its reason code in `doc.drops`; removed elements are counted
in `doc.stats["dom"]`."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from m3w_builder.config import DomConfig, ImageConfig
from m3w_builder.document import Document
from m3w_builder.dom.candidates import largest_candidate, srcset_by_size, srcset_candidates
from m3w_builder.dom.clean import clean_tree
from m3w_builder.dom.comments import Comments
from m3w_builder.dom.linearise import linearise_blocks
from m3w_builder.dom.main_content import select_main
from m3w_builder.dom.parser import base_url, make_parser, parse, too_deep

__all__ = [
    "MAX_IMAGES_PER_DOC",
    "extract",
    "extract_tree",
    "largest_candidate",
    "make_parser",
    "parse",
    "srcset_by_size",
    "srcset_candidates",
    "too_deep",
]

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
    base = base_url(root, url)
    comments = Comments(set(), [])
    held = clean_tree(root, config, doc.drops, stats, comments)
    check()
    blocks = select_main(root, config, doc.drops, stats, held, comments)
    check()
    doc.nodes = linearise_blocks(blocks, base, config, doc.drops, stats, max_images)
    doc.stats["dom"] = stats
    return doc


def _no_check() -> None:
    return None
