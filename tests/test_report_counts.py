"""report.json counts every event once and every drop of every stage (issues "Hardening" §6 and
"Fit the ecosystem" §2): one small archive whose pages hold one of each drop, built, and the report's
counts compared exactly with what the archive was made to contain."""

from __future__ import annotations

from pathlib import Path

import pytest
from httpserver import drawn_image

from m3w_builder.config import BuildConfig
from pipelines.build.job import JobOptions, run_build
from pipelines.demo.crawl_archive import CrawlArchive

HOST = "http://counts.example"
PROSE = (
    "The river valley farmers bring their grain to the old mill by the bridge, and the miller "
    "weighs every sack before the water wheel turns. In autumn the village market fills with "
    "apples, cider and bread, and the children watch the carts come down from the hills. "
    "Later that week a storm broke over the ridge; the road flooded near the chapel, so the "
    "baker sent his loaves along the towpath instead. Nobody remembered a wetter October since "
    "the year the old schoolhouse lost its roof and the teacher held lessons in the barn. "
)
MORE = (
    "When spring returned, the council voted to rebuild the weir with stone from the quarry, "
    "and volunteers from three parishes carried it down on sledges pulled by oxen."
)


def _page(body: str) -> bytes:
    return f"<!doctype html><html><head><title>t</title></head><body>{body}</body></html>".encode()


def write_archive(path: Path) -> None:
    good = drawn_image(200, 150, seed=1)
    tiny = drawn_image(20, 20, seed=2)
    page_one = _page(
        f"<p>{PROSE}</p>"
        '<img src="/img/photo.jpg" alt="photo">'  # kept
        '<img src="javascript:void(0)">'  # image.bad_url
        '<img src="/img/beacon.gif" width="1" height="1">'  # image.tracking_pixel
        '<img src="/img/site-logo.png">'  # image.url_rule
        '<img src="/img/thumb.jpg">'  # image.too_small (archived, 20×20)
        '<img src="/img/lost.jpg">'  # image.not_archived
        '<img src="/img/photo.jpg">'  # image.duplicate_in_page
        '<img src="/img/extra-1.jpg">'  # image.too_many: past images.max_images_per_doc (3)
        '<img src="/img/extra-2.jpg">'  # image.too_many
        f"<p>{MORE}</p>"
        '<p><a href="/a">one link</a> <a href="/b">another link</a></p>'  # text.link_dense
    )
    page_two = _page("<p>Too short to be a document.</p><img src='/img/photo.jpg'>")
    with CrawlArchive(path) as warc:
        warc.response(f"{HOST}/one.html", page_one, "text/html")
        warc.response(f"{HOST}/two.html", page_two, "text/html")  # text.doc_too_short
        warc.response(f"{HOST}/img/photo.jpg", good, "image/jpeg")
        warc.response(f"{HOST}/img/thumb.jpg", tiny, "image/jpeg")
        warc.response(f"{HOST}/style.css", b"body{}", "text/css")  # warc.not_html
        warc.response(f"{HOST}/gone.html", b"<html>gone</html>", "text/html", 404)  # http_status


def test_every_drop_and_input_is_counted_exactly_once(tmp_path: Path):
    write_archive(tmp_path / "crawl.warc.gz")
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    config.dom.main_content = False  # every image of the page is a candidate
    # the DOM walk keeps photo, thumb and lost (3), then drops what comes after as image.too_many
    # (the duplicate photo before them is image.duplicate_in_page: checked first)
    config.images.max_images_per_doc = 3
    report = run_build(
        [str(tmp_path / "crawl.warc.gz")],
        config,
        JobOptions(out=str(tmp_path / "job"), progress=False),
        use_ray=False,
    )
    counts = report["counts"]
    expected_drops = {
        "image.bad_url": 1,
        "image.tracking_pixel": 1,
        "image.url_rule": 1,
        "image.duplicate_in_page": 1,
        "image.too_many": 2,
        "image.too_small": 1,
        "image.not_archived": 1,
        "text.link_dense": 1,
        "text.doc_too_short": 1,
        "warc.not_html": 3,  # both images and the stylesheet are captures but no page
        "warc.http_status": 1,
    }
    assert report["drops"] == expected_drops
    assert counts["warc.records"] == 6  # each record read once (pages and index in one pass)
    assert counts["warc.html_pages"] == 2
    assert counts["archive.indexed"] == 3  # two images and the stylesheet
    assert counts["image.from_archive"] == 2 and counts["image.kept"] == 1
    assert report["documents"] == 1 and report["images"] == 1
    steps = {s["step"]: s["count"] for s in report["funnel"]["documents"]}
    assert steps == {
        "captures read": 6,
        "HTML pages": 2,
        "extracted": 2,
        "passed text rules": 1,
        "after dedup": 1,
        "with ≥1 image candidate": 1,
        "documents kept": 1,
    }
    images = {s["step"]: s["count"] for s in report["funnel"]["images"]}
    assert images == {"image candidates": 3, "resolved": 2, "kept": 1}
    # the split views hold the same counts, each code in exactly one of them
    split = {**report["inputs"], **report["progress"], **report["drops"]}
    assert split == counts


