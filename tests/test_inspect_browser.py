"""`m3w inspect html` rendered in a real headless Chromium (selenium): no broken images, right links.

Skips with a reason where chromium/chromedriver are absent (Debian: `apt-get install chromium
chromium-driver`; .ci/run installs them). The screenshot is kept under the pytest tmp dir, and copied to
$M3W_SCREENSHOT_DIR when set, so a person can look at it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.demo.synthetic import make_job, rewrite_shard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless browser test needs chromium and chromedriver "
    "(apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1200,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _gallery(tmp_path: Path, *extra: str) -> tuple[Path, object]:
    job = make_job(tmp_path / "job", n_shards=2, docs_per_shard=5, max_images=3, seed=7)
    out = tmp_path / "gallery.html"
    assert main(["inspect", "html", str(job.root), str(out), "--no-progress", *extra]) == 0
    return out, job


@pytest.mark.slow
def test_gallery_renders_every_image_and_link(browser, tmp_path):
    out, job = _gallery(tmp_path, "--n", "6")
    browser.get(out.as_uri())
    docs = browser.find_elements("css selector", "article.doc")
    assert len(docs) == 6
    expected_images = sum(len(d.image_nodes) for d in job.docs[:6])
    # every <img> decoded by the browser: naturalWidth > 0 means not broken
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)"
    )
    assert len(widths) == expected_images and all(w > 0 for w in widths), widths
    for doc_el, doc in zip(docs, job.docs[:6], strict=True):
        assert doc_el.get_attribute("data-key") == doc.key
        # each image is joined to the text chunk the trainer lets attend to it (DESIGN §4)
        rows = doc_el.find_elements("css selector", ".row")
        assert len(rows) == len(doc.nodes)
        for i, node in enumerate(doc.nodes):
            if node.__class__.__name__ != "ImageNode":
                continue
            number = rows[i].get_attribute("data-image")
            neighbour = rows[i + 1] if node.attach == "following" else rows[i - 1]
            assert number in neighbour.get_attribute("data-sees").split(","), (i, node.attach)
            assert rows[i].get_attribute("data-attach") == node.attach
        # and the brackets in the gutter: drawn cells exist, one coloured span per image
        assert len(doc_el.find_elements("css selector", ".br.dot")) == len(doc.image_nodes)
    # the stats section comes first, with six inline SVG histograms holding bars
    stats = browser.find_element("css selector", "section#stats")
    assert stats.location["y"] < docs[0].location["y"]
    assert len(stats.find_elements("css selector", "svg.hist")) == 6
    assert len(stats.find_elements("css selector", "svg.hist rect")) > 6
    assert "documents" in stats.text and "10" in stats.text
    shot = tmp_path / "gallery.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("M3W_SCREENSHOT_DIR"):
        dest = Path(os.environ["M3W_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "inspect_gallery.png")
        shutil.copy(out, dest / "inspect_gallery.html")


def test_gallery_sample_shows_a_broken_image_without_a_broken_img(browser, tmp_path):
    # m3w/1: one member per image, so one image can be cut off alone
    job = make_job(
        tmp_path / "job", n_shards=2, docs_per_shard=5, max_images=3, seed=7, schema="m3w/1"
    )
    victim = job.docs[7]
    member = f"{victim.key}.1.{victim.nodes[1].ext}"
    rewrite_shard(
        job.root / "shards" / job.shard_of[victim.key],
        lambda n, d: [(n, d[:40] if n == member else d)],  # cut the image off after 40 bytes
    )
    out = tmp_path / "gallery.html"
    assert main(["inspect", "html", str(job.root), str(out), "--no-progress", "--n", "10"]) == 0
    browser.get(out.as_uri())
    srcs = browser.execute_script("return Array.from(document.images).map(i => i.src)")
    assert srcs and all(s.startswith("data:image/") for s in srcs)  # self-contained
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert all(w > 0 for w in widths)
    assert len(widths) == sum(len(d.image_nodes) for d in job.docs) - 1
    card = browser.find_element("css selector", f'article[data-key="{victim.key}"]')
    assert "not decodable" in card.find_element("css selector", ".noimg").text

    sampled = tmp_path / "sampled.html"
    argv = ["inspect", "html", str(job.root), str(sampled), "--n", "4", "--sample", "--seed", "3"]
    assert main([*argv, "--no-progress"]) == 0
    browser.get(sampled.as_uri())
    keys = [e.get_attribute("data-key") for e in browser.find_elements("css selector", "article")]
    order = [d.key for d in job.docs]
    assert len(set(keys)) == 4 and keys != order[:4]  # seed 3 picks a different set than the head
    assert [order.index(k) for k in keys] == sorted(order.index(k) for k in keys)


def test_chromium_version_is_reported():
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    assert "Chromium" in version.stdout or "Chrome" in version.stdout
