"""The build job: its Ray-free stages (journal, dedup decisions, finalize) and end-to-end Ray builds
over a real WARC and over a generated site served on 127.0.0.1."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from m3w_builder.document import Document, ImageNode, TextNode
from m3w_builder.errors import OutputError
from m3w_builder.reasons import Counts
from m3w_builder.shards import ShardInfo, ShardWriter
from pipelines.build import stages
from pipelines.demo.sample_site import SITE_MARK, make_site, serve_site, write_url_list

# --------------------------------------------------------------------------------------------------
# journal: pages that crash or hang their worker


def test_journal_skips_a_timed_out_page_at_once_and_a_crashing_page_after_two_crashes():
    text = (
        "a run1\ns 0\ne\ns 1\nTimeout (0:00:30)!\nThread 0x01 (most recent call first):\n"  # 1 hung
        "a run1\ns 0\ne\ns 1\ne\ns 2\n"  # attempt 2 died in page 2 (crash #1)
        "a run1\ns 0\ne\ns 1\ne\ns 2\n"  # attempt 3 died in page 2 again (crash #2)
    )
    state = stages.read_journal(text, "run1")
    assert state.attempts == 3
    assert state.skip == {1: "html.parse_timeout", 2: "html.parse_crash"}


def test_journal_ignores_crashes_of_an_earlier_run():
    # a driver killed twice while page 4 was being parsed is not evidence against page 4
    text = "a old1\ns 4\na old2\ns 4\na now\ns 3\ne\n"
    assert stages.read_journal(text, "now").skip == {}
    assert stages.read_journal("a now\ns 4\na now\ns 4\n", "now").skip == {4: "html.parse_crash"}


def test_journal_watchdog_kills_a_hanging_parse_and_records_it(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "j"
    code = (
        "import time, pathlib\n"
        "from pipelines.build.stages import Journal\n"
        f"j = Journal(pathlib.Path({str(path)!r}), 'r', 0.2)\n"
        "with j.page(0):\n    pass\n"
        "with j.page(1):\n    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=20, capture_output=True)
    assert proc.returncode != 0  # faulthandler's watchdog _exit()ed the process
    assert stages.read_journal(path.read_text(), "r").skip == {1: "html.parse_timeout"}


# --------------------------------------------------------------------------------------------------
# dedup decisions


def _write_keys(work, units: list[list[tuple]], parts: int) -> None:
    """Key tables as extract tasks write them: (ord, page key, capture date, content) per doc."""
    import numpy as np

    from m3w_builder import dedup
    from pipelines.build import tables
    from pipelines.build.decide import keys_path

    for unit, docs in enumerate(units):
        rows = np.zeros(len(docs), dtype=dedup.DOC_KEYS)
        for i, (ord_, page, date, content) in enumerate(docs):
            rows[i]["ord"], rows[i]["page"] = ord_, page
            rows[i]["date"] = dedup.capture_time(date)
            rows[i]["content_hi"] = dedup.hash64(content)
            rows[i]["doc_hi"] = dedup.hash64(f"{unit}/{ord_}")
        tables.write_partitioned(keys_path(work, unit), rows, rows["page"], parts)


def _decide(work, n_units: int, parts: int):
    from pipelines.build import decide as dec

    for p in range(parts):
        dec.page_partition(p, work, list(range(n_units)), parts)
    for q in range(parts):
        dec.content_partition(q, work, parts)
    return dec.Decisions(parts)


@pytest.mark.parametrize("parts", [1, 3])
def test_decide_keeps_newest_capture_then_first_identical_then_max_docs(tmp_path, parts):
    from pipelines.build import decide as dec

    _write_keys(
        tmp_path,
        [
            [(0, 11, "2008-04-01T00:00:00Z", "A"), (1, 22, "2008-04-01T00:00:00Z", "B"),
             (2, 33, "", "C")],
            [(0, 11, "2008-05-01T00:00:00Z", "A2"), (1, 44, "", "B"), (2, 55, "", "D")],
        ],
        parts,
    )  # fmt: skip
    decisions = _decide(tmp_path, 2, parts)
    drops = dec.DropIndex(tmp_path, decisions)
    # page 11 captured twice: the newer (unit 1) wins; "B" content twice: the first (unit 0) wins
    assert drops.for_unit(0) == {0: "dedup.page_url"} and drops.for_unit(1) == {
        1: "dedup.identical_doc"
    }
    assert drops.drops_per_unit(2).tolist() == [1, 1]
    # --max-docs 2: kept in input order are unit 0's ords 1 and 2; unit 1's come later
    decisions.cut = dec.max_docs_cut([2, 2], 2)
    assert decisions.cut == (0, 2)
    records = [{"ord": i} for i in range(3)]
    drops = dec.DropIndex(tmp_path, decisions)
    codes = [c for _, c in dec.unit_records(records, 1, drops)]
    assert codes == ["job.max_docs", "dedup.identical_doc", "job.max_docs"]
    assert [c for _, c in dec.unit_records(records, 0, drops)] == ["dedup.page_url", None, None]


def test_decide_breaks_date_ties_by_input_order(tmp_path):
    from pipelines.build import decide as dec

    _write_keys(
        tmp_path, [[(0, 7, "2020-01-01T00:00:00Z", "x")], [(0, 7, "2020-01-01T00:00:00Z", "y")]], 2
    )
    drops = dec.DropIndex(tmp_path, _decide(tmp_path, 2, 2))
    assert drops.for_unit(0) == {} and drops.for_unit(1) == {0: "dedup.page_url"}


def test_capture_times_compare_as_times_not_strings():
    from m3w_builder.dedup import NO_DATE, capture_time

    assert capture_time("2024-05-01T12:00:00.5Z") > capture_time("2024-05-01T12:00:00Z")
    assert capture_time("20080430204825") == capture_time("2008-04-30T20:48:25Z")
    assert capture_time("") == capture_time("not a date") == NO_DATE < capture_time("1999-01-01")


def test_job_dedup_removes_frequent_images_and_boilerplate_paragraphs():
    from m3w_builder.dedup import image_url_key, paragraph_key

    doc = Document(
        url="https://www.example.com/a",
        nodes=[
            TextNode("kept words"),
            ImageNode(src="https://example.com/logo.png"),
            ImageNode(src="https://example.com/photo.jpg"),
            TextNode("footer boilerplate"),
        ],
    )
    decisions = stages.JobDedup(
        frequent_images={image_url_key("https://example.com/logo.png")},
        repeated_paragraphs={paragraph_key("example.com", "footer boilerplate")},
    )
    counts = Counts()
    out = stages.apply_job_dedup(doc, decisions, counts)
    assert out is not None and out.texts == ["kept words", None]
    assert out.image_nodes[0].src == "https://example.com/photo.jpg"
    assert counts == {"dedup.image_url_frequent": 1, "dedup.paragraph_repeat": 1}
    only_footer = Document(url="https://example.com/b", nodes=[TextNode("footer boilerplate")])
    assert stages.apply_job_dedup(only_footer, decisions, counts) is None
    assert counts["doc.no_text"] == 1


@pytest.mark.parametrize("parts", [1, 4])
def test_frequent_keys_uses_more_than_10_images_and_at_least_3_paragraphs(tmp_path, parts):
    import numpy as np

    from pipelines.build import decide as dec
    from pipelines.build import tables

    per_unit = [[(1, 6, 1), (2, 10, 1), (7, 2, 2)], [(1, 5, 1), (8, 3, 2)]]
    for unit, rows in enumerate(per_unit):
        table = np.array(rows, dtype=dec.COUNT)
        tables.write_partitioned(dec.count_path(tmp_path, unit), table, table["key"], parts)
    for p in range(parts):
        dec.frequent_partition(p, tmp_path, [0, 1], image_max=10, paragraph_min=3)
    assert dec.frequent_keys(tmp_path, parts, "images").tolist() == [1]  # 6 + 5 > 10; 10 is not
    assert dec.frequent_keys(tmp_path, parts, "paragraphs").tolist() == [8]


def test_write_groups_gather_consecutive_units_up_to_a_shard_of_surviving_documents():
    # survivors per unit (unit 1 lost one document to dedup)
    groups = stages.plan_write_groups([3, 2, 10, 0, 1, 4], target_docs=5)
    # 3 + 2 = 5 → group; 10 → group; 0 + 1 + 4 = 5 → group
    assert [g.members for g in groups] == [[0, 1], [2], [3, 4, 5]]
    assert [g.index for g in groups] == [0, 1, 2] and groups[0].describe() == "extract units 0-1"


# --------------------------------------------------------------------------------------------------
# finalize: contiguous names, idempotent renames


def _part(job: stages.JobDir, unit: int, name: str, url: str) -> ShardInfo:
    writer = ShardWriter(job.write_dir(unit) / name)
    writer.write(Document(url=url, nodes=[TextNode("t")]))
    return writer.close()


def test_finalize_renames_parts_in_unit_order_and_survives_a_second_run(tmp_path):
    from pipelines.build.stats import WriteStats

    job = stages.JobDir(tmp_path)
    write_stats = [
        WriteStats(unit=1, shards=[_part(job, 1, "000000.tar", "http://e/3")]),
        WriteStats(
            unit=0,
            shards=[
                _part(job, 0, "000000.tar", "http://e/1"),
                _part(job, 0, "000001.tar", "http://e/2"),
            ],
        ),
        WriteStats(unit=2, shards=[]),
    ]
    infos = stages.finalize(job, write_stats)
    assert [i.name for i in infos] == [
        "shards/000000.tar",
        "shards/000001.tar",
        "shards/000002.tar",
    ]
    lines = [json.loads(line) for line in job.manifest.read_text().splitlines()]
    assert [line["sha256"] for line in lines] == [i.sha256 for i in infos]
    from m3w_builder.shards import iter_shard

    urls = [s.record["url"] for i in infos for s in iter_shard(tmp_path / i.name)]
    assert urls == ["http://e/1", "http://e/2", "http://e/3"]
    assert stages.finalize(job, write_stats) == infos  # a rerun after a kill mid-rename


def test_concurrent_attempts_of_one_unit_do_not_clobber_each_other(tmp_path):
    """Regression (CI, driver-kill test): the killed driver's Ray workers still ran a unit while the
    rerun ran it again; both wrote `NAME.tmp`, and one attempt's rename took the other's file away
    (FileNotFoundError), or truncated it mid-write. Each attempt now has its own temporary name."""
    import threading

    from m3w_builder.config import BuildConfig
    from pipelines.demo.sample_site import write_warcs

    site = make_site(tmp_path / "site", pages=16)
    (warc,) = write_warcs(tmp_path / "site", tmp_path / "warc", files=1)
    assert site.pages
    config = BuildConfig.for_profile("m3w")
    unit = stages.WorkUnit(index=0, kind="pages", paths=[str(warc)])
    job = stages.JobDir(tmp_path / "job")
    errors: list[BaseException] = []

    def attempt(run_id: str) -> None:
        try:
            # one run id per attempt: the stale attempt belongs to the killed driver's run
            stages.extract_unit(unit, config, job, stages.ExtractOptions(run_id=run_id))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(f"run{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    alone = stages.JobDir(tmp_path / "alone")
    stages.extract_unit(unit, config, alone, stages.ExtractOptions(run_id="r"))
    read = lambda j: [r["url"] for r in stages.iter_extracted(j, 0)]  # noqa: E731
    assert read(job) == read(alone) and read(job)
    assert not list((tmp_path / "job").rglob("*.tmp"))  # no attempt left a partial file behind


# --------------------------------------------------------------------------------------------------
# the generated site


def test_sample_site_serves_pages_images_and_a_404(tmp_path):
    info = make_site(tmp_path / "site", pages=12, seed=1)
    assert len(info.pages) == 12 and info.good_images >= 12
    with serve_site(tmp_path / "site") as base:
        urls = write_url_list(tmp_path / "site", base, tmp_path / "urls.txt").read_text().split()
        assert len(urls) == 12 and urls[0].startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(urls[0], timeout=5).read().decode()
        assert SITE_MARK in page and "<p>" in page
        mark = urllib.request.urlopen(f"{base}/{SITE_MARK}", timeout=5).read()
        assert mark.startswith(b"\x89PNG")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/img/missing-2.jpg", timeout=5)
        assert err.value.code == 404
    # deterministic in (pages, seed)
    again = make_site(tmp_path / "again", pages=12, seed=1)
    assert (tmp_path / "site" / "pages" / "004.html").read_bytes() == (
        tmp_path / "again" / "pages" / "004.html"
    ).read_bytes()
    assert again.good_images == info.good_images


# --------------------------------------------------------------------------------------------------
# end to end, on a real local Ray (one per session) — marked slow


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from pipelines.build.ray_local import init_ray

    started = init_ray(num_cpus=2, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The generated site, served slowly enough (20 ms a response) that a test can catch a task."""
    root = tmp_path_factory.mktemp("site")
    info = make_site(root, pages=24, seed=0)
    with serve_site(root, delay_s=0.02) as base:
        urls = write_url_list(root, base, root / "urls.txt")
        yield {"info": info, "base": base, "urls": str(urls), "root": root}


