"""The build's progress bars (issue "Fit the ecosystem" §4: "the progress bar's total changes
mid-run (3/6 → 4/4); give it a stable total per phase"): a build with progress on, its bars read
back from what tqdm printed. Each phase has one bar whose total is set once, at its start, and that
ends exactly at that total; a rerun (every task read back from its marker) shows the same bars."""

from __future__ import annotations

import re
from pathlib import Path

from httpserver import drawn_image
from test_report_counts import MORE, PROSE, _page

from m3w_builder.config import BuildConfig
from pipelines.build.job import JobOptions, run_build
from pipelines.demo.crawl_archive import CrawlArchive

# "extract:  33%|███▎      | 1/3 [00:00<00:00, 4.2task/s, pages=1, ...]"
BAR = re.compile(r"(\w+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) ")


def _bars(stderr: str) -> list[tuple[str, int, int]]:
    """Every state tqdm printed, in order: (phase, done, total)."""
    return [(m[1], int(m[2]), int(m[3])) for m in BAR.finditer(stderr)]


def _crawl(folder: Path) -> list[str]:
    """Three archives (three extract tasks), each with one page that keeps its image."""
    paths = []
    for i in range(3):
        path = folder / f"site{i}.warc.gz"
        page = _page(f"<p>Site {i}. {PROSE}</p><img src='/img/p.jpg' alt='p'><p>{MORE} ({i})</p>")
        with CrawlArchive(path) as warc:
            warc.response(f"http://site{i}.example/p.html", page, "text/html")
            warc.response(
                f"http://site{i}.example/img/p.jpg", drawn_image(200, 150, seed=i), "image/jpeg"
            )
        paths.append(str(path))
    return paths


def _check(bars: list[tuple[str, int, int]], report: dict) -> None:
    expected = {"extract": report["units"], "write": report["write_groups"]}
    assert expected == {"extract": 3, "write": 2}  # two different totals: one bar cannot pass
    assert [phase for phase, _, _ in bars] == sorted(
        (p for p, _, _ in bars), key=list(expected).index
    )  # extract's bar is done before write's starts  # fmt: skip
    for phase, total in expected.items():
        states = [(done, t) for p, done, t in bars if p == phase]
        assert states, (phase, bars)
        assert {t for _, t in states} == {total}, (phase, states)  # set once, never changed
        assert states[-1][0] == total and all(d <= total for d, _ in states), (phase, states)
    assert {p for p, _, _ in bars} == set(expected)


def test_each_phase_has_one_bar_whose_total_never_changes(tmp_path: Path, capsys):
    inputs = _crawl(tmp_path)
    config = BuildConfig.for_profile("m3w")
    config.fetch.offline = True
    config.dedup.near_dedup = False
    config.shards.docs_per_shard = 2  # 3 documents: 2 write tasks beside 3 extract tasks
    options = JobOptions(out=str(tmp_path / "job"), progress=True)
    capsys.readouterr()
    report = run_build(inputs, config, options, use_ray=False)
    assert report["documents"] == 3
    _check(_bars(capsys.readouterr().err), report)
    again = run_build(inputs, config, options, use_ray=False)  # every task read back
    assert again["last_run"]["tasks_already_done"] == 5
    _check(_bars(capsys.readouterr().err), again)
