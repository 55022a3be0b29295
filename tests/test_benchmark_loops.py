"""The benchmarks' own baselines keep working on real crawl shapes (issue "Scale" §5: the library loop
of build_throughput.py crashed on a URL captured twice)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from httpserver import drawn_image

from pipelines.demo.crawl_archive import CrawlArchive

REPO = Path(__file__).resolve().parents[1]
PROSE = (
    "The river valley farmers bring their grain to the old mill by the bridge, and the miller "
    "weighs every sack before the water wheel turns. In autumn the village market fills with "
    "apples, cider and bread, and the children watch the carts come down from the hills. "
    "Later that week a storm broke over the ridge; the road flooded near the chapel, so the "
    "baker sent his loaves along the towpath instead. Nobody remembered a wetter October since "
    "the year the old schoolhouse lost its roof and the teacher held lessons in the barn."
)


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_library_loop_survives_a_url_captured_twice(tmp_path):
    page = f"<html><body><p>{PROSE}</p><img src='/a.jpg'></body></html>".encode()
    with CrawlArchive(tmp_path / "c.warc.gz") as warc:
        warc.response("http://x.example/page.html", page, "text/html")
        warc.response("http://x.example/a.jpg", drawn_image(200, 150), "image/jpeg")
        warc.response("http://x.example/page.html", page, "text/html")  # the recapture
    pages, docs = _module("build_throughput").library_loop(
        [str(tmp_path / "c.warc.gz")], tmp_path / "out"
    )
    assert (pages, docs) == (2, 1)
