"""`m3w inspect` over generated job directories and hand-broken shards (real tars, real Pillow images)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from pipelines.demo.synthetic import make_job, rewrite_shard
from pipelines.inspect.read import TarFormatError, expand_braces, iter_samples, resolve_target
from pipelines.inspect.stats import Histogram, compute_stats
from pipelines.inspect.verify import verify


@pytest.fixture(scope="module", params=["m3w/2", "m3w/1"])
def job(tmp_path_factory, request):
    """Every inspect command reads both schemas: m3w/2 (written now) and m3w/1 (older jobs)."""
    return make_job(
        tmp_path_factory.mktemp("job"), n_shards=3, docs_per_shard=4, seed=1, schema=request.param
    )


@pytest.fixture(scope="module")
def job_v1(tmp_path_factory):
    """m3w/1 only: for the tests that break one image member of the one-file-per-image layout."""
    return make_job(
        tmp_path_factory.mktemp("job1"), n_shards=3, docs_per_shard=4, seed=1, schema="m3w/1"
    )


def _schema(job) -> str:
    with tarfile.open(job.shards[0]) as tar:
        return "m3w/2" if any(n.endswith(".images.mp") for n in tar.getnames()) else "m3w/1"


def _copy_job(job, tmp_path: Path) -> Path:
    """A private copy of the job dir, to break without touching the shared fixture."""
    root = tmp_path / "job"
    (root / "shards").mkdir(parents=True)
    for name in ("manifest.jsonl", "report.json"):
        (root / name).write_bytes((job.root / name).read_bytes())
    for shard in job.shards:
        (root / "shards" / shard.name).write_bytes(shard.read_bytes())
    return root


_rewrite = rewrite_shard


def _fix_manifest(root: Path) -> None:
    """Make manifest.jsonl agree with the (edited) shards, so only the edit itself is a finding."""
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        data = (root / "shards" / line["name"]).read_bytes()
        line["sha256"], line["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _codes(root: Path, jobs: int = 1) -> set[str]:
    return {p.code for p in verify(resolve_target(root), jobs=jobs).problems}


# ------------------------------------------------------------------------------------------ targets


def test_expand_braces_keeps_padding_and_lists():
    assert expand_braces("s/{000008..000011}.tar") == [
        "s/000008.tar",
        "s/000009.tar",
        "s/000010.tar",
        "s/000011.tar",
    ]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_targets_job_dir_pattern_and_file_agree(job):
    by_dir = resolve_target(job.root)
    assert by_dir.shards == job.shards and by_dir.manifest and by_dir.report
    by_pattern = resolve_target(str(job.root / "shards" / "{000000..000002}.tar"))
    assert by_pattern.shards == job.shards and by_pattern.manifest is None
    assert resolve_target(job.shards[1]).shards == [job.shards[1]]
    with pytest.raises(FileNotFoundError, match="000003.tar"):
        resolve_target(str(job.root / "shards" / "{000000..000003}.tar"))


def test_reader_matches_tarfile_and_keeps_one_sample(job):
    samples = list(iter_samples(job.shards[0]))
    assert [s.key for s in samples] == [d.key for d in job.docs[:4]]
    with tarfile.open(job.shards[0]) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for s, doc in zip(samples, job.docs):
        if s.stored is None:  # m3w/1: members as stored
            for suffix, data in s.members.items():
                assert expected[f"{s.key}.{suffix}"] == data
            assert s.record == json.loads(expected[f"{s.key}.json"])
        else:  # m3w/2: the m3w/1-shaped view of the record and of the one images member
            assert s.stored == json.loads(expected[f"{s.key}.json"])
            assert s.record["schema"] == "m3w/2" and s.record["texts"] == doc.texts
            by_member = {im["member"]: im for im in s.record["images"] if im}
            assert sorted(s.members) == sorted(by_member) == sorted(set(s.sizes) - {"json"})
            assert [
                s.members[m] for m in sorted(by_member, key=lambda m: int(m.split(".")[0]))
            ] == [n.data for n in doc.image_nodes]


# -------------------------------------------------------------------------------------------- stats


def test_stats_counts_match_generated_documents(job):
    stats = compute_stats(resolve_target(job.root)).to_json()
    docs = job.docs
    images = [im for d in docs for im in d.image_nodes]
    assert stats["docs"] == len(docs) == 12
    assert stats["images"] == len(images)
    assert stats["tokens"] == sum(len(t.split()) for d in docs for t in d.texts if t)
    assert stats["bytes"]["images"] == sum(len(im.data) for im in images)
    assert stats["bytes"]["shards"] == sum(p.stat().st_size for p in job.shards)
    fmt = {"jpg": "jpeg", "png": "png", "webp": "webp"}
    expect_formats = {}
    for im in images:
        expect_formats[fmt[im.ext]] = expect_formats.get(fmt[im.ext], 0) + 1
    assert stats["formats"] == expect_formats
    assert sum(stats["attach"].values()) == len(images)
    assert stats["attach"].get("following", 0) == sum(im.attach == "following" for im in images)
    assert sum(stats["languages"].values()) == 12
    assert stats["image_width"]["max"] == max(im.width for im in images)
    assert stats["images_per_doc"]["n"] == 12
    assert stats["reasons"] == dict(sorted(job.reasons.items(), key=lambda kv: -kv[1]))
    assert stats["errors"] == []


def test_histogram_quantiles_and_merge():
    a, b = Histogram(), Histogram()
    for v in range(0, 8):
        a.add(v)
    for v in (100, 1000):
        b.add(v)
    assert a.quantile(0.5) == 3 and a.lo == 0 and a.hi == 7
    a.merge(b)
    assert a.n == 10 and a.hi == 1000 and a.quantile(1.0) == 1000
    assert 96 <= a.quantile(0.9) <= 100  # 100 lies in the [96, 112) bin


def test_stats_with_a_transformers_tokenizer(job, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # a character-level tokenizer: every non-space character is one token
    vocab = {"[UNK]": 0}
    for d in job.docs:
        for t in d.texts:
            for ch in t or "":
                vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(pattern="", behavior="isolated")]
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    stats = compute_stats(resolve_target(job.root), tokenizer=str(tmp_path))
    assert stats.tokenizer == str(tmp_path)
    assert stats.tokens == sum(len(t.replace(" ", "")) for d in job.docs for t in d.texts if t)


@pytest.mark.slow
def test_cli_stats_json_and_plot(job, tmp_path, capsys):
    plot = tmp_path / "h.png"
    assert main(["inspect", "stats", str(job.root), "--json", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["docs"] == 12
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", "stats", str(job.shards[0]), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"documents\s+4\n", table) and "attachment" in table


def test_stats_reports_a_broken_shard_and_goes_on(job, tmp_path):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    stats = compute_stats(resolve_target(root))
    assert stats.docs >= 8  # the other two shards are all read
    assert len(stats.errors) == 1 and "000000.tar" in stats.errors[0]
    assert main(["inspect", "stats", str(root), "--no-progress"]) == 1


# ------------------------------------------------------------------------------------------- verify


def test_verify_clean_job_passes(job, capsys):
    report = verify(resolve_target(job.root))
    assert report.ok, [str(p) for p in report.problems]
    assert (report.shards, report.docs) == (3, 12)
    assert main(["inspect", "verify", str(job.root), "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_truncated_tar_names_shard_and_offset(job, tmp_path, capsys):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:5000])
    report = verify(resolve_target(root))
    trunc = [p for p in report.problems if p.code == "tar.truncated"]
    assert len(trunc) == 1 and trunc[0].shard == "000001.tar"
    assert trunc[0].offset is not None and trunc[0].offset <= 5000
    assert "manifest.sha256" in {p.code for p in report.problems}
    assert main(["inspect", "verify", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"000001\.tar @ byte [\d,]+", out) and "FAILED" in out
    # cut exactly at a member boundary: no end-of-archive marker
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        boundary = tar.getmembers()[2].offset
    shard.write_bytes(data[:boundary])
    with pytest.raises(TarFormatError, match="end-of-archive"):
        list(iter_samples(shard))


def test_verify_corrupt_header_is_a_tar_error(job, tmp_path):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000002.tar"
    data = bytearray(shard.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        offset = tar.getmembers()[3].offset
    data[offset + 10] ^= 0xFF  # a byte of the member name: checksum no longer matches
    shard.write_bytes(bytes(data))
    problems = verify(resolve_target(root)).problems
    corrupt = [p for p in problems if p.code == "tar.corrupt"]
    assert corrupt and corrupt[0].offset == offset and "checksum" in corrupt[0].message


def test_verify_missing_member(job_v1, tmp_path):
    job = job_v1
    root = _copy_job(job, tmp_path)
    victim = job.docs[0]
    member = f"{victim.key}.{1}.{victim.nodes[1].ext}"
    _rewrite(root / "shards" / "000000.tar", lambda n, d: [] if n == member else [(n, d)])
    _fix_manifest(root)
    report = verify(resolve_target(root))
    codes = {p.code for p in report.problems}
    assert "member.missing" in codes
    assert [p.key for p in report.problems if p.code == "member.missing"] == [victim.key]
    assert "manifest.images" in codes  # manifest still says the old image count


def test_verify_bad_json(job, tmp_path):
    root = _copy_job(job, tmp_path)
    key = job.docs[5].key
    _rewrite(
        root / "shards" / "000001.tar",
        lambda n, d: [(n, b'{"schema": "m3w/1", "url": ')] if n == f"{key}.json" else [(n, d)],
    )
    _fix_manifest(root)
    report = verify(resolve_target(root))
    bad = [p for p in report.problems if p.code == "json.bad"]
    assert [p.key for p in bad] == [key]
    # the images of that sample are now unreferenced and reported, nothing else is
    # m3w/2: without its record the sample's images member cannot be counted either
    assert {p.code for p in report.problems} <= {"json.bad", "manifest.docs", "manifest.images"}


def test_verify_schema_violations(job, tmp_path):
    root = _copy_job(job, tmp_path)
    key = job.docs[0].key

    def edit(name, data):
        if name != f"{key}.json":
            return [(name, data)]
        rec = json.loads(data)
        rec["texts"][0] = None  # position 0 now has neither text nor image
        rec["images"][1]["attach"] = "sideways"
        rec["p_next"] = 1.5
        return [(name, json.dumps(rec).encode())]

    def no_images(name, data):
        if name.startswith(job.docs[1].key):  # doc 1 loses its images, member and record alike
            if not name.endswith(".json"):
                return []
            rec = json.loads(data)
            rec["images"] = [None] * len(rec["images"])
            rec["texts"] = [t if t is not None else "x" for t in rec["texts"]]
            return [(name, json.dumps(rec).encode())]
        return [(name, data)]

    _rewrite(root / "shards" / "000000.tar", edit)
    _rewrite(root / "shards" / "000000.tar", no_images)
    _fix_manifest(root)
    v2 = {"member.missing"} if job.docs and _schema(job) == "m3w/2" else set()  # images.mp gone
    assert _codes(root) == {
        "schema.position",
        "schema.attach",
        "schema.p_next",
        "schema.no_images",
        "manifest.images",
        *v2,
    }


def test_verify_dot_in_key(job, tmp_path):
    root = _copy_job(job, tmp_path)
    key = job.docs[2].key

    def edit(name, data):
        if name.startswith(key):  # what a writer without a key check would do with "page.1"
            return [(name.replace(key, "page.1", 1), data)]
        return [(name, data)]

    _rewrite(root / "shards" / "000000.tar", edit)
    _fix_manifest(root)
    report = verify(resolve_target(root))
    invalid = [p for p in report.problems if p.code == "key.invalid"]
    assert invalid and invalid[0].key == "page" and "dot" in invalid[0].message
    assert "json.missing" in {p.code for p in report.problems}


def test_verify_stray_member_and_undecodable_image(job_v1, tmp_path):
    job = job_v1
    root = _copy_job(job, tmp_path)
    doc = job.docs[4]
    image_member = f"{doc.key}.1.{doc.nodes[1].ext}"

    def edit(name, data):
        if name == f"{doc.key}.json":
            return [(name, data), (f"{doc.key}.9.txt", b"leftover")]
        if name == image_member:
            return [(name, data[: len(data) // 3])]  # a cut-off image
        return [(name, data)]

    _rewrite(root / "shards" / "000001.tar", edit)
    _fix_manifest(root)
    problems = verify(resolve_target(root)).problems
    assert {(p.code, p.key) for p in problems} == {
        ("member.stray", doc.key),
        ("image.sha256", doc.key),
        ("image.undecodable", doc.key),
        ("manifest.images", None),
    }
    # header-only decoding does not see the cut-off image body, by design
    fast = verify(resolve_target(root), decode=False).problems
    assert {p.code for p in fast} == {"member.stray", "image.sha256", "manifest.images"}


def test_verify_wrong_format_for_extension(job_v1, tmp_path):
    job = job_v1
    root = _copy_job(job, tmp_path)
    doc = next(d for d in job.docs if d.nodes[1].ext == "jpg")
    png = next(im.data for d in job.docs for im in d.image_nodes if im.ext == "png")
    member = f"{doc.key}.1.jpg"

    def edit(name, data):
        if name == member:
            return [(name, png)]
        if name == f"{doc.key}.json":  # keep the record's sha256 right: only the format is wrong
            rec = json.loads(data)
            rec["images"][1]["sha256"] = hashlib.sha256(png).hexdigest()
            return [(name, json.dumps(rec).encode())]
        return [(name, data)]

    _rewrite(root / "shards" / job.shard_of[doc.key], edit)
    _fix_manifest(root)
    problems = verify(resolve_target(root)).problems
    assert [(p.code, "PNG" in p.message) for p in problems] == [("image.undecodable", True)]


def test_verify_image_bytes_against_recorded_sha256(job_v1, tmp_path):
    job = job_v1
    root = _copy_job(job, tmp_path)
    doc = job.docs[9]
    member = f"{doc.key}.1.{doc.nodes[1].ext}"

    def flip(name, data):
        if name != member:
            return [(name, data)]
        tail = bytearray(data)
        tail[-3] ^= 0x01  # one bit near the end: the image may still decode
        return [(name, bytes(tail))]

    _rewrite(root / "shards" / job.shard_of[doc.key], flip)
    _fix_manifest(root)
    problems = verify(resolve_target(root)).problems
    assert ("image.sha256", doc.key) in {(p.code, p.key) for p in problems}
    assert {p.code for p in problems} <= {"image.sha256", "image.undecodable"}


def test_verify_manifest_sha_mismatch_and_unlisted(job, tmp_path, capsys):
    root = _copy_job(job, tmp_path)
    lines = (root / "manifest.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["sha256"] = "0" * 64
    lines[0] = json.dumps(first)
    (root / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n")  # drop shard 2's line
    problems = verify(resolve_target(root)).problems
    assert {(p.code, p.shard) for p in problems} == {
        ("manifest.sha256", "000000.tar"),
        ("manifest.unlisted", "000002.tar"),
    }
    assert main(["inspect", "verify", str(root), "--json", "--no-progress"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problem_counts"] == {
        "manifest.sha256": 1,
        "manifest.unlisted": 1,
    }


def test_verify_trailing_garbage_and_duplicate_key(job, tmp_path):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000002.tar"
    shard.write_bytes(shard.read_bytes() + b"GARBAGE")
    dup = root / "shards" / "000003.tar"
    dup.write_bytes((root / "shards" / "000000.tar").read_bytes())
    codes = _codes(root)
    assert {"tar.trailing", "key.duplicate", "manifest.sha256", "manifest.unlisted"} <= codes


@pytest.mark.slow
def test_verify_in_parallel_gives_the_same_report(job, tmp_path):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000001.tar"
    shard.write_bytes(shard.read_bytes()[:7000])
    serial = verify(resolve_target(root), jobs=1)
    parallel = verify(resolve_target(root), jobs=2)
    assert [str(p) for p in serial.problems] == [str(p) for p in parallel.problems]
    assert not serial.ok


# ------------------------------------------------------------------------------------- show / grep


def test_show_by_index_and_key_in_reading_order(job, tmp_path, capsys):
    doc = job.docs[6]
    assert main(["inspect", "show", str(job.root), "--index", "6", "--width", "60"]) == 0
    out = capsys.readouterr().out
    assert doc.key in out and doc.url in out and job.shard_of[doc.key] in out
    body = out.split("─" * 60, 1)[1]
    assert max(len(line) for line in body.splitlines()) <= 60
    flat = " ".join(body.split())
    # every chunk in order, each image as a numbered placeholder
    pos = 0
    n = 0
    for node in doc.nodes:
        if node.__class__.__name__ == "TextNode":
            needle = " ".join(node.text.split())
        else:
            n += 1
            arrow = "→ following" if node.attach == "following" else "← preceding"
            needle = (
                f'[image {n} · {node.width}×{node.height} · attached {arrow} · alt="{node.alt}"]'
            )
        found = flat.find(needle, pos)
        assert found >= 0, needle
        pos = found + len(needle)
    assert main(["inspect", "show", str(job.root), doc.key, "--images", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(
        f"{doc.key}.{i}.{n.ext}"
        for i, n in enumerate(doc.nodes)
        if n.__class__.__name__ == "ImageNode"
    )
    assert (tmp_path / written[0]).read_bytes() in {im.data for im in doc.image_nodes}


def test_show_json_prints_the_record(job, capsys):
    doc = job.docs[1]
    assert main(["inspect", "show", str(job.root), doc.key, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["url"] == doc.url and record["texts"] == doc.texts
    assert [im["attach"] for im in record["images"] if im] == [n.attach for n in doc.image_nodes]


def test_show_unknown_key_fails(job, capsys):
    assert main(["inspect", "show", str(job.root), "f" * 32]) == 1
    assert "no document" in capsys.readouterr().err
    assert main(["inspect", "show", str(job.root)]) == 2


def test_grep_url_and_text(job, capsys):
    assert main(["inspect", "grep", str(job.root), r"s2/page[13]$"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {line.split()[0] for line in lines if not line.startswith(" ")}
    assert keys == {d.key for d in job.docs if re.search(r"s2/page[13]$", d.url)}
    word = job.docs[3].texts[0].split()[2]
    assert main(["inspect", "grep", str(job.root), rf"\b{word}\b", "--max", "2"]) == 0
    out = capsys.readouterr().out
    assert f"»{word}«" in out.lower() or f"»{word.capitalize()}«" in out
    assert len([x for x in out.splitlines() if not x.startswith(" ")]) <= 2
    assert main(["inspect", "grep", str(job.root), "no such words anywhere"]) == 1


# ----------------------------------------------------------------------------------------- memory


def test_streaming_memory_is_bounded_by_one_sample_not_the_shard(tmp_path):
    """30 MB of image bytes: stats holds 16-byte heads only; a full read holds ≤ 2 samples."""
    import os
    import tracemalloc

    from m3w_builder.document import Document, ImageNode, TextNode
    from m3w_builder.shards import ShardWriter

    big = 3_000_000
    with ShardWriter(tmp_path / "shards" / "000000.tar") as writer:
        for i in range(10):
            blob = b"\x89PNG\r\n\x1a\n" + os.urandom(big)
            image = ImageNode(src="x", data=blob, ext="png", width=9, height=9, attach="following")
            writer.write(Document(url=f"https://big/{i}", nodes=[TextNode("a b"), image]))
    target = resolve_target(tmp_path / "shards" / "000000.tar")
    tracemalloc.start()
    try:
        stats = compute_stats(target)
        stats_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        n = sum(1 for _ in iter_samples(target.shards[0], images=True))
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.docs == n == 10 and stats.formats == {"png": 10}
    # the 1 MiB file buffer plus small change; one image alone is 3 MB, the shard 30 MB
    assert stats_peak < 2_000_000, stats_peak
    # m3w/2: while a sample's images member is unpacked it exists twice, beside the sample held
    assert big < read_peak < 3 * big + 2_000_000, read_peak


def test_show_and_grep_read_past_a_broken_shard(job, tmp_path, capsys):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000001.tar"
    shard.write_bytes(shard.read_bytes()[:2500])
    last = job.docs[-1]
    assert main(["inspect", "show", str(root), last.key]) == 0
    captured = capsys.readouterr()
    assert last.url in captured.out and "000001.tar" in captured.err
    assert main(["inspect", "grep", str(root), "s2/page"]) == 2  # matches, but a shard is broken
    captured = capsys.readouterr()
    assert captured.out.count("000002.tar  https://example.org/s2/page") == 4
    assert "truncated" in captured.err


# ------------------------------------------------------------------------------ real build output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from pipelines.demo.synthetic import build_sample_job

    return build_sample_job(tmp_path_factory.mktemp("built"))


@pytest.mark.slow
def test_inspect_agrees_with_a_real_build(built, tmp_path, capsys):
    """Shards, manifest and report.json as `m3w build` writes them, read by every subcommand."""
    root, report = built
    assert report["documents"] > 0 and report["shards"] >= 2
    result = verify(resolve_target(root), jobs=1)
    assert result.ok, [str(p) for p in result.problems]
    assert (result.docs, result.shards) == (report["documents"], report["shards"])
    stats = compute_stats(resolve_target(root)).to_json()
    assert (stats["docs"], stats["images"]) == (report["documents"], report["images"])
    assert stats["bytes"]["shards"] == report["bytes"]
    assert stats["reasons"] == {k: v for k, v in report["counts"].items() if v}
    assert stats["languages"] == report["languages"]
    assert main(["inspect", "show", str(root), "--index", str(report["documents"] - 1)]) == 0
    assert "[image 1 · " in capsys.readouterr().out
    out = tmp_path / "g.html"
    assert main(["inspect", "html", str(root), str(out), "--no-progress"]) == 0
    page = out.read_text()
    assert page.count('<article class="doc"') == report["documents"]
    assert page.count("<img ") == report["images"]


def test_command_line_errors_exit_2_with_a_message(job, tmp_path, capsys):
    assert main(["inspect", "grep", str(job.root), "(unclosed"]) == 2
    assert "bad pattern" in capsys.readouterr().err
    assert main(["inspect", "stats", str(job.root), "--tokenizer", str(tmp_path / "none")]) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err
    assert main(["inspect", "verify", str(tmp_path / "shards" / "{000000..000001}.tar")]) == 2
    assert "no such shard" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- tar reader


def test_reader_reads_only_the_images_asked_for(job):
    wanted = job.docs[2].key
    samples = list(iter_samples(job.shards[0], images=lambda m: m.startswith(wanted)))
    for s in samples:
        full = s.key == wanted
        assert all((d is not None) == full for d in s.members.values()), s.key
        assert all(s.sizes[k] > 0 for k in s.members)  # sizes are known either way


def test_reader_handles_pax_gnu_long_names_and_webdataset_writer(tmp_path):
    import webdataset as wds

    long_dir = "d" * 120  # longer than ustar's 100-char name field
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"long{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, data in ((f"{long_dir}/k.json", b'{"a": 1}'), (f"{long_dir}/k.0.png", b"x")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        [s] = list(iter_samples(path))
        assert s.key == long_dir + "/k" and s.record == {"a": 1} and s.members == {"0.png": b"x"}
    path = tmp_path / "wds.tar"
    with wds.TarWriter(str(path)) as sink:  # mtimes, pax-capable default format, user names
        sink.write(
            {"__key__": "a" * 32, "json": {"schema": "m3w/1"}, "0.png": b"\x89PNG\r\n\x1a\n"}
        )
    [s] = list(iter_samples(path))
    assert s.key == "a" * 32 and s.record == {"schema": "m3w/1"}
    assert s.members["0.png"].startswith(b"\x89PNG")


def test_reader_on_a_pipe_detects_truncation(job):
    """A non-seekable stream (e.g. `curl ... |`): members are read and discarded, not seeked."""
    import subprocess

    data = job.shards[1].read_bytes()
    for payload, ok in ((data, True), (data[:6000], False)):
        proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(payload)
        proc.stdin.close()
        try:
            keys = [s.key for s in iter_samples("pipe.tar", images=16, fileobj=proc.stdout)]
            assert ok and keys == [d.key for d in job.docs[4:8]]
        except TarFormatError as e:
            assert not ok and e.shard == "pipe.tar" and e.offset <= 6000
        finally:
            proc.stdout.close()
            proc.wait()


def test_verify_non_file_entries_and_duplicate_members(job, tmp_path):
    root = _copy_job(job, tmp_path)
    shard = root / "shards" / "000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = job.docs[0].key
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as out:
        for i, (name, data) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
            if i == 1:  # after the first image of doc 0: the same image again, and a symlink
                out.addfile(info, io.BytesIO(data))
                link = tarfile.TarInfo(f"{key}.7.jpg")
                link.type, link.linkname = tarfile.SYMTYPE, name
                out.addfile(link)
    _fix_manifest(root)
    problems = verify(resolve_target(root)).problems
    assert sorted((p.code, p.key) for p in problems) == [
        ("member.duplicate", key),
        ("member.not_file", key),
    ]


@settings(
    max_examples=int(os.environ.get("M3W_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cut=st.integers(min_value=0, max_value=40_000),
    flips=st.lists(st.tuples(st.integers(0, 40_000), st.integers(1, 255)), max_size=4),
)
def test_any_damage_is_reported_never_raised(job, tmp_path_factory, cut, flips):
    """Truncation anywhere and random byte flips: verify and stats report, they never crash; with the
    job's manifest, every change is caught (at least by its sha256), and a cut always names the shard."""
    original = job.shards[0].read_bytes()
    data = bytearray(original)
    for pos, xor in flips:
        if pos < len(data):
            data[pos] ^= xor
    damaged = bytes(data[:cut]) if cut < len(data) else bytes(data)
    root = _copy_job(job, tmp_path_factory.mktemp("damaged"))
    (root / "shards" / "000000.tar").write_bytes(damaged)
    report = verify(resolve_target(root))
    stats = compute_stats(resolve_target(root))
    assert report.ok == (damaged == original)
    if cut < _end_marker_end(job.shards[0]):  # beyond it only the record padding is cut
        assert any(p.code.startswith("tar.") and p.shard == "000000.tar" for p in report.problems)
        assert any("000000.tar" in e for e in stats.errors)


