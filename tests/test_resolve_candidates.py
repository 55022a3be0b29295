"""Archive-first resolution over every candidate URL of an image (issue "Real crawls must yield real
datasets" §1): the first archived candidate wins, the web is asked only when none is, in order and at
most `fetch.max_candidate_fetches` times; URL spelling variants and revisit records find their
capture; an offline build never connects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import LocalServer, drawn_image

from m3w_builder.config import BuildConfig
from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.images import resolve_images
from m3w_builder.reasons import Counts
from m3w_builder.warc import ArchiveIndex
from pipelines.demo.crawl_archive import CrawlArchive, payload_digest

PHOTO = drawn_image(320, 240, seed=3)
PLACEHOLDER = drawn_image(1, 1, fmt="GIF")  # what lazy loaders show first


def doc_with(*candidates: str) -> Document:
    image = ImageNode(src=candidates[0], candidates=list(candidates))
    return Document("http://pages.example/story.html", [TextNode("words"), image])


def offline() -> BuildConfig:
    config = BuildConfig()
    config.fetch.offline = True
    return config


def web() -> BuildConfig:
    config = BuildConfig()
    config.fetch.allowed_hosts = ["127.0.0.1"]
    config.fetch.backoff_s = 0.01
    return config


def index_of(tmp_path: Path, *records: tuple[str, bytes], name: str = "a.warc.gz") -> ArchiveIndex:
    with CrawlArchive(tmp_path / name) as warc:
        for url, body in records:
            warc.response(url, body, "image/jpeg" if body is PHOTO else "image/gif")
    return ArchiveIndex.build([tmp_path / name], Counts())


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def test_the_archived_1x_candidate_wins_when_the_preferred_2x_is_not_archived(tmp_path):
    thumb = "https://img.example.org/thumb/220px-photo.jpg"
    archive = index_of(tmp_path, (thumb, PHOTO))
    counts = Counts()
    [kept] = resolve_images(
        [doc_with("https://img.example.org/thumb/440px-photo.jpg",
                  "https://img.example.org/thumb/330px-photo.jpg", thumb)],
        offline(), counts, archive,
    )  # fmt: skip
    image = kept.image_nodes[0]
    assert image.src == thumb  # the URL whose bytes were stored
    assert image.src_page == "https://img.example.org/thumb/440px-photo.jpg"
    assert image.candidates == []
    record = kept.to_json()["images"][1]
    assert record["src"] == thumb and record["src_page"].endswith("440px-photo.jpg")
    assert "candidates" not in record
    assert counts["image.from_archive"] == 1 and not counts.get("image.not_archived")


def test_an_archived_placeholder_gives_way_to_the_next_archived_candidate(tmp_path):
    real, placeholder = "http://s.example/photos/harbour.jpg", "http://s.example/static/pix.gif"
    archive = index_of(tmp_path, (placeholder, PLACEHOLDER), (real, PHOTO))
    # a visible placeholder src listed before the noscript copy (no lazy attribute to go by)
    [kept] = resolve_images([doc_with(placeholder, real)], offline(), Counts(), archive)
    assert kept.image_nodes[0].src == real


@pytest.mark.parametrize(
    "archived, asked",
    [
        ("https://img.example.org/a/photo.jpg", "//img.example.org/a/photo.jpg"),
        ("https://img.example.org/a/photo.jpg", "http://img.example.org/a/photo.jpg"),
        ("http://img.example.org/a/photo.jpg/", "http://img.example.org/a/photo.jpg"),
        ("http://img.example.org/a/ph%6Fto-%41.jpg", "http://img.example.org/a/photo-A.jpg"),
        ("http://IMG.example.org:80/a/photo.jpg", "http://img.example.org/a/photo.jpg#zoom"),
    ],
)
def test_url_spelling_variants_find_the_archived_record(tmp_path, archived, asked):
    archive = index_of(tmp_path, (archived, PHOTO))
    url = asked if not asked.startswith("//") else "https:" + asked  # the DOM resolves // first
    assert archive.lookup(url) is not None


def test_a_revisit_resolves_to_the_original_payload_in_another_file(tmp_path):
    original = "http://s.example/photos/harbour.jpg?v=1"
    revisited = "http://s.example/photos/harbour.jpg"
    with CrawlArchive(tmp_path / "earlier.warc.gz") as warc:
        digest = warc.response(original, PHOTO, "image/jpeg")
    with CrawlArchive(tmp_path / "later.warc.gz") as warc:
        warc.revisit(revisited, digest, original, "image/jpeg")
    # the later crawl alone has no payload for it; merged with the earlier one, it resolves
    later = ArchiveIndex.build([tmp_path / "later.warc.gz"], Counts())
    assert later.lookup(revisited) is None
    merged = later.merge(ArchiveIndex.build([tmp_path / "earlier.warc.gz"], Counts()))
    assert merged.read(revisited) == PHOTO
    assert digest == payload_digest(PHOTO)


def test_a_revisit_without_a_known_digest_follows_its_refers_to_uri(tmp_path):
    with CrawlArchive(tmp_path / "a.warc.gz") as warc:
        warc.response("http://s.example/p.jpg", PHOTO, "image/jpeg")
        warc.revisit(
            "http://s.example/p2.jpg", "sha1:UNKNOWN", "http://s.example/p.jpg", "image/jpeg"
        )
    index = ArchiveIndex.build([tmp_path / "a.warc.gz"], Counts())
    assert index.read("http://s.example/p2.jpg") == PHOTO


def test_offline_never_connects_and_counts_not_archived(server):
    server.add("/photo.jpg", PHOTO, "image/jpeg")
    counts = Counts()
    kept = resolve_images([doc_with(server.url("/photo.jpg"))], offline(), counts, None)
    assert kept == [] and server.hits("/photo.jpg") == 0
    assert counts["image.not_archived"] == 1 and not counts.get("fetch.requests")


def test_the_web_is_asked_in_preference_order_moving_on_after_a_404(server):
    server.add("/sizes/small.jpg", PHOTO, "image/jpeg")
    big, medium, small = (server.url(f"/sizes/{n}.jpg") for n in ("big", "medium", "small"))
    counts = Counts()
    [kept] = resolve_images([doc_with(big, medium, small)], web(), counts, None)
    assert kept.image_nodes[0].src == small and kept.image_nodes[0].src_page == big
    assert [server.hits(f"/sizes/{n}.jpg") for n in ("big", "medium", "small")] == [1, 1, 1]
    assert counts["image.from_web"] == 1


def test_at_most_three_network_tries_per_image(server):
    urls = [server.url(f"/gone/{i}.jpg") for i in range(6)]
    counts = Counts()
    assert resolve_images([doc_with(*urls)], web(), counts, None) == []
    assert [server.hits(f"/gone/{i}.jpg") for i in range(6)] == [1, 1, 1, 0, 0, 0]
    assert counts["image.http_404"] == 1


def test_a_host_failure_does_not_walk_the_candidate_list(server):
    # a timeout says nothing about the next size on the same host: stop there
    slow = server.url("/slow?s=2")
    config = web()
    config.fetch.total_timeout_s = config.fetch.read_timeout_s = 0.3
    config.fetch.retries = 0
    counts = Counts()
    assert resolve_images([doc_with(slow, server.url("/image.jpg"))], config, counts, None) == []
    assert server.hits("/image.jpg") == 0 and counts["image.fetch_timeout"] == 1


def test_archived_candidates_are_tried_before_any_request(server, tmp_path):
    archived = "http://s.example/photos/small.jpg"
    archive = index_of(tmp_path, (archived, PHOTO))
    preferred = server.url("/photos/big.jpg")
    server.add("/photos/big.jpg", PHOTO, "image/jpeg")
    [kept] = resolve_images([doc_with(preferred, archived)], web(), Counts(), archive)
    assert kept.image_nodes[0].src == archived and server.hits("/photos/big.jpg") == 0
