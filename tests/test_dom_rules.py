"""One small HTML test per image-candidate, lazy-load and boilerplate rule (issue "Real crawls must
yield real datasets" §1-§3): the failing shape and its harmless twin, with main-content focus on."""

from __future__ import annotations

import itertools

import pytest

from m3w_builder.config import DomConfig
from m3w_builder.document import Document, TextNode
from m3w_builder.dom import extract

URL = "https://news.example.org/2024/05/story.html"
_WORDS = (
    "river valley farmers harvest grain autumn village market bridge stone mill water wheel "
    "season rain festival orchard apples cider barrels cart horses road hills morning light"
).split()


def prose(seed: int, sentences: int = 6) -> str:
    """Deterministic article-like prose (commas and full stops, so Readability scoring sees it)."""
    out = []
    words = itertools.cycle(_WORDS[seed % len(_WORDS) :] + _WORDS[: seed % len(_WORDS)])
    for i in range(sentences):
        chunk = [next(words) for _ in range(9 + (i + seed) % 5)]
        out.append(f"The {chunk[0]} {' '.join(chunk[1:5])}, and the {' '.join(chunk[5:])}.")
    return " ".join(out)


def article(n: int = 5, seed: int = 0) -> str:
    return "".join(f"<p>{prose(seed + i)}</p>" for i in range(n))


def page(body: str) -> str:
    nav = "<nav><ul>" + "".join(f"<li><a href='/s{i}'>Section {i}</a></li>" for i in range(8))
    return (
        "<!doctype html><html><head><title>Story</title></head><body>"
        f"{nav}</ul></nav>{body}<footer><p>© Example News, all rights reserved.</p></footer>"
        "</body></html>"
    )


def ext(html: str, **overrides) -> Document:
    return extract(html, URL, DomConfig(**overrides))


def text_of(doc: Document) -> str:
    return " ".join(n.text for n in doc.nodes if isinstance(n, TextNode))


def paragraphs(doc: Document) -> list[str]:
    return [n.text for n in doc.nodes if isinstance(n, TextNode)]


# ------------------------------------------------------------------------ §1 candidate lists


def test_every_srcset_candidate_is_kept_largest_first_with_src_last():
    doc = ext(
        page(
            "<article>" + article(3) + "<img src='//img.example.org/thumb/220px-photo.jpg' "
            "srcset='//img.example.org/thumb/330px-photo.jpg 1.5x, "
            "//img.example.org/thumb/440px-photo.jpg 2x'>" + article(2, 7) + "</article>"
        )
    )
    (image,) = doc.image_nodes
    assert image.candidates == [
        "https://img.example.org/thumb/440px-photo.jpg",
        "https://img.example.org/thumb/330px-photo.jpg",
        "https://img.example.org/thumb/220px-photo.jpg",
    ]
    assert image.src == image.candidates[0]
    assert doc.stats["dom"]["image_from_srcset"] == 1


def test_picture_sources_lazy_attributes_and_src_all_become_candidates():
    doc = ext(
        "<body><picture><source srcset='/p-800.webp 800w, /p-400.webp 400w'>"
        "<img src='/p.jpg' data-src='/p-lazy.jpg' alt='a pier'></picture></body>",
        main_content=False,
    )
    (image,) = doc.image_nodes
    base = "https://news.example.org"
    assert image.candidates == [
        f"{base}/p-800.webp",
        f"{base}/p-400.webp",
        f"{base}/p-lazy.jpg",
        f"{base}/p.jpg",
    ]


# ---------------------------------------------------------------- §2 lazy-load placeholders


@pytest.mark.parametrize(
    "placeholder", ["/img/1x1-white.jpg", "/static/pix.gif", "/s/grey.gif", "/a/loading.svg"]
)
def test_a_lazy_attribute_beats_a_placeholder_src_whatever_its_name(placeholder):
    doc = ext(
        f"<body><p>{prose(1)}</p><img src='{placeholder}' data-src='/photos/harbour.jpg'></body>",
        main_content=False,
    )
    (image,) = doc.image_nodes
    assert image.src == "https://news.example.org/photos/harbour.jpg"
    assert doc.stats["dom"]["image_from_lazy_attr"] == 1
    assert doc.stats["dom"]["image_src_passed_over"] == 1