def test_a_build_that_keeps_nothing_warns_with_its_largest_loss(tmp_path: Path):
    """Pages fine, images never archived, fetching off: the warning names image.not_archived."""
    page = _page(f"<p>{PROSE}</p><img src='/img/a.jpg'><p>{MORE}</p><img src='/img/b.jpg'>")
    with CrawlArchive(tmp_path / "c.warc.gz") as warc:
        for i in range(3):  # one site each: no paragraph repeats within a domain
            body = page.replace(b"/img/", f"/img/{i}/".encode())
            warc.response(f"http://site{i}.example/p.html", body, "text/html")
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    config.dedup.near_dedup = False  # the three pages share their text: near copies otherwise
    report = run_build(
        [str(tmp_path / "c.warc.gz")], config, JobOptions(out=str(tmp_path / "j"), progress=False),
        use_ray=False,
    )  # fmt: skip
    assert report["documents"] == 0
    assert report["warning"].startswith("0 documents: the largest loss is at 'documents kept'")
    assert "image.not_archived × 6" in report["warning"]
    from pipelines.build.job import summary_table

    assert summary_table(report).endswith(f"WARNING: {report['warning']}")


def test_inspect_stats_prints_the_funnel_and_verify_accepts_src_page(tmp_path: Path, capsys):
    from pipelines.cli import main

    write_archive(tmp_path / "crawl.warc.gz")
    page = _page(
        f"<p>{PROSE}</p><img src='/img/photo.jpg' srcset='/img/photo-2x.jpg 2x'><p>{MORE}</p>"
    )
    with CrawlArchive(tmp_path / "more.warc.gz") as warc:
        warc.response(f"{HOST}/three.html", page, "text/html")
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    job = tmp_path / "job"
    run_build(
        [str(tmp_path / "crawl.warc.gz"), str(tmp_path / "more.warc.gz")], config,
        JobOptions(out=str(job), progress=False), use_ray=False,
    )  # fmt: skip
    assert main(["inspect", "stats", str(job)]) == 0
    out = capsys.readouterr().out
    assert "yield funnel (report.json)" in out and "captures read" in out
    assert "drop reasons" in out and "warc.records" not in out.split("drop reasons")[1]
    assert main(["inspect", "verify", str(job)]) == 0  # src_page is part of the schema


