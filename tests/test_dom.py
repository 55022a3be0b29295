"""dom.extract: one small generated HTML case per DOM rule, plus a corpus sanity check."""

from __future__ import annotations

import json

import pytest

from m3w_builder.config import DomConfig
from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.dom import extract, largest_candidate

URL = "https://example.org/news/story.html"
LOREM = (
    "The quick brown fox jumps over the lazy dog, again and again, while the farmer watches, "
    "counting the sheep that graze beside the old stone wall near the river."
)


def ext(body: str, *, head: str = "", **overrides) -> Document:
    """Extract a page whose <body> is `body`; main-content focus off unless asked for, so that each
    test sees exactly the rule it is about."""
    overrides.setdefault("main_content", False)
    html = f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"
    return extract(html, URL, DomConfig(**overrides))


def texts(doc: Document) -> list[str]:
    return [n.text for n in doc.nodes if isinstance(n, TextNode)]


def srcs(doc: Document) -> list[str]:
    return [n.src for n in doc.nodes if isinstance(n, ImageNode)]


# ---------------------------------------------------------------------------------- removal rules


@pytest.mark.parametrize(
    "junk",
    [
        "<script>var x = 'JUNK';</script>",
        "<style>p { color: red } /* JUNK */</style>",
        "<noscript>JUNK enable javascript</noscript>",
        "<template><p>JUNK</p></template>",
        "<nav><a href='/'>JUNK</a></nav>",
        "<header><p>JUNK</p></header>",
        "<footer><p>JUNK</p></footer>",
        "<aside><p>JUNK</p></aside>",
        "<form><label>JUNK</label><input name=q></form>",
        "<iframe src='x'>JUNK</iframe>",
        "<svg><text>JUNK</text></svg>",
        "<!-- JUNK comment -->",
        "<select><option>JUNK</option></select>",
    ],
)
def test_non_content_elements_are_removed(junk: str) -> None:
    doc = ext(f"<p>Keep me.</p>{junk}<p>Keep me too.</p>")
    assert texts(doc) == ["Keep me.", "Keep me too."]


def test_removed_element_keeps_its_tail_text() -> None:
    doc = ext("<p>before <script>x()</script>after</p>")
    assert texts(doc) == ["before after"]


@pytest.mark.parametrize(
    "hidden",
    [
        "<div hidden>JUNK<img src='/a.jpg'></div>",
        "<div aria-hidden='true'>JUNK<img src='/a.jpg'></div>",
        "<div style='color:red; display: none'>JUNK<img src='/a.jpg'></div>",
        "<div style='visibility:hidden'>JUNK<img src='/a.jpg'></div>",
    ],
)
def test_hidden_nodes_are_removed_and_their_images_counted(hidden: str) -> None:
    doc = ext(f"<p>Visible.</p>{hidden}")
    assert texts(doc) == ["Visible."]
    assert srcs(doc) == []
    assert doc.drops == ["image.hidden"]


def test_wikipedia_fallback_image_survives_aria_hidden() -> None:
    doc = ext("<span aria-hidden='true' class='mwe-math-fallback-image'><img src='/m.png'></span>")
    assert srcs(doc) == ["https://example.org/m.png"]


@pytest.mark.parametrize(
    "attrs",
    [
        "class='comments-section'",
        "id='share-buttons'",
        "class='related-links'",
        "class='sidebar'",
        "class='newsletter-signup'",
        "role='navigation'",
        "role='complementary'",
    ],
)
def test_boilerplate_containers_are_removed(attrs: str) -> None:
    doc = ext(f"<p>Story text.</p><div {attrs}><p>JUNK</p><img src='/thumb.jpg'></div>")
    assert texts(doc) == ["Story text."]
    assert doc.drops == ["image.boilerplate"]
    assert doc.stats["dom"]["removed_boilerplate"] == 1


def test_boilerplate_word_next_to_content_word_is_kept() -> None:
    # Readability's okMaybeItsACandidate: "comment" + "article" → keep (e.g. article-with-comments)
    doc = ext("<div class='article-comments-enabled'><p>Story text.</p></div>")
    assert texts(doc) == ["Story text."]


def test_boilerplate_classes_inside_tables_are_kept() -> None:
    doc = ext("<table><tr><td class='sidebar'>Cell text.</td></tr></table>")
    assert texts(doc) == ["Cell text."]


def test_link_dense_paragraphs_are_dropped() -> None:
    doc = ext(
        "<p>A real paragraph with <a href='/x'>one link</a> inside plenty of ordinary words.</p>"
        "<ul><li><a href='/a'>Home</a></li><li><a href='/b'>World news</a> | </li></ul>"
    )
    assert texts(doc) == ["A real paragraph with one link inside plenty of ordinary words."]
    assert doc.drops == ["text.link_dense", "text.link_dense"]


# ----------------------------------------------------------------------------- text segmentation


