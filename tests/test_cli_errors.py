"""A user's mistakes get one line and exit 2, never a traceback (issue "Fit the ecosystem" §3),
and the CLI's noise rules (§4): each case runs the real CLI in a subprocess."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pipelines.demo.synthetic import make_job

REPO = Path(__file__).resolve().parents[1]


def m3w(*args: str, cwd: Path, env: dict | None = None, timeout: int = 120):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def one_line_error(result, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "photo.png")
    (tmp_path / "word.txt").write_text("hello\n")
    (tmp_path / "afile").write_text("x")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.new("RGB", (8, 8)).save(pngs / "a.png")
    return tmp_path


@pytest.mark.parametrize(
    "args, needles",
    [
        (["nothere.warc.gz", "--out", "j"], ["nothere.warc.gz", "matches no file"]),
        (["empty", "--out", "j"], ["empty is an empty folder"]),
        (["photo.png", "--out", "j"], ["photo.png", "looks like a PNG image"]),
        (["word.txt", "--out", "j"], ["word.txt", "holds no http(s) URL"]),
        (["pngs", "--out", "j"], ["pngs holds no WARC/ARC, HTML or URL-list file"]),
        (["photo.png", "--out", "afile"], ["--out afile is a file"]),
    ],
)
def test_build_mistakes_are_one_line_errors(inputs, args, needles):
    one_line_error(m3w("build", *args, "--no-progress", cwd=inputs), *needles)
    assert not (inputs / "j").exists()  # nothing written for a build that cannot start


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--vision-pretrain-steps", "-1"], ["--vision-pretrain-steps must be at least 0, got -1"]),
        (["--pages", "3"], ["--pages must be at least 11, got 3"]),
        (["--heldout", "1.5"], ["--heldout is a share of the shards"]),
    ],
)
def test_demo_flags_out_of_range_are_one_line_errors_before_anything_runs(tmp_path, args, needles):
    result = m3w("demo", "--out", "d", *args, cwd=tmp_path)
    one_line_error(result, *needles)
    assert not (tmp_path / "d").exists()  # refused before the site, the build or a model


def test_debug_shows_the_traceback(inputs):
    result = m3w("--debug", "build", "photo.png", "--out", "j", cwd=inputs)
    assert result.returncode == 1 and "Traceback" in result.stderr and "InputError" in result.stderr
    result = m3w("--log-level", "DEBUG", "build", "photo.png", "--out", "j", cwd=inputs)
    assert "Traceback" in result.stderr


def test_inspect_html_into_a_folder_and_plot_without_matplotlib(tmp_path):
    job = make_job(tmp_path / "job", n_shards=1, docs_per_shard=2)
    (tmp_path / "gallery").mkdir()
    one_line_error(
        m3w("inspect", "html", str(job.root), "gallery", cwd=tmp_path), "gallery is a folder"
    )
    # matplotlib blocked as Python blocks any module: a None entry in sys.modules
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pipelines.cli import main; "
        f"raise SystemExit(main(['inspect', 'stats', {str(job.root)!r}, '--plot', 'p.png']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    one_line_error(result, "needs matplotlib", "m3w[plot]")
    assert not (tmp_path / "p.png").exists() and result.stdout == ""  # failed before reading


@pytest.mark.slow
def test_export_of_a_missing_job(tmp_path):
    one_line_error(m3w("export", "nojob", "out", cwd=tmp_path), "nojob")


def test_version_and_a_mistyped_flag_shows_the_subcommands_usage(tmp_path):
    version = m3w("--version", cwd=tmp_path)
    assert version.returncode == 0 and re.match(r"m3w \d+\.\d+", version.stdout)
    typo = m3w("inspect", "stats", "x", "--jsn", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.startswith("usage: m3w inspect stats")
    assert "--jsn (did you mean --json?)" in typo.stderr
    typo = m3w("build", "x", "--out", "j", "--seeed", "1", cwd=tmp_path)
    assert typo.stderr.startswith("usage: m3w build") and "did you mean --seed?" in typo.stderr


def test_every_flag_has_help_and_a_shown_default(tmp_path):
    import argparse

    from pipelines import export, extract
    from pipelines.build import job as build
    from pipelines.demo import run as demo
    from pipelines.inspect import command as inspect

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for module in (build, demo, export, extract, inspect):
        module.register(sub)
    parsers = dict(sub.choices)
    for action in parsers["inspect"]._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.update({f"inspect {k}": v for k, v in action.choices.items()})
    for name, p in parsers.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"m3w {name} {action.option_strings or action.dest}: no help"
            shown = p.formatter_class(prog="m3w")._get_help_string(action)
            if action.option_strings and action.default not in (None, False):
                assert "default" in shown.lower(), f"m3w {name} {action.option_strings}: {shown}"
    # one spelling for "at most N documents", the old ones kept as aliases
    assert {"--limit", "--max-docs"} <= set(parsers["build"]._option_string_actions)
    assert {"--limit", "--n"} <= set(parsers["inspect html"]._option_string_actions)
    assert {"--limit", "--max"} <= set(parsers["inspect grep"]._option_string_actions)


def test_every_reason_code_the_code_base_emits_is_registered():
    """Every `<stage>.<why>` literal in the builder, the build, the loader and extract has a
    registry entry with a meaning (`m3w inspect codes` prints them)."""
    from m3w_builder.reasons import reason

    code_re = re.compile(
        r"^(warc|arc|html|text|image|page|fetch|dedup|doc|job|input|archive|yield|data)\.[a-z0-9_]*[a-z0-9]$"  # "image.http_" is an f-string prefix
    )
    not_codes = {"job.json"}  # a file name
    files = [*(REPO / "m3w_builder").glob("*.py"), *(REPO / "pipelines").glob("*.py")]
    files = [f for f in files if f.name != "inspect_verify.py"]  # verify's problem codes differ
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if code_re.match(node.value) and node.value not in not_codes:
                    found.add(node.value)
    assert len(found) > 60
    missing = sorted(c for c in found if not reason(c).meaning)
    assert not missing, missing
    listing = m3w("inspect", "codes", cwd=REPO)
    assert listing.returncode == 0
    assert all(
        code in listing.stdout for code in ("warc.records", "image.too_small", "data.no_text")
    )


@pytest.mark.slow
def test_ctrl_c_during_a_build_says_how_to_resume(tmp_path, sigint_reaches_children):
    """SIGINT while pages are being fetched (a 127.0.0.1 server that answers slowly): exit 130,
    one line saying to rerun, no traceback; the rerun then finishes the job."""
    from httpserver import LocalServer

    page = b"<html><body><p>" + b"word " * 80 + b"</p><img src='/image.jpg'></body></html>"
    with LocalServer() as server:
        for i in range(8):
            server.add(f"/p{i}.html", page, "text/html")
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(server.url(f"/slow?s=30&p={i}") + "\n" for i in range(4)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "build", str(urls), "--out", "job",
             "--allow-private-hosts", "--num-cpus", "1", "--no-progress"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        deadline = time.time() + 120
        while server.requests.total() == 0 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert server.requests.total() > 0, "the build never reached the fetch"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "m3w build: interrupted; run the same command again to resume" in err


@pytest.mark.slow
def test_log_level_reaches_the_ray_workers_and_piped_output_is_plain(tmp_path):
    """--log-level DEBUG: the workers' per-record skip lines reach the console and the task log
    files under _work/logs/; piped output carries no ANSI colour; at the default level Ray's
    "token authentication is enabled" note is not printed for m3w's local Ray."""
    from test_report_counts import write_archive

    write_archive(tmp_path / "c.warc.gz")
    debug = m3w(
        "--log-level", "DEBUG", "build", "c.warc.gz", "--out", "job", "--num-cpus", "1",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert debug.returncode == 0, debug.stderr[-2000:]
    assert "warc.not_html c.warc.gz@" in debug.stderr  # a worker's line, on the driver's console
    assert "\x1b[" not in debug.stderr + debug.stdout
    logs = tmp_path / "job" / "_work" / "logs"
    assert "warc.not_html" in (logs / "extract-00000.log").read_text()
    quiet = m3w("build", "c.warc.gz", "--out", "job2", "--num-cpus", "1", cwd=tmp_path, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Token authentication is enabled" not in quiet.stderr
    assert "DEBUG" not in quiet.stderr


@pytest.mark.slow
def test_a_build_that_keeps_nothing_exits_0_with_one_warning_naming_its_largest_loss(tmp_path):
    """§3 "a build that kept 0 documents" (exited 0 silently): the real CLI on pages whose images
    were never archived, fetching off (`fetch.offline` in a --config YAML; the build has no flag
    for it): the job is valid, so exit 0, with one WARNING line naming the step and the reason."""
    from test_report_counts import MORE, PROSE, _page

    from pipelines.demo.crawl_archive import CrawlArchive

    page = _page(f"<p>{PROSE}</p><img src='/img/a.jpg'><p>{MORE}</p><img src='/img/b.jpg'>")
    with CrawlArchive(tmp_path / "c.warc.gz") as warc:
        for i in range(3):  # one site each: no paragraph repeats within a domain
            body = page.replace(b"/img/", f"/img/{i}/".encode())
            warc.response(f"http://site{i}.example/p.html", body, "text/html")
    (tmp_path / "offline.yaml").write_text("fetch:\n  offline: true\n")
    result = m3w(
        "build", "c.warc.gz", "--out", "job", "--config", "offline.yaml", "--near-dedup", "off",
        "--num-cpus", "1", "--no-progress", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    output = (result.stdout + result.stderr).splitlines()
    warnings = [x for x in output if "0 documents" in x]
    assert len(warnings) == 1, output
    [warning] = warnings
    assert warning.startswith("WARNING: 0 documents: the largest loss is at 'documents kept'")
    assert "image.not_archived × 6" in warning and "fetching off" in warning