def _site_config():
    from m3w_builder.config import BuildConfig

    config = BuildConfig.for_profile("m3w")
    config.fetch.allow_private_hosts = True  # the site is on 127.0.0.1
    config.shards.docs_per_shard = 5
    return config


def _site_options(out, **kw):
    from pipelines.build.job import JobOptions

    return JobOptions(out=str(out), urls_per_unit=4, progress=False, **kw)


def _manifest(out) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _keys(out) -> list[str]:
    from m3w_builder.shards import iter_shard

    return [s.key for m in _manifest(out) for s in iter_shard(out / m["name"])]


@pytest.fixture(scope="module")
def site_build(ray_cluster, site, tmp_path_factory):
    """One uninterrupted Ray build of the site: the reference the other tests compare against."""
    from pipelines.build.job import run_build

    out = tmp_path_factory.mktemp("site_build")
    report = run_build([site["urls"]], _site_config(), _site_options(out))
    return out, report


@pytest.mark.slow
def test_site_build_reads_back_with_webdataset_and_tar(site, site_build):
    import subprocess

    import webdataset as wds

    out, report = site_build
    manifest = _manifest(out)
    names = [m["name"] for m in manifest]
    assert names == [f"shards/{i:06d}.tar" for i in range(len(names))] and len(names) >= 3
    assert sorted(p.name for p in (out / "shards").iterdir()) == [n[7:] for n in names]
    pattern = str(out / "shards" / f"{{000000..{len(names) - 1:06d}}}.tar")
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))
    assert len(samples) == report["documents"] == sum(m["docs"] for m in manifest)
    n_images = 0
    for sample in samples:
        record = sample["json"]
        assert record["schema"] == "m3w/2" and record["key"] == sample["__key__"]
        blobs = sample["images.mp"]  # wds decodes the msgpack member: bytes at image positions
        assert len(blobs) == len(record["images"])
        for pos, image in enumerate(record["images"]):
            if image is None:
                assert blobs[pos] is None
                continue
            n_images += 1
            picture = Image.open(io.BytesIO(blobs[pos]))
            assert min(picture.size) >= 16 and image["attach"] in ("following", "preceding")
            assert "site-mark" not in image["src"] and "missing" not in image["src"]
        assert not any(
            t and t.startswith("This page is part of the community") for t in record["texts"]
        )
        # per-document draw: one attachment per page
        assert len({i["attach"] for i in record["images"] if i is not None}) == 1
    assert n_images == report["images"] == sum(m["images"] for m in manifest)
    listing = subprocess.run(
        ["tar", "-tf", str(out / names[0])], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing and all(
        name.split(".")[0] == listing[0].split(".")[0] or True for name in listing
    )
    # every junk the site holds was dropped with its reason code
    counts = report["counts"]
    pages = len(site["info"].pages)
    assert report["pages"] == pages
    assert counts["dedup.identical_doc"] == len(site["info"].duplicate_pages) == 1
    assert counts["dedup.image_url_frequent"] > 10  # the site mark, on every page
    assert counts["dedup.paragraph_repeat"] >= 3  # the repeated archive note
    assert counts["image.http_404"] >= 1 and counts["doc.no_images"] >= 1
    assert report["documents"] == pages - 2  # minus the copy and the page without good images
    assert report["languages"] == {"en": report["documents"]}
    assert (out / "report.json").exists() and json.loads((out / "report.json").read_text())["pages"]


@pytest.mark.slow
def test_two_builds_and_the_in_process_loop_give_identical_shards(site, site_build, tmp_path):
    from pipelines.build.job import run_build

    out, _ = site_build
    reference = [m["sha256"] for m in _manifest(out)]
    run_build([site["urls"]], _site_config(), _site_options(tmp_path / "again"))
    assert [m["sha256"] for m in _manifest(tmp_path / "again")] == reference
    run_build([site["urls"]], _site_config(), _site_options(tmp_path / "local"), use_ray=False)
    assert [m["sha256"] for m in _manifest(tmp_path / "local")] == reference
    # a finished job run again does nothing new and changes nothing
    report = run_build([site["urls"]], _site_config(), _site_options(tmp_path / "again"))
    assert [m["sha256"] for m in _manifest(tmp_path / "again")] == reference
    assert report["documents"] == sum(m["docs"] for m in _manifest(out))
    # another seed draws other attachments: other bytes
    config = _site_config()
    config.seed = 1
    run_build([site["urls"]], config, _site_options(tmp_path / "seed1"))
    assert [m["sha256"] for m in _manifest(tmp_path / "seed1")] != reference
    assert _keys(tmp_path / "seed1") == _keys(out)


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(site, site_build):
    from pipelines.build.job import run_build

    out, _ = site_build
    config = _site_config()
    config.attach.p_next = 0.9
    with pytest.raises(OutputError, match="different config"):
        run_build([site["urls"]], config, _site_options(out))


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _killed_session(driver_pid: int):
    """The local Ray session folder the m3w driver `driver_pid` started (its owner file)."""
    from pipelines.build.ray_stale import OWNER_FILE, STOPPED_FILE, ray_temp_root

    for name in (OWNER_FILE, STOPPED_FILE):
        for marker in ray_temp_root().glob(f"session_*/{name}"):
            if json.loads(marker.read_text()).get("pid") == driver_pid:
                return marker.parent
    return None


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["group", "driver"])
def test_driver_killed_mid_run_then_rerun_gives_the_uninterrupted_documents(
    site, site_build, tmp_path, kill
):
    """SIGKILL the whole driver process group (driver and the local Ray it started), or the driver
    alone (as `kill -9` or the OOM killer do: the raylet's agents outlived it), once the first unit is
    done, then rerun the same command: same keys, no duplicates, same bytes, and nothing of the
    killed run's local Ray is left running."""
    import os
    import signal
    import subprocess
    import sys

    from pipelines.build.job import run_build
    from pipelines.build.ray_stale import session_pids

    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "pipelines.cli", "build", site["urls"], "--out", str(out),
        "--allow-private-hosts", "--docs-per-shard", "5", "--urls-per-unit", "4",
        "--num-cpus", "2", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(
            lambda: (
                any((out / "_work" / "extract").glob("*.stats.json")) or proc.poll() is not None
            ),
            240,
            "the first finished unit",
        )
    finally:
        if kill == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.jsonl").exists()  # killed before the end
    session = _killed_session(proc.pid)
    assert session is not None, "the killed driver's local Ray left no owner file"
    report = run_build([site["urls"]], _site_config(), _site_options(out))
    assert session_pids(session) == [], f"processes of {session} still running"
    reference, _ = site_build
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == report["documents"]
    assert keys == _keys(reference)
    assert [m["sha256"] for m in _manifest(out)] == [m["sha256"] for m in _manifest(reference)]
    assert not list(out.rglob("*.tmp"))
    assert report["tasks_resumed"] >= 1  # the finished unit was read back, not redone