def test_a_neutrally_named_placeholder_shared_by_every_image_is_passed_over_by_evidence():
    # `/i/a8f3.gif` says nothing about being a placeholder (no word list can know it); what
    # decides is that each tag's lazy attribute names another URL. Three photos share it.
    body = "".join(
        f"<p>{prose(i)}</p><img src='/i/a8f3.gif' data-src='/photos/p{i}.jpg' width='640' "
        "height='427'>"
        for i in range(3)
    )
    doc = ext(page(f"<article>{body}</article>"))
    base = "https://news.example.org"
    assert [n.candidates for n in doc.image_nodes] == [
        [f"{base}/photos/p{i}.jpg", f"{base}/i/a8f3.gif"] for i in range(3)
    ]  # the placeholder stays a last resort: resolution skips it by its bytes
    assert doc.stats["dom"]["image_from_lazy_attr"] == 3
    assert doc.stats["dom"]["image_src_passed_over"] == 3
    assert not doc.drops


def test_without_evidence_the_same_neutral_src_is_the_image():
    # the twins: no lazy attribute, or one repeating `src` (a page saved after its lazy loader
    # ran) — nothing names another URL, so `src` is the picture and decided the choice
    doc = ext(
        page(
            f"<article>{article(3)}<img src='/i/a8f3.gif' width='640' height='427'>"
            "<img src='/i/b9c2.gif' data-src='/i/b9c2.gif'></article>"
        )
    )
    assert [n.candidates for n in doc.image_nodes] == [
        ["https://news.example.org/i/a8f3.gif"],
        ["https://news.example.org/i/b9c2.gif"],
    ]
    assert doc.stats["dom"]["image_from_src"] == 2
    assert "image_src_passed_over" not in doc.stats["dom"]
    assert "image_from_lazy_attr" not in doc.stats["dom"]


def test_a_neutrally_named_placeholder_with_a_noscript_copy_yields_the_copy():
    doc = ext(
        page(
            f"<article>{article(3)}<img src='/i/a8f3.gif' class='js-lazy'>"
            "<noscript><img src='/photos/harbour.jpg'></noscript></article>"
        )
    )
    (image,) = doc.image_nodes
    assert image.candidates == [
        "https://news.example.org/photos/harbour.jpg",
        "https://news.example.org/i/a8f3.gif",
    ]
    assert doc.stats["dom"]["image_from_noscript"] == 1


@pytest.mark.parametrize(
    "placeholder", ["/static/pix.gif", "/img/1x1.trans.gif", "/i/blank_1x1.gif"]
)
def test_a_noscript_copy_beats_the_visible_placeholder_and_is_no_duplicate(placeholder):
    doc = ext(
        f"<body><p>{prose(2)}</p><img src='{placeholder}' class='js-lazy'>"
        "<noscript><img src='/photos/harbour.jpg' alt='The harbour at dawn'></noscript></body>",
        main_content=False,
    )
    (image,) = doc.image_nodes
    assert image.src == "https://news.example.org/photos/harbour.jpg"
    assert image.alt == "The harbour at dawn"  # the copy's alt when the visible tag has none
    assert "image.noscript_duplicate" not in doc.drops
    assert doc.stats["dom"]["image_from_noscript"] == 1


def test_noscript_twin_of_a_real_image_gives_one_image_with_one_url():
    doc = ext(
        "<body><img src='/photos/harbour.jpg'><noscript><img src='/photos/harbour.jpg'>"
        "</noscript></body>",
        main_content=False,
    )
    (image,) = doc.image_nodes
    assert image.candidates == ["https://news.example.org/photos/harbour.jpg"]
    assert doc.stats["dom"]["image_from_src"] == 1


def test_a_real_src_with_a_different_noscript_copy_keeps_both_as_candidates():
    doc = ext(
        "<body><img src='/photos/harbour-small.jpg'><noscript><img src='/photos/harbour.jpg'>"
        "</noscript></body>",
        main_content=False,
    )
    # a noscript copy naming another URL is evidence that src is what shows before the script
    assert doc.image_nodes[0].candidates == [
        "https://news.example.org/photos/harbour.jpg",
        "https://news.example.org/photos/harbour-small.jpg",
    ]


