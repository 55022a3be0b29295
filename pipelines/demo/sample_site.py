"""A generated web site for end-to-end builds: real HTML pages, Pillow-drawn images, a 127.0.0.1 server.

Why generate instead of shipping pages: the dev corpus may not be redistributed (its MANIFEST), while the
demo and the tests need pages that pass the m3w text filters (Gopher rules: ≥ 50 words, stop words, low
n-gram repetition), images that pass the M3W image rules (≥ 64 px, aspect ≤ 3, not single-coloured), and
the usual web junk the builder must drop, each with a known reason:

- a 1×1 tracking pixel on some pages (`image.too_small` or the DOM's spacer rules),
- an `<img>` whose file does not exist (the server answers 404),
- a site mark repeated on every page (dropped by the job-wide image-URL frequency cut-off, > 10 pages),
- a footer paragraph repeated on every page (dropped by the per-domain paragraph-repeat rule, ≥ 3),
- a page whose content copies another page (identical-document dedup),
- a page whose only images are bad (dropped as `doc.no_images`).

`make_site(dir, grounded=True, base_url=URL)` is the grounded world of `m3w demo` (pipelines/demo/grounded.py):
every good image is a scene of counted, coloured shapes, and its caption ("Figure 2 shows two red
triangles on a mint ground.") stands on the side of the picture that the build's per-document attachment draw will
attach it to (the text after it for `following`, before it for `preceding`), computed from the page's
URL and the build seed exactly as `m3w_builder.attach` draws it. The rest of the page is ordinary prose
placed where no image is attached (before the first picture, or after the last).

`make_site(dir)` writes the pages and images; `serve_site(dir)` serves them from a threaded
`http.server` on 127.0.0.1 and yields the base URL; `write_url_list` writes the URL list `m3w build` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import io
import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

# A small grammar over a few hundred words: combinatorially varied sentences, so a page has few repeated
# n-grams (Gopher's duplicate n-gram rules) yet plenty of English stop words (the stop-word rules).
_SUBJECTS = (
    "the river",
    "our small village",
    "a patient gardener",
    "the old lighthouse",
    "every morning train",
    "the museum curator",
    "a careful engineer",
    "the northern forest",
    "her younger brother",
    "the local baker",
    "a quiet library",
    "the mountain road",
    "this season's harvest",
    "the city council",
    "a travelling musician",
    "the school choir",
    "his grandmother",
    "the fishing fleet",
    "a new bridge",
    "the weather station",
    "the island ferry",
    "an experienced pilot",
    "the botanical garden",
)
_VERBS = (
    "carried",
    "welcomed",
    "repaired",
    "described",
    "painted",
    "measured",
    "followed",
    "collected",
    "protected",
    "explored",
    "remembered",
    "prepared",
    "visited",
    "photographed",
    "recorded",
    "celebrated",
    "improved",
    "discovered",
    "crossed",
    "organised",
    "studied",
    "planted",
    "watched",
)
_OBJECTS = (
    "the autumn leaves",
    "a basket of apples",
    "the broken fence",
    "several wooden boats",
    "the winding path",
    "a collection of letters",
    "the harbour lights",
    "fresh bread for the market",
    "the children's drawings",
    "a map of the valley",
    "the stone walls",
    "an unusual bird",
    "the evening concert",
    "rows of tomatoes",
    "the festival banners",
    "a forgotten recipe",
    "the copper roof",
    "the spring flowers",
    "a dozen lanterns",
    "the annual report",
)
_ADVERBIALS = (
    "before the first snow",
    "after a long week",
    "with remarkable patience",
    "during the festival",
    "under a clear sky",
    "in the early evening",
    "without any help",
    "near the old mill",
    "for the whole community",
    "despite the heavy rain",
    "along the eastern shore",
    "at the end of summer",
    "with great care",
    "while visitors watched",
    "over several months",
    "against the cold wind",
    "beside the quiet canal",
    "on a windy afternoon",
    "before sunrise",
    "after the storm",
    "with borrowed tools",
    "near the village square",
    "through the long winter",
)
_CONNECTORS = (
    "Later that day,",
    "Meanwhile,",
    "In the end,",
    "As a result,",
    "Some years ago,",
    "Surprisingly,",
    "Because of this,",
    "At first,",
    "Not long after,",
    "According to neighbours,",
    "Even so,",
)
_TOPICS = (
    "harbour",
    "orchard",
    "festival",
    "railway",
    "workshop",
    "valley",
    "market",
    "garden",
    "lighthouse",
    "bridge",
    "library",
    "choir",
    "ferry",
    "museum",
    "forest",
    "bakery",
)
FOOTER = (
    "This page is part of the community archive maintained by volunteers who collect stories, "
    "photographs and notes about the life of the town and its surroundings for everyone to read."
)
SITE_MARK = (
    "assets/site-mark.png"  # on every page: no block-rule word, so only the frequency cut drops it
)


@dataclass(slots=True)
class SiteInfo:
    """What was generated, for tests and the demo: page paths relative to the site root."""

    root: str
    pages: list[str] = field(default_factory=list)
    good_images: int = 0
    duplicate_pages: list[str] = field(default_factory=list)  # copies of an earlier page's content
    no_image_pages: list[str] = field(default_factory=list)  # only bad images: doc.no_images
    # grounded sites: image path → {"caption", "attributes", "attach", "page"}
    scenes: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


_FACTS = (
    "A triangle has three corners and three sides.",
    "A square has four corners and four equal sides.",
    "A star has five points around its middle.",
    "A circle is round and has no corners at all.",
    "Wheels and coins are circles, and dice are made of squares.",
    "Sails and roofs look like triangles, and the night sky is full of stars.",
    "One and one make two, and two and two make four.",
    "Three is one more than two and one less than four.",
    "A pair means two, and a trio means three.",
    "She counted one, two, three, four on her fingers.",
    "Ripe tomatoes are red and grass is green.",
    "Bananas are yellow and carrots are orange.",
    "The deep sea is blue and coal is black.",
    "Plums are purple and many roses are pink.",
    "Tree bark is brown and the shallow lagoon is cyan.",
    "Sand covers the beach and mint grows in the herb bed.",
    "Lilac blooms in spring and cream is poured into coffee.",
    "A cloudy sky is grey and a clear sky is pale blue.",
)


class Words:
    """Per-page decks of phrases, dealt without replacement (reshuffled when empty): a page then
    repeats no phrase until it has used them all, which keeps Gopher's duplicate n-gram fractions
    low, as in real prose."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.decks: dict[int, list[str]] = {}

    def deal(self, phrases: tuple[str, ...]) -> str:
        deck = self.decks.get(id(phrases))
        if not deck:
            deck = list(phrases)
            self.rng.shuffle(deck)
            self.decks[id(phrases)] = deck
        return deck.pop()

    def sentence(self) -> str:
        parts = [self.deal(_SUBJECTS), self.rng.choice(_VERBS), self.deal(_OBJECTS)]
        parts.append(self.deal(_ADVERBIALS))
        if self.rng.random() < 0.4:
            return self.deal(_CONNECTORS) + " " + " ".join(parts) + "."
        text = " ".join(parts)
        return text[0].upper() + text[1:] + "."

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(4, 6)))