@pytest.mark.slow
def test_worker_killed_mid_task_is_retried_by_ray(site, site_build, tmp_path):
    """SIGKILL a Ray worker while it runs a task: Ray retries it and the shards are unchanged."""
    import os
    import signal
    import subprocess
    import threading

    from pipelines.build.job import run_build

    killed: list[int] = []
    done = threading.Event()

    def ours(pid: int) -> bool:
        """A descendant of this process: a worker of the local Ray this test started, never one
        of another build on the machine (a benchmark, a user's job, a concurrent test run)."""
        while pid > 1:
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])
            if pid == os.getpid():
                return True
        return False

    def killer() -> None:
        while not done.is_set() and not killed:
            ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
            for line in ps.splitlines():
                pid, _, args = line.strip().partition(" ")
                if args.startswith(("ray::extract_unit", "ray::write_unit")) and ours(int(pid)):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    break
            done.wait(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        run_build([site["urls"]], _site_config(), _site_options(tmp_path / "out"))
    finally:
        done.set()
        thread.join()
    assert killed, "no task was caught running (the site's delay should make tasks last > 0.1 s)"
    from pipelines.build.ray_stale import is_running

    assert not is_running(killed[0])  # nothing of the killed worker is left running
    reference, _ = site_build
    assert [m["sha256"] for m in _manifest(tmp_path / "out")] == [
        m["sha256"] for m in _manifest(reference)
    ]


@pytest.mark.slow
def test_a_page_that_hangs_its_parser_kills_the_worker_once_and_is_skipped(ray_cluster, tmp_path):
    """With a hard per-page limit far below the parse of a long page, the watchdog kills the worker
    on every page; Ray retries the task and each retry skips the page the journal blames. The job
    finishes. Each page (3.5 MB) takes ~0.9 s in a warm worker against a 0.05 s limit: the site's pages
    (1.5 ms against 0.1 ms), then 170 kB pages (0.06 s warm against 0.05 s) finished before the timer
    in workers earlier tests had warmed (CI counted 1 of 2)."""
    from pipelines.build.job import JobOptions, run_build

    pages = []
    for n in range(2):
        paragraphs = "".join(
            f"<div><p>Page {n}, paragraph {i}: a long page about gardens and spring weather.</p></div>"
            for i in range(40_000)
        )
        pages.append(tmp_path / f"long{n}.html")
        pages[-1].write_text(f"<html><body>{paragraphs}</body></html>")
    report = run_build(
        [str(p) for p in pages],
        _site_config(),
        JobOptions(out=str(tmp_path / "out"), page_kill_timeout_s=0.05, progress=False),
    )
    assert report["counts"].get("html.parse_timeout") == 2, report["counts"]
    assert report["pages"] == 2 and report["documents_extracted"] == 0
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""


@pytest.mark.slow
def test_warc_build_resolves_images_from_the_archive_and_survives_a_corrupt_input(
    ray_cluster, corpus, tmp_path
):
    """The real 2008 Archive-It crawl (corpus warc/aut/example.warc.gz) through the CLI, offline:
    the images of the kept documents come from the archive; a broken WARC beside it is a counted
    skip; the shards read back with webdataset's PIL decoding."""
    import gzip

    import webdataset as wds

    from pipelines.cli import main

    warc = corpus / "warc" / "aut" / "example.warc.gz"
    bad = tmp_path / "inputs" / "broken.warc.gz"
    bad.parent.mkdir()
    # the first records of the same crawl, cut off mid-record, then bytes that are not gzip at all
    head = gzip.decompress(warc.read_bytes())[:6000]
    bad.write_bytes(gzip.compress(head, mtime=0) + b"\x00garbage" * 100)
    out = tmp_path / "job"
    config = tmp_path / "build.yaml"
    config.write_text("fetch: {offline: true}\nshards: {docs_per_shard: 2}\n")  # no network
    code = main(
        ["build", str(warc), str(bad), "--out", str(out), "--config", str(config),
         "--attach", "per-image", "--seed", "3", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    counts = report["counts"]
    assert report["pages"] >= 90 and report["documents"] >= 1
    assert counts["image.from_archive"] >= report["images"] >= 1
    assert not counts.get("image.from_web")
    assert counts.get("warc.corrupt_record", 0) + counts.get("warc.truncated", 0) >= 1, counts
    n = len(_manifest(out))
    pattern = str(out / "shards" / f"{{000000..{n - 1:06d}}}.tar")
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))
    assert len(samples) == report["documents"]
    for sample in samples:
        images = [i for i in sample["json"]["images"] if i is not None]
        blobs = [b for b in sample["images.mp"] if b is not None]
        sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
        assert images and len(blobs) == len(images) and all(min(s) >= 64 for s in sizes)  # M3W
        assert {i["attach"] for i in images} <= {"following", "preceding"}


@pytest.mark.slow
def test_generated_crawl_builds_offline_from_the_archives_with_a_corrupt_file_among_them(
    ray_cluster, site, tmp_path
):
    """The site as 3 WARC files plus a corrupt one: every image comes from the archives (offline),
    the bad file is a counted skip, and the per-image draw splits about half/half."""
    from m3w_builder.config import BuildConfig
    from pipelines.build.job import JobOptions, run_build
    from pipelines.demo.sample_site import write_warcs

    warcs = write_warcs(site["root"], tmp_path / "warc", files=3)
    bad = tmp_path / "warc" / "sample-00001.warc.gz"
    corrupt = tmp_path / "warc" / "sample-00003.warc.gz"  # a cut-off copy, then garbage
    corrupt.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2] + b"\x1f\x8bgarbage" * 50)
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    config.attach.mode = "per-image"
    inputs = [str(p) for p in [*warcs, corrupt]]
    report = run_build(inputs, config, JobOptions(out=str(tmp_path / "job"), progress=False))
    counts = report["counts"]
    assert counts["image.from_archive"] == report["images"] > 20
    assert not counts.get("image.from_web")
    assert counts["warc.corrupt_record"] >= 1, counts  # the cut, logged with file and offset
    # the corrupt copy repeats pages of file 1: page-URL dedup keeps one capture of each
    assert counts["dedup.page_url"] >= 1
    keys = _keys(tmp_path / "job")
    assert len(keys) == len(set(keys)) == report["documents"] == len(site["info"].pages) - 2
    from m3w_builder.shards import iter_shard

    attach = [
        image["attach"]
        for m in _manifest(tmp_path / "job")
        for s in iter_shard(tmp_path / "job" / m["name"])
        for image in s.record["images"]
        if image is not None
    ]
    share = attach.count("following") / len(attach)
    assert abs(share - 0.5) < 4 * (0.25 / len(attach)) ** 0.5