def test_a_tag_declaring_a_1x1_box_is_a_pixel_but_a_1x1_placeholder_file_is_not():
    doc = ext(
        "<body><img src='/t.gif' width='1' height='1'>"
        "<img src='/x.gif' width='1' height='1' srcset='/thumb-1200.jpg 1200w'>"
        # the placeholder file is 1×1, the box is not: the lazy URL is the picture
        "<img src='/img/1x1.gif' data-src='/photo.jpg' width='640' height='480'></body>",
        main_content=False,
    )
    assert [n.src for n in doc.image_nodes] == ["https://news.example.org/photo.jpg"]
    assert doc.drops == ["image.tracking_pixel"] * 2


# --------------------------------------------------------- §3 boilerplate never deletes the article


@pytest.mark.parametrize(
    "wrapper", ["div class='entry theme share'", "div class='banners-content-note-1234'",
                "div id='social-wrapper' class='post'", "div class='sidebar-article-body'"]
)  # fmt: skip
def test_an_article_wrapped_in_a_boilerplate_looking_container_survives(wrapper):
    # The article holds well under half of the page's text (a long "more stories" block of
    # excerpts beside it), so no size rule can tell its wrapper from real chrome by size alone.
    more = "".join(
        f"<div class='teaser'><h3><a href='/m{i}'>Another story from the valley about the "
        f"harvest, number {i}</a></h3><p>{prose(50 + i, 2)}</p></div>"
        for i in range(40)
    )
    body = (
        f"<{wrapper}><h1>Harvest</h1>{article(5)}<img src='/photos/mill.jpg'>"
        f"{article(2, 11)}</div><section class='more-stories'>{more}</section>"
    )
    doc = ext(page(body))
    got = text_of(doc)
    assert prose(0) in got and prose(12) in got
    assert [n.src for n in doc.image_nodes] == ["https://news.example.org/photos/mill.jpg"]


def test_a_real_share_bar_inside_the_article_is_still_removed():
    body = (
        f"<article><div class='share-bar'><a href='/fb'>Share on Facebook</a> "
        f"<span>Share this story with friends and family</span></div>{article(6)}</article>"
    )
    got = text_of(ext(page(body)))
    assert prose(0) in got and "Share this story" not in got


def _comments(n: int, *, marked: bool) -> str:
    wrap = "<section id='comments'><ol class='comment-list'>" if marked else "<section><ol>"
    items = "".join(
        f"<li {'class=comment' if marked else ''}><cite class='author'>reader{i}</cite> "
        f"<time datetime='2024-05-0{i % 9 + 1}'>May {i % 9 + 1}</time>"
        f"<p>{prose(40 + i, 3)}</p></li>"
        for i in range(n)
    )
    return f"{wrap}{items}</ol></section>"


@pytest.mark.parametrize("marked", [True, False])
def test_a_long_comment_thread_does_not_win_over_a_shorter_article(marked):
    body = f"<div class='main'><h1>Harvest</h1>{article(4)}</div>{_comments(30, marked=marked)}"
    doc = ext(page(body))
    got = text_of(doc)
    assert prose(0) in got and prose(3) in got
    assert prose(40, 3) not in got and prose(60, 3) not in got


def test_a_page_that_is_only_a_discussion_keeps_it():
    # the twin: no article beside the thread, so the thread is the content
    doc = ext(page(_comments(8, marked=False)))
    assert prose(40, 3) in text_of(doc)


# Embedded posts as their networks' embed codes write them (what a crawler archives: the widget
# script turns the blockquote into an iframe only in a browser).
_POST = "The mill wheel turned again this morning after forty years of silence"


def tweet(text: str = _POST, n: int = 1) -> str:
    # Twitter's embed code: the post's own links (media, hashtags) are part of its text
    return (
        f'<blockquote class="twitter-tweet"><p lang="en" dir="ltr">{text} '
        f'<a href="https://twitter.com/hashtag/mill">#mill</a> <a href="https://t.co/x{n}">'
        f"pic.twitter.com/x{n}</a></p>&mdash; Village Council (@council) "
        f'<a href="https://twitter.com/council/status/{n}">January 1, 2024</a></blockquote>'
    )