def test_paragraphs_split_at_block_boundaries_and_keep_their_tag() -> None:
    doc = ext(
        "<h1>Title</h1><div>div text<p>para</p>tail of div</div><ul><li>one</li><li>two</li></ul>"
        "<table><tr><th>head</th><td>cell</td></tr></table><blockquote>quote</blockquote>"
        "<figure><figcaption>caption</figcaption></figure>"
    )
    got = [(n.text, n.tag) for n in doc.text_nodes]
    assert got == [
        ("Title", "h1"),
        ("div text", "p"),
        ("para", "p"),
        ("tail of div", "p"),
        ("one", "li"),
        ("two", "li"),
        ("head", "th"),
        ("cell", "td"),
        ("quote", "blockquote"),
        ("caption", "figcaption"),
    ]


def test_inline_elements_do_not_split_and_whitespace_is_normalised() -> None:
    doc = ext("<p>  a <b>bold</b>\n\n  <i>word</i>,\tand<span>glued</span>  </p>")
    assert texts(doc) == ["a bold word, andglued"]


def test_double_br_splits_a_paragraph_single_br_does_not() -> None:
    doc = ext("<div>line one<br>line two<br><br>second para<br>\n<br>third</div>")
    assert texts(doc) == ["line one line two", "second para", "third"]


def test_pre_keeps_line_breaks_and_indentation() -> None:
    doc = ext("<pre>def f():\n    return 1\n</pre>")
    assert texts(doc) == ["def f():\n    return 1"]


def test_entities_and_non_ascii_text() -> None:
    doc = ext("<p>caf&eacute; &amp; na&#239;ve — 東京</p>")
    assert texts(doc) == ["café & naïve — 東京"]


# ---------------------------------------------------------------------------------------- images


def test_reading_order_interleaves_text_and_images() -> None:
    doc = ext("<p>one</p><img src='a.jpg' alt=' An   A '><p>two <img src='b.jpg'> three</p>")
    kinds = [n.text if isinstance(n, TextNode) else n.src for n in doc.nodes]
    assert kinds == [
        "one",
        "https://example.org/news/a.jpg",
        "two",
        "https://example.org/news/b.jpg",
        "three",
    ]
    assert doc.image_nodes[0].alt == "An A"


def test_width_height_attributes() -> None:
    doc = ext("<img src='/a.jpg' width='640' height='480px'><img src='/b.jpg' width='50%'>")
    assert [(n.width, n.height) for n in doc.image_nodes] == [(640, 480), (None, None)]


def test_srcset_largest_width_candidate() -> None:
    doc = ext(
        "<img src='/s.jpg' srcset='/m.jpg 600w, /l.jpg 1200w,/xs.jpg 100w'>"
        "<img src='/s2.jpg' srcset='/a1.jpg 1x, /a2.jpg 2x'>"
    )
    assert srcs(doc) == ["https://example.org/l.jpg", "https://example.org/a2.jpg"]


def test_srcset_candidate_urls_may_contain_commas() -> None:
    got = largest_candidate(
        "https://c.io/w_300,h_200/a.jpg 300w, https://c.io/w_900,h_600/a.jpg 900w"
    )
    assert got == "https://c.io/w_900,h_600/a.jpg"


@pytest.mark.parametrize(
    "attr", ["data-src", "data-original", "data-lazy-src", "data-url", "data-hi-res-src"]
)
def test_lazy_load_attributes_beat_a_placeholder_src(attr: str) -> None:
    doc = ext(f"<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' {attr}='/real.jpg'>")
    assert srcs(doc) == ["https://example.org/real.jpg"]
    assert doc.drops == []


def test_lazy_srcset_attributes() -> None:
    doc = ext("<img class='lazyload' data-srcset='/x-300.jpg 300w, /x-900.jpg 900w'>")
    assert srcs(doc) == ["https://example.org/x-900.jpg"]


def test_picture_source_when_img_has_no_url() -> None:
    doc = ext(
        "<picture><source type='image/webp' srcset='/p-400.webp 400w, /p-800.webp 800w'>"
        "<img alt='pic'></picture>"
    )
    assert srcs(doc) == ["https://example.org/p-800.webp"]


def test_noscript_fallback_for_a_lazy_image_is_used_once() -> None:
    lazy_only = ext(
        "<div class='lazy-placeholder'></div><noscript><img src='/lazy.jpg'></noscript>"
    )
    assert srcs(lazy_only) == ["https://example.org/lazy.jpg"]
    duplicate = ext("<img src='/real.jpg'><noscript><img src='/real.jpg'></noscript>")
    assert srcs(duplicate) == ["https://example.org/real.jpg"]
    # the copy is merged into the visible image's candidates: one image, nothing dropped
    assert duplicate.image_nodes[0].candidates == ["https://example.org/real.jpg"]
    assert duplicate.drops == []
    assert duplicate.stats["dom"]["noscript_merged"] == 1


def test_base_href_resolves_relative_urls() -> None:
    doc = ext("<img src='pics/a.jpg'><img src='/root.jpg'>", head="<base href='/static/v2/'>")
    assert srcs(doc) == ["https://example.org/static/v2/pics/a.jpg", "https://example.org/root.jpg"]
    absolute = ext("<img src='a.jpg'>", head="<base href='https://cdn.example.net/x/'>")
    assert srcs(absolute) == ["https://cdn.example.net/x/a.jpg"]