def draw_image(rng: random.Random, width: int, height: int, fmt: str) -> bytes:
    """Shapes and noise in random colours: far from single-coloured, decodes everywhere."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 10)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(8, width), y0 + rng.randint(8, height)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _page_html(title: str, body: list[str], heading: bool = True) -> str:
    """`heading` False: no <h1> (a grounded page whose first chunk is a caption keeps its title in
    <head>, where it is no text the first picture is attached to)."""
    h1 = f"<h1>{html.escape(title)}</h1>\n" if heading else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n"
        '<header><nav><a href="/">Home</a></nav></header>\n'
        f"<article>\n{h1}" + "\n".join(body) + "\n"
        # inside the article, so that only the job-wide rules (image-URL frequency, paragraphs
        # repeated within a domain) can remove them
        f'<p><img src="/{SITE_MARK}" alt="" width="120" height="60"></p>\n'
        f"<p>{html.escape(FOOTER)}</p>\n</article>\n"
        "<footer><p>Contact us</p></footer>\n</body></html>\n"
    )


def make_site(
    root: str | Path,
    *,
    pages: int = 24,
    seed: int = 0,
    grounded: bool = False,
    base_url: str | None = None,
    attach_seed: int = 0,
    p_next: float = 0.5,
) -> SiteInfo:
    """Write `pages` HTML pages under root/pages/ and their images under root/img/; deterministic in
    (pages, seed). Needs pages > 10 for the site mark to cross the image-URL frequency cut-off.

    `grounded` pictures are scenes whose captions sit on the attached side; it needs the `base_url`
    the pages will be built from (their document keys) and the build's `attach_seed` and `p_next`
    (the per-document attachment mode)."""
    if grounded and base_url is None:
        raise ValueError("a grounded site needs the base_url its pages will be built from")
    rng = random.Random(seed)
    root = Path(root)
    (root / "pages").mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "assets").mkdir(parents=True, exist_ok=True)
    (root / SITE_MARK).write_bytes(draw_image(rng, 120, 60, "PNG"))
    (root / "img" / "pixel.gif").write_bytes(_pixel_gif())
    info = SiteInfo(root=str(root))
    bodies: list[list[str]] = []
    titles: list[str] = []
    draws: list[str | None] = []
    for i in range(pages):
        rel = f"pages/{i:03d}.html"
        draw = _page_draw(base_url, rel, attach_seed, p_next) if grounded else None
        topic = rng.choice(_TOPICS)
        title = f"Notes on the {topic}, part {i}"
        source = _duplicate_source(i, pages, draw, draws)
        if source is not None:  # same content as an earlier page under another URL
            body, title = bodies[source], titles[source]
            info.duplicate_pages.append(rel)
        elif grounded:
            body = _grounded_body(rng, root, i, info, draw, only_bad=(i == 5))
        else:
            body = _page_body(rng, root, i, topic, info, only_bad=(i == 5))
        if source is None and i == 5:
            info.no_image_pages.append(rel)
        bodies.append(body)
        titles.append(title)
        draws.append(draw)
        heading = draw != "preceding"  # an h1 before the first caption would be attached text
        (root / rel).write_text(_page_html(title, body, heading), encoding="utf-8")
        info.pages.append(rel)
    (root / "site.json").write_text(json.dumps(info.to_json(), indent=1))
    return info


def _page_draw(base_url: str | None, rel: str, attach_seed: int, p_next: float) -> str:
    from m3w_builder.attach import page_draw
    from m3w_builder.document import document_key

    return page_draw(document_key(f"{base_url}/{rel}"), seed=attach_seed, p_next=p_next)


def _duplicate_source(i: int, pages: int, draw: str | None, draws: list[str | None]) -> int | None:
    """Page 3 copies page 2 (identical-document dedup). On a grounded site the copy copies the latest
    earlier page with the same attachment draw, so its captions are right whichever copy survives."""
    if i != 3 or pages <= 3:
        return None
    if draw is None:
        return 2
    same = [j for j in range(i) if draws[j] == draw and j != 5]
    return same[-1] if same else None


def _page_body(
    rng: random.Random, root: Path, i: int, topic: str, info: SiteInfo, only_bad: bool
) -> list[str]:
    words = Words(rng)
    body = [f"<p>{html.escape(words.paragraph())}</p>"]
    n_images = 0 if only_bad else rng.randint(1, 3)
    for j in range(n_images):
        fmt, ext = ("JPEG", "jpg") if rng.random() < 0.6 else ("PNG", "png")
        width = rng.randint(96, 320)
        height = rng.randint(max(72, width // 2), min(320, width * 2))  # aspect ≤ 2 (OBELICS too)
        name = f"img/p{i:03d}-{j}.{ext}"
        (root / name).write_bytes(draw_image(rng, width, height, fmt))
        info.good_images += 1
        body.append(
            f'<figure><img src="/{name}" alt="photo {j} of page {i}">'
            f"<figcaption>Figure {j + 1} of part {i}: the {topic} seen from nearby</figcaption>"
            "</figure>"
        )
        body.append(f"<p>{html.escape(words.paragraph())}</p>")
    if only_bad or i % 4 == 1:
        body.append('<img src="/img/pixel.gif" width="1" height="1" alt="">')
    if only_bad or i % 5 == 2:
        body.append(f'<img src="/img/missing-{i}.jpg" alt="gone">')  # the server answers 404
    body.append(f"<p>{html.escape(words.paragraph())}</p>")
    return body


def _grounded_body(
    rng: random.Random, root: Path, i: int, info: SiteInfo, draw: str | None, only_bad: bool
) -> list[str]:
    """Prose where no picture is attached, each picture next to its caption on the attached side,
    and the junk images (a tracking pixel, a dead link) where they were."""
    from pipelines.demo.grounded import caption, draw_scene, random_scene

    words = Words(rng)
    # one paragraph of prose (Gopher's 50-word minimum with the captions) and up to 5 pictures: a
    # training window of the demo then holds a whole page, so every image slot gets trained
    sentences = [words.sentence() for _ in range(rng.randint(3, 5))]
    # and two facts about the words the captions use: a frozen LM that had only seen the captions
    # would meet "triangles" and "circles" in the very same places and give them near-equal
    # embeddings; a real LM knows them apart from its text
    sentences += rng.sample(_FACTS, 2)
    rng.shuffle(sentences)
    prose = [f"<p>{html.escape(' '.join(sentences))}</p>"]
    figures: list[str] = []
    for j in range(0 if only_bad else rng.randint(2, 5)):
        scene = random_scene(rng)
        name = f"img/p{i:03d}-{j}.jpg"
        (root / name).write_bytes(draw_scene(scene, rng))
        info.good_images += 1
        text = caption(scene, j + 1)
        info.scenes[f"/{name}"] = {
            "caption": text,
            "attributes": scene.attributes,
            "attach": draw,
            "page": f"pages/{i:03d}.html",
        }
        picture = f'<p><img src="/{name}" alt=""></p>'
        said = f"<p>{html.escape(text)}</p>"
        figures += [picture, said] if draw == "following" else [said, picture]
    junk = []
    if only_bad or i % 4 == 1:
        junk.append('<img src="/img/pixel.gif" width="1" height="1" alt="">')
    if only_bad or i % 5 == 2:
        junk.append(f'<img src="/img/missing-{i}.jpg" alt="gone">')  # the server answers 404
    if draw == "following":
        return prose + junk + figures
    return figures + junk + prose


def _pixel_gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 255, 255)).save(out, format="GIF")
    return out.getvalue()


class _QuietHandler(SimpleHTTPRequestHandler):
    delay_s = 0.0

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("sample_site: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.delay_s:
            time.sleep(self.delay_s)
        super().do_GET()


@contextlib.contextmanager
def serve_site(
    root: str | Path, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0
) -> Iterator[str]:
    """Serve `root` over HTTP from a thread of this process; yields the base URL (no trailing slash).

    A threaded server, because the builder fetches many images concurrently per host. `delay_s`
    slows every response (a slow site: tests that must catch a task while it runs).
    """
    handler_class = type("_Handler", (_QuietHandler,), {"delay_s": delay_s})
    handler = functools.partial(handler_class, directory=str(root))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sample-site", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_url_list(root: str | Path, base_url: str, dest: str | Path) -> Path:
    """Write one page URL per line (the URL-list input of `m3w build`)."""
    info = json.loads((Path(root) / "site.json").read_text())
    dest = Path(dest)
    dest.write_text("".join(f"{base_url}/{rel}\n" for rel in info["pages"]))
    return dest


SAMPLE_HOST = "http://sample.m3w.test"  # RFC 2606 .test: never a real host
_IMG_SRC = re.compile(r'<img src="([^"]+)"')
_WARC_DATE = "2024-01-01T00:00:00Z"


def write_warcs(
    root: str | Path, dest: str | Path, *, base_url: str = SAMPLE_HOST, files: int = 1
) -> list[Path]:
    """Write the site as a crawl: `files` gzipped WARC/1.0 files, pages dealt round-robin, each page
    followed by the responses for the images it uses (as Heritrix captures page requisites), the
    404s as 404 responses. A build reads pages *and* images from them, with no network.

    Record dates and ids are fixed, so the files (and the shards built from them) are reproducible."""
    from warcio.warcwriter import WARCWriter

    root, dest = Path(root), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    info = json.loads((root / "site.json").read_text())
    paths = [dest / f"sample-{i:05d}.warc.gz" for i in range(files)]
    streams = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    writers = [WARCWriter(f, gzip=True) for f in streams]
    captured: list[set[str]] = [set() for _ in range(files)]
    try:
        for n, rel in enumerate(info["pages"]):
            i = n % files
            body = (root / rel).read_bytes()
            _warc_response(writers[i], f"{base_url}/{rel}", 200, "text/html; charset=utf-8", body)
            for src in sorted(set(_IMG_SRC.findall(body.decode()))):
                if src in captured[i]:
                    continue
                captured[i].add(src)
                path = root / src.lstrip("/")
                if path.is_file():
                    ctype = (
                        "image/png"
                        if src.endswith(".png")
                        else "image/gif"
                        if src.endswith(".gif")
                        else "image/jpeg"
                    )
                    _warc_response(writers[i], f"{base_url}{src}", 200, ctype, path.read_bytes())
                else:
                    _warc_response(writers[i], f"{base_url}{src}", 404, "text/html", b"gone")
    finally:
        for f in streams:
            f.close()
    return paths


def _warc_response(writer, url: str, status: int, ctype: str, body: bytes) -> None:
    from warcio.statusandheaders import StatusAndHeaders

    reason = {200: "OK", 404: "Not Found"}[status]
    http = StatusAndHeaders(
        f"{status} {reason}",
        [("Content-Type", ctype), ("Content-Length", str(len(body)))],
        protocol="HTTP/1.1",
    )
    record = writer.create_warc_record(
        url,
        "response",
        payload=io.BytesIO(body),
        http_headers=http,
        warc_headers_dict={
            "WARC-Date": _WARC_DATE,
            "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>",
        },
    )
    writer.write_record(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="generate (and optionally serve) the sample site")
    parser.add_argument("root", help="folder to write the site into")
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="serve it until Ctrl-C")
    parser.add_argument("--warcs", type=int, default=0, help="also write the site as N WARC files")
    args = parser.parse_args(argv)
    info = make_site(args.root, pages=args.pages, seed=args.seed)
    print(f"wrote {len(info.pages)} pages, {info.good_images} good images under {args.root}")
    if args.warcs:
        warcs = write_warcs(args.root, Path(args.root) / "warc", files=args.warcs)
        print(f"wrote {len(warcs)} WARC files under {Path(args.root) / 'warc'}")
    if args.serve:
        with serve_site(args.root) as base_url:
            urls = write_url_list(args.root, base_url, Path(args.root) / "urls.txt")
            print(f"serving {base_url}; URL list: {urls}")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