def instagram(caption: str = _POST, *, nested: bool = False) -> str:
    """Instagram's captioned embed: a card link (a placeholder of divs and a "View this post"
    label) and the caption, itself a link to the post; in older codes the caption paragraph sits
    inside the card link (`nested`)."""
    post = "https://www.instagram.com/p/XYZ/?utm_source=ig_embed"
    card = (
        f'<a href="{post}" style="background:#FFFFFF; line-height:0;" target="_blank">'
        '<div style="display: flex; flex-direction: row;"><div style="height: 40px; width: 40px;">'
        '</div></div><div style="padding: 19% 0;"></div><div style="padding-top: 8px;">'
        '<div style="color:#3897f0; font-weight:550;">View this post on Instagram</div></div>'
    )
    caption_p = (
        f'<p style="margin:8px 0 0 0;"><a href="{post}" style="color:#000;" target="_blank">'
        f"{caption} #mill #village</a></p>"
    )
    shared = (
        '<p style="color:#c9c8cd;">A post shared by <a href="https://www.instagram.com/council/"'
        ' target="_blank">Village Council</a> (@council) on <time style="font-size:14px;" '
        'datetime="2024-05-05T16:01:37+00:00">May 5, 2024 at 9:01am PDT</time></p>'
    )
    body = f"{card}{caption_p}{shared}</a>" if nested else f"{card}</a>{caption_p}{shared}"
    return (
        f'<blockquote class="instagram-media" data-instgrm-captioned data-instgrm-permalink='
        f'"{post}" data-instgrm-version="12" style="background:#FFF; border:0;">'
        f'<div style="padding:16px;">{body}</div></blockquote>'
        '<script async src="//www.instagram.com/embed.js"></script>'
    )


def in_article(embed: str) -> str:
    return page(f"<article>{article(3)}{embed}{article(3, 9)}</article>")


@pytest.mark.parametrize("kind", ["twitter-tweet", "instagram-media"])
def test_embedded_posts_are_kept_as_text(kind):
    body = (
        f"<article>{article(3)}<blockquote class='{kind}'><p>{_POST}.</p>— Village Council "
        f"(@council) <a href='https://social.example/p/1'>May 5, 2024</a></blockquote>"
        f"{article(3, 9)}</article>"
    )
    assert _POST in text_of(ext(page(body)))


def test_a_link_dense_tweet_in_the_article_keeps_its_text_and_attribution():
    # "Back at work! #mill pic.twitter.com/x1" is mostly link text: the post's own hashtags and
    # media link, not a menu
    doc = ext(in_article(tweet("Back at work!")))
    paras = paragraphs(doc)
    assert "Back at work! #mill pic.twitter.com/x1" in paras
    assert "— Village Council (@council) January 1, 2024" in paras
    assert "text.link_dense" not in doc.drops
    assert doc.stats["dom"]["embedded_posts"] == 1


def test_the_same_link_dense_line_outside_an_embed_is_still_dropped():
    # the twin: a plain blockquote (or paragraph) that is mostly links is a link list
    line = (
        '<blockquote><p>Back at work! <a href="/tag/mill">#mill</a> <a href="/photos/1">'
        "pic.example.org/photos/1</a></p></blockquote>"
    )
    doc = ext(in_article(line))
    assert "Back at work!" not in text_of(doc)
    assert "text.link_dense" in doc.drops
    assert "embedded_posts" not in doc.stats["dom"]


@pytest.mark.parametrize("nested", [False, True])
def test_instagram_captioned_embed_markup_keeps_its_caption(nested):
    doc = ext(in_article(instagram(nested=nested)))
    paras = paragraphs(doc)
    assert f"{_POST} #mill #village" in paras
    assert "A post shared by Village Council (@council) on May 5, 2024 at 9:01am PDT" in paras
    # the placeholder card's label is the widget's, not the post's
    assert "View this post on Instagram" not in text_of(doc)
    assert doc.drops.count("text.link_dense") == 1