def _end_marker_end(path: Path) -> int:
    """Offset just past the two zero blocks that end the archive (the rest is record padding)."""
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + last.size + (-last.size % 512) + 1024


# ------------------------------------------------------------------------------------ html layout


def _record(*nodes: str) -> dict:
    """'t' a text, 'f'/'p' an image attached following/preceding."""
    texts = [f"text {i}" if n == "t" else None for i, n in enumerate(nodes)]
    images = [
        None
        if n == "t"
        else {"member": f"{i}.jpg", "attach": {"f": "following", "p": "preceding"}[n]}
        for i, n in enumerate(nodes)
    ]
    return {"texts": texts, "images": images}


def test_layout_joins_each_image_to_the_chunk_that_sees_it():
    from pipelines.inspect.html import assign_columns, layout

    # per-document draw, following: image k with the text after it; one gutter column suffices
    rows, spans = layout(_record("t", "f", "t", "t", "f", "t"))
    assert spans == {1: (1, 3), 2: (4, 5)} and set(assign_columns(spans).values()) == {0}
    # preceding: image k with the text before it (chunk k-1)
    rows, spans = layout(_record("t", "t", "p", "t", "p"))
    assert spans == {1: (0, 2), 2: (3, 4)}
    # per-image draw (DESIGN §4): the chunk between a following and a preceding image sees both,
    # so the two brackets overlap on it and need two columns
    rows, spans = layout(_record("t", "f", "t", "p", "t"))
    assert spans == {1: (1, 2), 2: (2, 3)}
    assert sorted(assign_columns(spans).values()) == [0, 1]
    # an image whose chunk has no text: its bracket is the image row alone
    rows, spans = layout(_record("p", "t", "f", "f", "t"))
    assert spans == {1: (0, 0), 2: (2, 2), 3: (3, 4)}


