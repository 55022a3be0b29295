"""Parse (pass 1) and the base URL (pass 2): lxml's libxml2 HTML parser with the settings every
caller needs (comments and processing instructions removed, no network, deep trees allowed), the
depth check that catches what libxml2 cuts silently, and the URL relative links resolve against."""

from __future__ import annotations

import functools
from urllib.parse import urljoin

from lxml import etree


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


def too_deep(root: etree._Element, max_depth: int) -> bool:
    """Whether any element sits deeper than `max_depth` levels (libxml2 with `huge_tree` cuts a
    DOM at 2048 levels without an error, so a deeper page must be caught by asking). One compiled
    XPath `/*/*/…` of max_depth+1 steps: libxml2 evaluates it level by level, O(n)."""
    return bool(_depth_xpath(max_depth + 1)(root))


@functools.lru_cache(maxsize=8)
def _depth_xpath(steps: int) -> etree.XPath:
    return etree.XPath("boolean(" + "/*" * steps + ")")


def base_url(root: etree._Element, url: str) -> str:
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
