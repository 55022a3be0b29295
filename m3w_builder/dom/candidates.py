"""Which URL is an `<img>`'s picture: its candidate URLs in preference order (srcset-like attributes
largest first, `<picture><source>`, lazy-load attributes, `src`, the `<noscript>` copy), a
placeholder `src` demoted by evidence rather than by name, and the ImageNode built from them with
tracking pixels, tiny `data:` URIs, bad URLs and `url_block_rules` matches refused. The noscript
copies are merged here too (during `clean_tree`), since they exist only to become candidates.
`srcset_candidates`, `srcset_by_size` and `largest_candidate` are public: the crawl and benchmarks
read srcsets the same way."""

from __future__ import annotations

import re
from urllib.parse import urljoin

from lxml import etree

from m3w_builder.config import DomConfig
from m3w_builder.document import ImageNode
from m3w_builder.dom.tree import WS, bump, drop_tag, drop_tree

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
_DIMENSION = re.compile(r"^\s*(\d+)(?:\.\d+)?\s*(?:px)?\s*$", re.I)


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


# Attributes m3w writes on a visible `<img>` to carry its `<noscript>` copy's URLs and alt text into
# the candidate list (one per line); never in real markup.
_NOSCRIPT_URLS = "data-m3w-noscript"
_NOSCRIPT_ALT = "data-m3w-noscript-alt"


def merge_noscript_copies(root: etree._Element, stats: dict[str, int]) -> None:
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
            bump(stats, "unwrapped_noscript")
            drop_tag(noscript)
            continue
        for img, copy in zip(visible, copies, strict=True):
            urls = [url for url, _ in _own_candidates(copy) if url]
            if urls:
                img.set(_NOSCRIPT_URLS, "\n".join(urls))
            alt = (copy.get("alt") or "").strip()
            if alt:
                img.set(_NOSCRIPT_ALT, alt)
        bump(stats, "noscript_merged")
        drop_tree(noscript)


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


def _dimension(value: str | None) -> int | None:
    if not value:
        return None
    m = _DIMENSION.match(value)
    return int(m.group(1)) if m else None


def _data_uri_bytes(uri: str) -> int:
    """Decoded payload size of a data: URI without decoding it (base64 → ×3/4)."""
    head, _, payload = uri.partition(",")
    if head.lower().endswith(";base64"):
        return len(payload) * 3 // 4
    return len(payload)


def image_node(
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
        bump(stats, "image_src_passed_over")
    bump(stats, f"image_from_{'src' if src_url == urls[0] else rules[0]}")
    alt = WS.sub(" ", img.get("alt") or img.get(_NOSCRIPT_ALT) or "").strip()
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