@pytest.mark.slow
def test_max_docs_reads_only_the_shortest_prefix_of_units_that_holds_n_documents(
    ray_cluster, site, site_build, tmp_path
):
    from pipelines.build.job import run_build

    reference, _ = site_build
    report = run_build([site["urls"]], _site_config(), _site_options(tmp_path / "cap", max_docs=6))
    keys = _keys(tmp_path / "cap")
    # units of 4 pages; dedup leaves 3 of the first 4 (page 3 copies page 2) and 4 of the next, so
    # 2 units hold ≥ 6 documents; the first 6 are kept, then page 5 has no good image: 5 are written
    assert report["pages"] == 8 and report["counts"]["job.max_docs"] == 1
    assert len(keys) == report["documents"] == 5
    assert keys == _keys(reference)[:5]  # the first documents in input order
    again = run_build(
        [site["urls"]], _site_config(), _site_options(tmp_path / "cap_local", max_docs=6),
        use_ray=False,
    )  # fmt: skip
    assert again["pages"] == 8 and _keys(tmp_path / "cap_local") == keys


def test_a_rerun_removes_what_killed_attempts_left_but_not_live_ones(tmp_path):
    import os
    import time

    job = stages.JobDir(tmp_path)
    stale = job.write_dir(3).with_name("00003.4242-deadbeef.tmp")
    (stale / "000000.tar.tmp").parent.mkdir(parents=True)
    (stale / "000000.tar").write_bytes(b"x" * 1000)  # the partial part shard of a dead attempt
    stale_file = job.extract_docs(1).with_name("00001.docs.jsonl.gz.77-abc.tmp")
    stale_file.parent.mkdir(parents=True)
    stale_file.write_bytes(b"partial")
    live = job.write_dir(4).with_name("00004.99-cafe.tmp")
    live.mkdir()
    (live / "000000.tar").write_bytes(b"being written")
    old = time.time() - 2 * stages.STALE_ATTEMPT_S
    for p in (stale, stale / "000000.tar", stale_file):
        os.utime(p, (old, old))
    assert stages.remove_stale_attempts(job) == 2
    assert not stale.exists() and not stale_file.exists() and live.exists()


def test_a_finished_build_leaves_no_killed_attempts_file(tmp_path):
    """A task killed and retried by Ray mid-run left `00007.docs.jsonl.gz.PID-RAND.tmp` (516 KB at
    100k pages) in the finished job: clean_work removes leftovers idle for a minute."""
    import os
    import time

    job = stages.JobDir(tmp_path)
    killed = job.extract_docs(7).with_name("00007.docs.jsonl.gz.13989-e7e25ddc.tmp")
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"partial")
    old = time.time() - 2 * stages.FINISHED_STALE_S
    os.utime(killed, (old, old))
    fresh = job.extract_docs(8).with_name("00008.docs.jsonl.gz.1-ab.tmp")
    fresh.write_bytes(b"being written")
    stages.clean_work(job)
    assert not killed.exists() and fresh.exists()