def test_tracking_pixels_are_dropped() -> None:
    doc = ext(
        "<img src='/story.jpg'>"
        "<img src='/t.gif' width='1' height='1'>"
        "<img src='https://sb.scorecardresearch.com/p?c1=2'>"
        "<img src='/img/1x1.gif'>"
    )
    assert srcs(doc) == ["https://example.org/story.jpg"]
    assert doc.drops == ["image.tracking_pixel"] * 3


def test_tiny_data_uris_are_dropped_large_ones_kept() -> None:
    big = "data:image/png;base64," + "A" * 4000
    doc = ext(f"<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw='><img src='{big}'>")
    assert srcs(doc) == [big]
    assert doc.drops == ["image.tiny_data_uri"]


def test_url_block_rules() -> None:
    doc = ext("<img src='/assets/site-logo.png'><img src='/photo.jpg'><img src='/x/avatar/1.jpg'>")
    assert srcs(doc) == ["https://example.org/photo.jpg"]
    assert doc.drops == ["image.url_rule", "image.url_rule"]
    custom = ext("<img src='/assets/site-logo.png'>", url_block_rules=["/banned/"])
    assert srcs(custom) == ["https://example.org/assets/site-logo.png"]


def test_missing_and_non_http_urls() -> None:
    doc = ext("<img alt='none'><img src='javascript:void(0)'><img src='ftp://h/a.jpg'>")
    assert srcs(doc) == []
    assert doc.drops == ["image.no_src", "image.bad_url", "image.bad_url"]


def test_duplicate_images_and_cap_per_document() -> None:
    html = "<img src='/a.jpg'><img src='/a.jpg'><img src='/b.jpg'><img src='/c.jpg'>"
    config = DomConfig(main_content=False)
    doc = extract(f"<html><body>{html}</body></html>", URL, config, max_images=2)
    assert srcs(doc) == ["https://example.org/a.jpg", "https://example.org/b.jpg"]
    assert doc.drops == ["image.duplicate_in_page", "image.too_many"]


# -------------------------------------------------------------------------------- main content


def test_main_content_keeps_the_article_and_drops_the_chrome_around_it() -> None:
    article = "".join(f"<p>{LOREM} Paragraph {i}.</p>" for i in range(6))
    body = (
        "<div class='top'><a href='/'>Home</a> <a href='/w'>World</a></div>"
        f"<div class='story'><h1>Headline</h1><img src='/hero.jpg'>{article}</div>"
        "<div class='more'><div><img src='/promo1.jpg'><a href='/p1'>Other story one</a></div>"
        "<div><img src='/promo2.jpg'><a href='/p2'>Other story two</a></div></div>"
    )
    doc = ext(body, main_content=True)
    assert srcs(doc) == ["https://example.org/hero.jpg"]
    assert texts(doc)[0] == "Headline"
    assert len(texts(doc)) == 7
    assert doc.drops.count("image.outside_main") == 2
    whole = ext(body, main_content=False)
    assert len(srcs(whole)) == 3


def test_main_content_falls_back_to_body_on_non_article_pages() -> None:
    gallery = "".join(f"<div><img src='/g{i}.jpg'><span>Photo {i}</span></div>" for i in range(8))
    doc = ext(gallery, main_content=True)
    assert len(srcs(doc)) == 8


def test_empty_and_whitespace_pages() -> None:
    assert extract("", URL).nodes == []
    assert extract(b"   \n", URL).nodes == []
    assert extract("<html><body>   </body></html>", URL).nodes == []


def test_bytes_input_uses_meta_charset() -> None:
    html = "<html><head><meta charset='iso-8859-1'></head><body><p>café</p></body></html>"
    doc = extract(html.encode("latin-1"), URL, DomConfig(main_content=False))
    assert texts(doc) == ["café"]


def test_to_json_round_trip_of_an_extracted_document() -> None:
    doc = ext("<p>one</p><img src='/a.jpg' alt='x' width='100' height='80'><p>two</p>")
    record = json.loads(json.dumps(doc.to_json()))
    assert Document.from_json(record).texts == doc.texts
    assert record["images"][1]["src"] == "https://example.org/a.jpg"


def test_corpus_pages_extract_main_images(corpus) -> None:
    """Three real readability cases: the main-content image URLs of expected.html are found."""
    from lxml import html as lhtml

    root = corpus / "html" / "readability"
    found = total = 0
    for case in ("001", "medium-1", "lazy-image-1"):
        source = (root / case / "source.html").read_bytes()
        expected = lhtml.fromstring((root / case / "expected.html").read_bytes())
        doc = extract(source, "http://fakehost/test/page.html")
        got = set(srcs(doc))
        want = {img.get("src") for img in expected.iter("img") if img.get("src")}
        total += len(want)
        found += len(want & got)
        assert texts(doc), case
    assert total > 0 and found / total >= 0.8
