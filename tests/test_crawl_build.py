"""A build over WARCs archived the way real crawlers archive pages and their images keeps every
archived image offline (issue "Real crawls must yield real datasets"): the site's pages are written
with each good image in one of the shapes below, only the URL that crawler would have fetched is
archived, and the build runs with `fetch.offline`.

- srcset: `src` plus larger 2x/3x `srcset` candidates; only `src` archived;
- lazy: a placeholder `src` (archived too, 1×1) and the real URL in `data-src`;
- noscript: a placeholder `src` and the real image in a `<noscript>` copy;
- revisit: the page's URL archived as a revisit record whose payload is an earlier capture under
  another URL, in another WARC file of the same job;
- variant: a scheme-relative `src` archived under https with percent-encoded characters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from m3w_builder.config import BuildConfig
from pipelines.build.job import JobOptions, run_build
from pipelines.demo.crawl_archive import CrawlArchive, image_type
from pipelines.demo.sample_site import make_site

HOST = "http://crawl.example"
_GOOD_IMG = re.compile(r'<img src="(/img/p\d{3}-\d\.(?:jpg|png))"([^>]*)>')
SHAPES = ("srcset", "lazy", "noscript", "revisit", "variant")


def _pixel() -> bytes:
    from httpserver import drawn_image

    return drawn_image(1, 1, fmt="GIF")


def write_crawl(site: Path, dest: Path) -> dict[str, int]:
    """Both WARCs of the crawl; returns the good images per page URL."""
    info = json.loads((site / "site.json").read_text())
    good: dict[str, int] = {}
    placeholder = _pixel()
    earlier = CrawlArchive(dest / "earlier.warc.gz")
    crawl = CrawlArchive(dest / "crawl.warc.gz")
    with earlier, crawl:
        n = 0
        for rel in info["pages"]:
            page_url = f"{HOST}/{rel}"
            html = (site / rel).read_text()
            good[page_url] = 0

            def shaped(m: re.Match[str], page_url: str = page_url) -> str:
                nonlocal n
                path, rest = m.group(1), m.group(2)
                body = (site / path.lstrip("/")).read_bytes()
                ctype = image_type(path)
                shape = SHAPES[n % len(SHAPES)]
                n += 1
                good[page_url] += 1
                if shape == "srcset":
                    crawl.response(HOST + path, body, ctype)
                    return f'<img src="{path}" srcset="{path}?w=2x 2x, {path}?w=3x 3x"{rest}>'
                if shape == "lazy":
                    crawl.response(f"{HOST}/static/pix.gif", placeholder, "image/gif")
                    crawl.response(HOST + path, body, ctype)
                    return f'<img src="/static/pix.gif" data-src="{path}"{rest}>'
                if shape == "noscript":
                    crawl.response(f"{HOST}/static/blank_1x1.gif", placeholder, "image/gif")
                    crawl.response(HOST + path, body, ctype)
                    return (
                        f'<img src="/static/blank_1x1.gif" class="js-lazy"{rest}>'
                        f'<noscript><img src="{path}"{rest}></noscript>'
                    )
                if shape == "revisit":
                    digest = earlier.response(f"{HOST}{path}?v=0", body, ctype)
                    crawl.revisit(HOST + path, digest, f"{HOST}{path}?v=0", ctype)
                    return m.group(0)
                # variant: the page says //host/path, the crawler stored https and %-escapes
                escaped = path.replace("-", "%2D")
                crawl.response("https://crawl.example" + escaped, body, ctype)
                return f'<img src="//crawl.example{path}"{rest}>'

            page = _GOOD_IMG.sub(shaped, html)
            crawl.response(page_url, page.encode(), "text/html; charset=utf-8")
            for junk in re.findall(
                r'<img src="(/(?:img/pixel\.gif|img/missing-\d+\.jpg|assets/[^"]+))"', html
            ):
                path = site / junk.lstrip("/")
                if path.is_file():
                    crawl.response(HOST + junk, path.read_bytes(), image_type(junk))
                else:
                    crawl.response(HOST + junk, b"gone", "text/html", status=404)
    return good


def test_every_archived_image_is_found_offline_whatever_its_shape(tmp_path: Path):
    site = tmp_path / "site"
    make_site(site, pages=15, seed=4)
    good = write_crawl(site, tmp_path / "warc")
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    out = tmp_path / "job"
    report = run_build(
        [str(tmp_path / "warc")], config, JobOptions(out=str(out), progress=False), use_ray=False
    )
    counts = report["counts"]
    assert not counts.get("image.not_archived"), counts
    assert not counts.get("image.from_web") and not counts.get("fetch.requests")
    # every good image of every kept page is in the shards, read from the archive
    records = []
    for shard in sorted((out / "shards").glob("*.tar")):
        import tarfile

        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records.append(json.loads(tar.extractfile(member).read()))
    assert records
    for record in records:
        images = [i for i in record["images"] if i and "/img/p" in i["src"]]
        assert len(images) == good[record["url"]], record["url"]
    kept_srcs = {i["src"]: i for r in records for i in r["images"] if i}
    srcset = [i for i in kept_srcs.values() if i.get("src_page", "").endswith("?w=3x")]
    assert srcset and all("?" not in i["src"] for i in srcset)  # stored: the archived 1x src
    assert not any("pix.gif" in s or "blank_1x1" in s for s in kept_srcs)  # no placeholder won
    # only the site's dead links are unresolved, and they are known as such: the crawl archived
    # their 404s, so they are counted as image.http_404, not as "not archived"
    funnel = report["funnel"]["images_resolved"]
    assert funnel["missing"] == counts["image.http_404"] > 0
    assert counts.get("archive.revisits", 0) >= 1
    # the report says where everything went, and the funnel adds up to the kept documents
    steps = {s["step"]: s["count"] for s in report["funnel"]["documents"]}
    assert steps["documents kept"] == report["documents"] == len(records)
    assert json.loads((out / "_work" / "decide" / "decisions.json").read_text())["archive"]