def test_gallery_card_says_when_no_text_sees_an_image():
    from pipelines.inspect.html import document_card
    from pipelines.inspect.read import Sample

    record = {"url": "https://x/", **_record("p", "t", "f")}
    html = document_card(Sample(shard="s.tar", key="k" * 32, offset=0, record=record), 0)
    # image 1 is preceding with nothing before it; image 2 following with nothing after it; the
    # text between them belongs to neither's chunk (DESIGN §4), so it sees no image
    assert html.count("seen by no text token") == 2
    assert html.count('data-sees="2"') == 0 and html.count("sees no image") == 1


# ------------------------------------------------------------------------------ remote (fsspec)


def test_remote_job_over_fsspec_reads_like_the_local_one(job, capsys):
    """A job dir behind an fsspec URL (memory:// here; s3://, gs://, https:// alike)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/inspect-{job.root.name}"
    for path in [*job.shards, job.root / "manifest.jsonl", job.root / "report.json"]:
        fs.pipe(f"{base}/{path.relative_to(job.root).as_posix()}", path.read_bytes())
    remote = resolve_target(f"memory://{base}")
    assert [Path(str(s)).name for s in remote.shards] == [p.name for p in job.shards]
    assert remote.manifest and remote.report
    local_stats = compute_stats(resolve_target(job.root)).to_json()
    assert compute_stats(remote).to_json() == local_stats
    assert verify(remote).ok
    pattern = resolve_target(f"memory://{base}/shards/{{000001..000002}}.tar")
    assert compute_stats(pattern).docs == 8
    # a damaged remote shard is found and named like a local one
    fs.pipe(f"{base}/shards/000001.tar", job.shards[1].read_bytes()[:4000])
    problems = verify(resolve_target(f"memory://{base}")).problems
    assert ("tar.truncated", "000001.tar") in {(p.code, p.shard) for p in problems}
    assert main(["inspect", "show", f"memory://{base}", job.docs[-1].key]) == 0
    assert job.docs[-1].url in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"000003\.tar$"):
        resolve_target(f"memory://{base}/shards/{{000002..000003}}.tar")
    fs.rm(base, recursive=True)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_decode_check_catches_cut_and_corrupt_bytes(fmt):
    """The verify decode (JPEG at 1/8 scale) still reads every byte of image data."""
    import random

    from PIL import Image

    from pipelines.inspect.verify import decode_problem

    rng = random.Random(0)
    img = Image.frombytes("RGB", (40, 30), rng.randbytes(40 * 30 * 3)).resize((320, 240))
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    data = buf.getvalue()
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    assert decode_problem(data, ext) is None
    assert "not decodable" in decode_problem(data[: len(data) * 3 // 4], ext)
    if fmt != "WEBP":  # Pillow's WebP plugin decodes on open, so even header-only catches that
        assert (
            decode_problem(data[: len(data) * 3 // 4], ext, full=False) is None
        )  # header-only misses it


# ------------------------------------------------------------------------------------ m3w/2 members


@pytest.fixture(scope="module")
def job_v2(tmp_path_factory):
    return make_job(tmp_path_factory.mktemp("job2"), n_shards=2, docs_per_shard=3, seed=4)


def _edit_packed(job, tmp_path, change) -> Path:
    """A copy of the m3w/2 job whose first document's images member is `change(list) -> bytes`."""
    import msgpack

    root = _copy_job(job, tmp_path)
    key = job.docs[0].key

    def edit(name, data):
        if name == f"{key}.images.mp":
            return [(name, change(msgpack.unpackb(data)))]
        return [(name, data)]

    _rewrite(root / "shards" / "000000.tar", edit)
    _fix_manifest(root)
    return root


