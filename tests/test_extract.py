"""page_to_document on bad inputs (each a counted Skip or a clean Document, in bounded time) and the
`m3w extract` CLI on generated HTML and a corpus WARC."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3w_builder.config import BuildConfig
from m3w_builder.document import RawPage
from m3w_builder.extract import page_to_document
from m3w_builder.reasons import Skip
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
URL = "https://example.org/a/page.html"
SENTENCES = [
    "The committee met on Tuesday to discuss the future of the harbour and its old lighthouse.",
    "Fishermen said that the light had guided their boats home for more than a century.",
    "A local historian brought photographs showing the tower before the storm of 1953.",
    "Engineers estimated that the repairs would take two summers and cost about a million.",
    "Children from the village school painted posters asking the council to save it.",
    "The mayor promised to look for money from the region and from private donors.",
    "Several residents offered to volunteer on weekends once the scaffolding was up.",
    "The meeting ended late, with a vote to begin the work before the winter arrives.",
]
ARTICLE = "".join(f"<p>{s}</p>" for s in SENTENCES)
GOOD_PAGE = (
    "<html><head><title>t</title></head><body><nav><a href='/'>Home</a></nav>"
    f"<article><h1>Harbour news</h1><img src='/img/lighthouse.jpg' alt='The lighthouse' "
    f"width='800' height='600'>{ARTICLE}</article></body></html>"
)


def config(**sources) -> BuildConfig:
    cfg = BuildConfig.for_profile("m3w")
    for name, value in sources.items():
        setattr(cfg.sources, name, value)
    return cfg


def skip_code(body: bytes, cfg: BuildConfig | None = None, **kw) -> str:
    with pytest.raises(Skip) as info:
        page_to_document(
            RawPage(URL, body, source_file="t.warc", source_offset=7), cfg or config(), **kw
        )
    assert "t.warc@7" in info.value.detail  # every skip names its input and offset
    return info.value.code


def timed(fn, *args, **kw):
    start = time.perf_counter()
    try:
        return fn(*args, **kw), time.perf_counter() - start
    except Skip as skip:
        return skip, time.perf_counter() - start


def test_good_page_becomes_a_filtered_document() -> None:
    doc = page_to_document(
        RawPage(
            URL,
            GOOD_PAGE.encode(),
            {"Content-Type": "text/html; charset=utf-8"},
            "f.warc",
            42,
            "2024-01-01T00:00:00Z",
        ),  # fmt: skip
        config(),
    )
    assert doc.image_nodes[0].src == "https://example.org/img/lighthouse.jpg"
    assert doc.text_nodes[0].text == "Harbour news"
    assert doc.lang == "en"
    assert (doc.source_file, doc.source_offset, doc.fetched) == (
        "f.warc",
        42,
        "2024-01-01T00:00:00Z",
    )
    assert doc.stats["html_bytes"] == len(GOOD_PAGE)


def test_empty_bodies() -> None:
    assert skip_code(b"") == "html.no_content"
    assert skip_code(b" \r\n\t ") == "html.no_content"
    assert skip_code(b"<html><body><div>  </div></body></html>") == "html.no_content"


def test_binary_junk() -> None:
    rng = random.Random(0)
    junk = bytes(rng.randrange(256) for _ in range(200_000))
    result, seconds = timed(page_to_document, RawPage(URL, junk, source_file="t.warc"), config())
    assert isinstance(result, Skip) and result.code == "html.not_html"
    assert seconds < 5
    png = b"\x89PNG\r\n\x1a\n" + junk[:1000]
    assert skip_code(png) == "html.not_html"


def test_fifty_megabyte_page_is_refused_before_decoding() -> None:
    body = b"<html><body>" + b"<p>word word word</p>" * (50_000_000 // 21) + b"</body></html>"
    result, seconds = timed(page_to_document, RawPage(URL, body), config())
    assert isinstance(result, Skip) and result.code == "html.too_large"
    assert seconds < 1


def test_parse_deadline_is_checked_while_feeding_a_large_page() -> None:
    """With the size cap lifted, a 50 MB page still stops at the parse deadline: the parser is fed
    in chunks and the deadline is checked between them."""
    body = b"<html><body>" + b"<p>word word word</p>" * (50_000_000 // 21) + b"</body></html>"
    cfg = config(max_html_bytes=100_000_000, parse_timeout_s=0.05)
    result, seconds = timed(page_to_document, RawPage(URL, body), cfg)
    assert isinstance(result, Skip) and result.code == "html.parse_timeout"
    assert seconds < 10  # decode + a couple of 1 MiB chunks, not the full parse and DOM passes


def test_hundred_thousand_deep_nesting_is_too_deep() -> None:
    body = b"<html><body>" + b"<div>" * 100_000 + b"deep text" + b"</div>" * 100_000
    result, seconds = timed(page_to_document, RawPage(URL, body, source_file="t.warc"), config())
    assert isinstance(result, Skip) and result.code == "html.too_deep"
    assert seconds < 5


def test_moderate_nesting_is_a_clean_document() -> None:
    body = ("<html><body>" + "<div>" * 500 + "<p>deep text here</p>" + "</div>" * 500).encode()
    doc = page_to_document(RawPage(URL, body), config(), filter_text=False)
    assert doc.texts == ["deep text here"]


def test_invalid_byte_sequences_are_replaced_not_fatal() -> None:
    body = GOOD_PAGE.replace("Harbour news", "Harbour \xff\xfe news").encode("latin-1", "replace")
    body = body.replace(b"\xff\xfe", b"\xff\xfe\xc3\x28\xed\xa0\x80")  # invalid UTF-8 sequences
    doc = page_to_document(RawPage(URL, body, {"Content-Type": "text/html; charset=utf-8"}), config(),
                           filter_text=False)  # fmt: skip
    assert doc.text_nodes[0].text.startswith("Harbour")
    assert doc.image_nodes


def test_unclosed_tags_still_extract() -> None:
    body = b"<html><body><div><p>first para<p>second <b>bold <i>italic<table><tr><td>cell"
    doc = page_to_document(RawPage(URL, body), config(), filter_text=False)
    assert doc.texts == ["first para", "second bold italic", "cell"]


def test_text_filter_drop_is_a_skip_and_no_filter_keeps_the_page() -> None:
    body = b"<html><body><p>Too short.</p><img src='/a.jpg'></body></html>"
    assert skip_code(body).startswith("text.")
    doc = page_to_document(RawPage(URL, body), config(), filter_text=False)
    assert doc.texts == ["Too short.", None]


def test_unexpected_errors_become_parse_error_skips() -> None:
    cfg = config()
    cfg.dom.url_block_rules = None  # a broken config reaches deep into the DOM step
    code = skip_code(GOOD_PAGE.encode(), cfg)
    assert code == "html.parse_error"


def test_legacy_charset_from_meta() -> None:
    html = "<html><head><meta charset='shift_jis'></head><body><p>日本語のページです。</p></body></html>"
    doc = page_to_document(RawPage(URL, html.encode("shift_jis")), config(), filter_text=False)
    assert doc.texts == ["日本語のページです。"]


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv: str) -> str:
    assert main(["extract", *argv]) == 0
    return capsys.readouterr().out


def test_cli_html_file_prints_one_document(tmp_path, capsys) -> None:
    page = tmp_path / "page.html"
    page.write_text(GOOD_PAGE)
    out = json.loads(run_cli(capsys, str(page), "--url", URL))
    assert set(out) >= {"url", "texts", "images", "lang", "lang_score", "drops"}
    assert out["url"] == URL
    image = next(i for i in out["images"] if i)
    assert image == {
        "src": "https://example.org/img/lighthouse.jpg",
        "alt": "The lighthouse",
        "width": 800,
        "height": 600,
    }
    assert len(out["texts"]) == len(out["images"])
    assert out["lang"] == "en"


@pytest.mark.slow
def test_cli_dropped_page_says_why(tmp_path, capsys) -> None:
    page = tmp_path / "short.html.gz"
    page.write_bytes(gzip.compress(b"<html><body><p>Tiny.</p></body></html>"))
    out = json.loads(run_cli(capsys, str(page)))
    assert out["dropped"].startswith("text.")
    assert out["url"] == page.resolve().as_uri()
    kept = json.loads(run_cli(capsys, str(page), "--no-filter", "--profile", "obelics"))
    assert kept["texts"] == ["Tiny."]


def test_cli_warc_prints_one_line_per_page(corpus, capsys) -> None:
    warc = corpus / "warc" / "aut" / "issue-493.warc"
    lines = [json.loads(line) for line in run_cli(capsys, str(warc), "--no-filter").splitlines()]
    assert len(lines) >= 3  # issue-493: 5 HTML responses (the reader skips error statuses)
    assert all(line["url"].startswith("http") for line in lines)
    kept = [line for line in lines if "dropped" not in line]
    assert kept and sum(1 for line in kept for i in line["images"] if i) > 0


def test_console_entry_point_runs_as_a_subprocess(tmp_path) -> None:
    page = tmp_path / "p.html"
    page.write_text(GOOD_PAGE)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "extract", str(page), "--no-filter"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(proc.stdout)["texts"][0] == "Harbour news"