@pytest.mark.parametrize(
    "embed",
    [
        # TikTok: the caption between the author's, the hashtags' and the sound's links
        '<blockquote class="tiktok-embed" cite="https://www.tiktok.com/@council/video/1" '
        'data-video-id="1"><section><a target="_blank" title="@council" '
        'href="https://www.tiktok.com/@council">@council</a> {post} <a title="mill" '
        'href="https://www.tiktok.com/tag/mill">#mill</a> <a title="♬ original sound" '
        'href="https://www.tiktok.com/music/1">♬ original sound - council</a></section></blockquote>',
        # Bluesky
        '<blockquote class="bluesky-embed" data-bluesky-uri="at://did:plc:x/app.bsky.feed.post/1">'
        '<p lang="en">{post}<br><br><a href="https://bsky.app/profile/x/post/1">[image or embed]'
        '</a></p>&mdash; Village Council (<a href="https://bsky.app/profile/x">@council.bsky.social'
        '</a>) <a href="https://bsky.app/profile/x/post/1">May 5, 2024 at 9:01 AM</a></blockquote>',
        # Reddit: the post's title is its link
        '<blockquote class="reddit-embed-bq" data-embed-height="240"><a href="https://www.reddit.com'
        '/r/mills/comments/1/">{post}</a><br> by <a href="https://www.reddit.com/user/council/">'
        'u/council</a> in <a href="https://www.reddit.com/r/mills/">r/mills</a></blockquote>',
    ],
    ids=["tiktok", "bluesky", "reddit"],
)
def test_other_networks_embedded_posts_keep_their_text(embed):
    assert _POST in text_of(ext(in_article(embed.format(post=_POST))))


@pytest.mark.parametrize(
    "wrapper", ["div class='social-embed'", "figure class='embed embed-social'",
                "div id='social-post-1' class='embed-container'"]
)  # fmt: skip
@pytest.mark.parametrize("embed", ["tweet", "instagram"])
def test_an_embed_in_a_chrome_named_wrapper_in_the_article_is_kept(wrapper, embed):
    post = tweet("Back at work!") if embed == "tweet" else instagram()
    tools = "<div class='share-tools'><a href='/s'>Share</a> <span>Copy the link</span></div>"
    doc = ext(in_article(f"<{wrapper}>{post}{tools}</{wrapper.split()[0]}>"))
    got = text_of(doc)
    assert prose(0) in got and prose(9) in got
    assert ("Back at work!" if embed == "tweet" else _POST) in got
    assert "Copy the link" not in got  # chrome beside the post still goes
    assert doc.stats["dom"]["spared_embed_wrapper"] == 1


def test_a_chrome_named_feed_of_posts_or_a_widget_around_one_is_still_removed():
    # the twins: a wrapper holding several posts (a feed), or more of its own text than the post
    # (a follow-us widget), is chrome even inside the article
    feed = "<div class='social-feed'>" + "".join(tweet(f"Feed post {i}", i) for i in range(3))
    widget = (
        "<div class='social-widget'><h3>Follow the Village Council everywhere</h3><ul>"
        + "".join(f"<li>Follow us on network number {i} for daily updates</li>" for i in range(4))
        + f"</ul>{tweet('Widget post', 9)}</div>"
    )
    doc = ext(page(f"<article>{article(3)}{feed}</div>{article(2, 5)}{widget}{article(2, 9)}"
                   "</article>"))  # fmt: skip
    got = text_of(doc)
    assert prose(0) in got and prose(9) in got
    assert "Feed post" not in got and "Widget post" not in got and "Follow us" not in got
    assert "spared_embed_wrapper" not in doc.stats["dom"]


def test_a_wrapped_embed_outside_the_article_is_not_kept():
    # the twin of the kept wrapper: the same `div.social-embed` beside the article, not in it
    body = (
        f"<article>{article(5)}</article><div class='social-embed'>"
        f"{tweet('Our reporters are live from the harvest festival')}</div>"
    )
    got = text_of(ext(page(body)))
    assert prose(0) in got and "live from the harvest festival" not in got