@pytest.mark.slow
def test_extract_and_build_count_the_same_archive_alike(tmp_path: Path):
    """`m3w extract x.warc` and `m3w build x.warc` read the same records: their reader counts
    agree (the build once counted every record twice, 64 against extract's 32)."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    archive = tmp_path / "crawl.warc.gz"
    write_archive(archive)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "extract", str(archive)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if x.startswith("m3w extract: reader counts"))
    extract_counts = json.loads(line.split("reader counts ", 1)[1])
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    report = run_build(
        [str(archive)], config, JobOptions(out=str(tmp_path / "job"), progress=False),
        use_ray=False,
    )  # fmt: skip
    for code in ("warc.records", "warc.html_pages", "warc.not_html", "warc.http_status"):
        assert report["counts"][code] == extract_counts[code], code


def test_a_no_op_rerun_reports_the_jobs_totals_and_says_nothing_was_left(tmp_path: Path):
    from pipelines.build.job import summary_table

    write_archive(tmp_path / "crawl.warc.gz")
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    options = JobOptions(out=str(tmp_path / "job"), progress=False)
    first = run_build([str(tmp_path / "crawl.warc.gz")], config, options, use_ray=False)
    again = run_build([str(tmp_path / "crawl.warc.gz")], config, options, use_ray=False)
    tasks = first["units"] + first["write_groups"]
    assert first["last_run"]["tasks_done"] == tasks and first["last_run"]["tasks_already_done"] == 0
    assert again["last_run"] == {**again["last_run"], "tasks_done": 0, "tasks_already_done": tasks}
    assert again["last_run"]["pages"] == 0
    # `seconds` / `pages_per_s` stay the job's: both runs, not a fresh figure over the no-op
    assert again["seconds"] >= first["seconds"] + again["last_run"]["seconds"] - 0.01
    import pytest

    assert again["pages_per_s"] == pytest.approx(again["pages"] / again["seconds"], rel=0.05)
    assert again["counts"] == first["counts"] and again["documents"] == first["documents"]
    table = summary_table(again)
    assert table.startswith(f"{tasks}/{tasks} units already done: nothing to build.")
    assert "this run: tasks done" in table


def test_funnel_says_when_a_reason_counts_images_not_documents():
    """A logo removed from every page is an image count beside a document step: printed bare, it
    read as every document lost at a step that lost none."""
    from pipelines.build.funnel import compute_funnel, format_funnel

    counts = {"yield.read": 10, "yield.html": 10, "yield.extracted": 10, "yield.text_ok": 10}
    counts |= {"yield.deduped": 10, "yield.with_images": 10, "yield.docs_kept": 10}
    counts |= {"dedup.image_url_frequent": 10, "yield.image_candidates": 10, "image.kept": 10}
    counts |= {"image.too_small": 3, "dedup.page_url": 2}
    text = format_funnel(compute_funnel(counts))
    assert "dedup.image_url_frequent 10 images" in text
    assert "dedup.page_url 2" in text and "dedup.page_url 2 " not in text
    image_rows = text.split("[images]")[1]
    assert "image.too_small 3" in image_rows and "image.too_small 3 images" not in image_rows


def write_arc(path: Path) -> list[int]:
    """An ARC v1 file: its filedesc, a page, three corrupt records (length -1, "abc", and one that
    claims more bytes than the file has), then a second page and its image; returns the offsets
    of the three corrupt records' header lines."""
    now = "20240101000000"

    def record(url: str, mime: str, block: bytes) -> bytes:
        return f"{url} 10.0.0.1 {now} {mime} {len(block)}\n".encode() + block + b"\n"

    def http(mime: str, body: bytes) -> bytes:
        head = f"HTTP/1.0 200 OK\r\nContent-Type: {mime}\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    page = _page(f"<p>{PROSE}</p><img src='/img/photo.jpg' alt='photo'><p>{MORE}</p>")
    desc = b"1 0 m3w test\nURL IP-address Archive-date Content-type Archive-length\n"
    head = record(f"filedesc://{path.name}", "text/plain", desc)
    head += record(f"{HOST}/one.html", "text/html", http("text/html", page))
    corrupt = [
        f"{HOST}/bad-1.html 10.0.0.1 {now} text/html -1\n\n".encode(),
        f"{HOST}/bad-2.html 10.0.0.1 {now} text/html abc\n\n".encode(),
        f"{HOST}/bad-3.html 10.0.0.1 {now} text/html 900000\n<html>cut short</html>\n\n".encode(),
    ]
    tail = record(
        f"{HOST}/two.html", "text/html", http("text/html", page.replace(b"<p>", b"<p>Again: "))
    )
    tail += record(
        f"{HOST}/img/photo.jpg", "image/jpeg", http("image/jpeg", drawn_image(200, 150, seed=1))
    )
    offsets, data = [], head
    for bad in corrupt:
        offsets.append(len(data))
        data += bad
    path.write_bytes(data + tail)
    return offsets


@pytest.mark.slow
def test_three_corrupt_arc_records_are_counted_three_times_and_warned_once_each(tmp_path: Path):
    """Issue "Fit the ecosystem" §2: three corrupt records in an ARC file were counted 6 times and
    each warning printed twice. `m3w extract` and `m3w build` (a real local Ray, workers' log
    lines forwarded to the console) each count 3 and print each record's warning once."""
    import json
    import os
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    arc = tmp_path / "crawl.arc"
    offsets = write_arc(arc)
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def warnings_once(stderr: str) -> None:
        lines = [
            x for x in stderr.splitlines() if re.search(r"warc\.corrupt_record \S+\.arc@\d+", x)
        ]
        found = [int(re.search(r"\.arc@(\d+)", x).group(1)) for x in lines]
        assert found == offsets, stderr  # one line per corrupt record, in file order, none twice

    extract = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "extract", str(arc)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert extract.returncode == 0, extract.stderr
    warnings_once(extract.stderr)
    line = next(
        x for x in extract.stderr.splitlines() if x.startswith("m3w extract: reader counts")
    )
    counts = json.loads(line.split("reader counts ", 1)[1])
    assert counts["warc.corrupt_record"] == 3
    assert counts["warc.records"] == 4  # filedesc, two pages, the image: each read once
    assert [json.loads(x)["url"] for x in extract.stdout.splitlines()] == [
        f"{HOST}/one.html", f"{HOST}/two.html"
    ]  # the records after the damage are read  # fmt: skip

    build = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "build", str(arc), "--out", "job",
         "--num-cpus", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    warnings_once(build.stderr)
    report = json.loads((tmp_path / "job" / "report.json").read_text())
    assert report["drops"]["warc.corrupt_record"] == 3
    assert report["counts"]["warc.records"] == 4
    assert report["counts"]["warc.html_pages"] == 2
    assert report["counts"]["archive.indexed"] == 1