def test_verify_v2_flipped_bit_inside_the_images_member(job_v2, tmp_path):
    import msgpack

    def flip(blobs):
        pos = next(i for i, b in enumerate(blobs) if b is not None)
        blob = bytearray(blobs[pos])
        blob[-3] ^= 0x01
        blobs[pos] = bytes(blob)
        return msgpack.packb(blobs)

    problems = verify(resolve_target(_edit_packed(job_v2, tmp_path, flip))).problems
    assert ("image.sha256", job_v2.docs[0].key) in {(p.code, p.key) for p in problems}


def test_verify_v2_images_member_that_is_not_the_array_it_should_be(job_v2, tmp_path):
    import msgpack

    short = _edit_packed(job_v2, tmp_path / "a", lambda blobs: msgpack.packb(blobs[:-1]))
    codes = {p.code for p in verify(resolve_target(short)).problems}
    assert "member.images" in codes
    garbage = _edit_packed(job_v2, tmp_path / "b", lambda blobs: b"\xffnot msgpack")
    problems = verify(resolve_target(garbage)).problems
    assert "member.images" in {p.code for p in problems}
    # stats walks the member for 16-byte heads and says the same without crashing
    stats = compute_stats(resolve_target(garbage))
    assert stats.docs == len(job_v2.docs)


def test_verify_v2_one_type_per_field(job_v2, tmp_path):
    """A null where m3w/2 promises a string is what breaks `datasets`' schema inference."""
    root = _copy_job(job_v2, tmp_path)
    key = job_v2.docs[0].key

    def edit(name, data):
        if name != f"{key}.json":
            return [(name, data)]
        rec = json.loads(data)
        rec["fetched"] = None
        rec["images"][1]["src_page"] = None
        return [(name, json.dumps(rec).encode())]

    _rewrite(root / "shards" / "000000.tar", edit)
    _fix_manifest(root)
    problems = [p for p in verify(resolve_target(root)).problems if p.code == "schema.type"]
    assert len(problems) == 2 and "'fetched'" in problems[0].message
    assert "src_page" in problems[1].message
    assert {p.code for p in verify(resolve_target(job_v2.root)).problems} == set()