def test_tweet_markup_outside_the_article_is_not_kept_by_its_class():
    # The twin: what keeps an embedded post is being inside the article, not its class. The same
    # `blockquote.twitter-tweet` markup in a sidebar feed, and a "tweet this" share widget, go.
    feed_post = "Our reporters are live from the harvest festival in the valley today"
    share = "Tweet this story to your followers"
    body = (
        f"<article>{article(5)}<div class='twitter-share'><blockquote>{share}</blockquote>"
        "<a class='twitter-share-button' href='https://social.example/intent'>Tweet</a></div>"
        f"{article(2, 9)}</article><div class='sidebar'><h3>From our feed</h3>"
        f"<blockquote class='twitter-tweet'><p>{feed_post}.</p>— Example News (@news) "
        "<a href='https://social.example/p/2'>May 5, 2024</a></blockquote></div>"
    )
    got = text_of(ext(page(body)))
    assert prose(0) in got and prose(9) in got
    assert feed_post not in got and share not in got


def test_a_caption_shown_twice_is_emitted_once_and_two_captions_stay():
    caption = "The old mill at dawn, photographed from the bridge."
    body = (
        f"<article>{article(3)}<figure><img src='/photos/mill.jpg' alt='{caption}'>"
        f"<figcaption>{caption}</figcaption></figure>{article(2, 5)}"
        f"<div class='gallery'><img src='/photos/mill.jpg'><div class='gallery-caption'>{caption}"
        f"</div></div><figure><img src='/photos/wheel.jpg'><figcaption>The water wheel, "
        "restored by volunteers.</figcaption></figure></article>"
    )
    doc = ext(page(body))
    paras = paragraphs(doc)
    assert paras.count(caption) == 1
    assert "The water wheel, restored by volunteers." in paras
    assert "text.duplicate_caption" in doc.drops


def test_a_repeated_non_caption_paragraph_is_left_to_the_text_filters():
    body = f"<article>{article(3)}<p>Read more below.</p>{article(2, 5)}<p>Read more below.</p></article>"
    assert paragraphs(ext(page(body))).count("Read more below.") == 2


def test_chrome_inside_the_article_container_is_still_removed():
    body = (
        "<article><div class='byline'>By A. Reporter | <a href='/share'>Share</a></div>"
        f"{article(6)}"
        "<div class='related-articles'><h3>Related</h3><ul>"
        + "".join(f"<li><a href='/r{i}'>Another story about mills {i}</a></li>" for i in range(5))
        + "</ul></div><div class='paywall-prompt'><p>Subscribe to keep reading our journalism"
        " for one dollar a week.</p></div><footer><p>Filed under mills</p></footer></article>"
    )
    got = text_of(ext(page(body)))
    assert prose(0) in got
    for junk in ("Another story about mills", "Subscribe to keep reading", "Filed under mills"):
        assert junk not in got


def test_a_caption_gallery_named_like_chrome_does_not_win_by_size():
    # 30 slides of captions in `ul.legends` (a Readability "unlikely" word) hold most of the
    # page's text; the shorter article next to it is the content
    slides = "".join(
        f"<li><h3>{i}/30 Slide</h3><p>Slide {i} caption. {prose(60 + i, 3)}</p></li>"
        for i in range(30)
    )
    body = f"<div class='article-wrapper'>{article(4)}</div><ul class='legends'>{slides}</ul>"
    got = text_of(ext(page(body)))
    assert prose(0) in got and prose(3) in got
    assert "caption." not in got


def test_share_icons_inside_a_layout_table_are_dropped_and_its_text_kept():
    body = (
        f"<article>{article(4)}<table><tr><td><div class='gig-share-button'>"
        "<img src='/img/facebook.png'> Share on Facebook</div></td>"
        f"<td><p>{prose(9, 2)}</p><img src='/photos/mill.jpg'></td></tr></table></article>"
    )
    doc = ext(page(body))
    assert [n.src for n in doc.image_nodes] == ["https://news.example.org/photos/mill.jpg"]
    assert "image.boilerplate" in doc.drops
    assert prose(9, 2) in text_of(doc)
