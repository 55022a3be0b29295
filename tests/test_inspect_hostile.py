"""Hostile shards (issue 14 §1): nothing `m3w inspect` reads can make it write outside its folder,
hang, or crash. Each shard here is hand-made to be valid tar where it must be (checksums hold), so
the reader meets the lie itself, not an earlier checksum failure.

The commands run as subprocesses with a timeout: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipelines.demo.synthetic import make_job
from pipelines.inspect.html import write_gallery
from pipelines.inspect.read import iter_samples, resolve_target
from pipelines.inspect.verify import verify

REPO = Path(__file__).resolve().parents[1]
KEY = "a" * 32


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytearray:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))


def _reseal(header: bytearray) -> bytes:
    """Recompute the ustar checksum after editing a header's fields."""
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header)


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    return bytes(_header(name, len(data), kind)) + data + bytes(-len(data) % 512)


def _tar(*members: bytes) -> bytes:
    return b"".join(members) + bytes(1024)


def _record(key: str = KEY, **extra) -> bytes:
    rec = {
        "schema": "m3w/1",
        "key": key,
        "url": "https://example.org/p",
        "texts": ["hello", None],
        "images": [None, {"member": "1.jpg", "src": "https://example.org/i.jpg"}],
        **extra,
    }
    return json.dumps(rec).encode()


def _job_with(tmp_path: Path, shard: bytes) -> Path:
    """A job whose first shard is `shard`, followed by a good one (the command must go on to it)."""
    good = make_job(tmp_path / "good", n_shards=1, docs_per_shard=2, seed=3)
    root = tmp_path / "job"
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "000000.tar").write_bytes(shard)
    (root / "shards" / "000001.tar").write_bytes(good.shards[0].read_bytes())
    return root


def _inspect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


# ------------------------------------------------------------------------------- writes stay inside


def test_show_images_never_writes_outside_its_folder(tmp_path):
    """Member names `../../x/.bashrc` and `/abs/.../pwn.1.jpg` were joined to DIR unchecked."""
    abs_dir = tmp_path / "abs" / "path"
    image = b"\xff\xd8\xff\xe0" + b"x" * 40
    shard = tmp_path / "evil.tar"
    shard.write_bytes(
        _tar(
            _member(f"{abs_dir}/pwn.json", _record(key="pwn")),
            _member(f"{abs_dir}/pwn.1.jpg", image),
            _member("../../x/.bashrc", b"echo owned\n"),
            _member("x" * 90 + ".0/../../../escape.jpg", image),
        )
    )
    images = tmp_path / "a" / "b" / "imgs"
    before = {p for p in tmp_path.rglob("*")}
    result = _inspect("show", str(shard), "--index", "0", "--images", str(images))
    assert result.returncode == 0, result.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in created if p.is_file() and images not in p.parents]
    assert outside == [], f"written outside {images}: {outside}"
    assert not (abs_dir / "pwn.1.jpg").exists() and not (tmp_path / "a" / "x").exists()
    assert "refused to write" in result.stderr


@pytest.mark.parametrize(
    "name",
    ["../x.jpg", "/etc/x.jpg", "a/b.jpg", "a\\b.jpg", "a\0b.jpg", ".hidden.jpg", "..", ".",
     "x" * 256 + ".jpg", "\x1b[2Jx.jpg"],
)  # fmt: skip
def test_confined_path_refuses_every_name_that_is_not_one_plain_file(tmp_path, name):
    from pipelines.inspect.show import confined_path

    assert confined_path(tmp_path, name) is None


def test_confined_path_keeps_plain_names(tmp_path):
    from pipelines.inspect.show import confined_path

    assert confined_path(tmp_path, f"{KEY}.1.jpg") == tmp_path / f"{KEY}.1.jpg"
    assert confined_path(tmp_path, "é" * 126 + ".a") is not None  # 252 bytes of UTF-8 + 2


# ---------------------------------------------------------------------------- hangs and crashes


def _pax_zero_length() -> bytes:
    """A pax extended header whose only record says its length is 0: the record parser never
    advanced (pos += 0) and every inspect command hung."""
    payload = b"0 path=foo\n"
    return _tar(
        _member("PaxHeader", payload, tarfile.XHDTYPE),
        _member(f"{KEY}.json", _record()),
    )


def _base256_size() -> bytes:
    """A GNU base-256 size field of 2^80 (checksum valid): OverflowError in read()/seek()."""
    header = _header(f"{KEY}.json", 0)
    header[124:136] = b"\x80" + (1 << 80).to_bytes(11, "big")
    return _reseal(header) + bytes(1024)


def _deep_json() -> bytes:
    """A record nested a million levels deep: RecursionError out of json.loads."""
    return _tar(_member(f"{KEY}.json", b"[" * 1_000_000 + b"]" * 1_000_000))


HOSTILE = {
    "pax_zero_length": (_pax_zero_length, "tar.bad_header"),
    "base256_2e80": (_base256_size, "tar.bad_header"),
    "deep_json": (_deep_json, "json.bad"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_shard_is_a_reported_problem_and_verify_goes_on(tmp_path, case):
    make, code = HOSTILE[case]
    root = _job_with(tmp_path, make())
    report = verify(resolve_target(root))
    codes = {p.code for p in report.problems if p.shard == "000000.tar"}
    assert code in codes, report.problems
    assert not [p for p in report.problems if p.shard == "000001.tar"]  # the next shard was read
    assert report.docs >= 2


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_every_inspect_command_returns_on_a_hostile_shard(tmp_path, case):
    make, code = HOSTILE[case]
    root = _job_with(tmp_path, make())
    verified = _inspect("verify", str(root), "--json")
    assert verified.returncode == 1, verified.stderr
    assert code in json.loads(verified.stdout)["problem_counts"]
    stats = _inspect("stats", str(root), "--json")
    assert "Traceback" not in stats.stderr and stats.returncode in (0, 1), stats.stderr
    assert json.loads(stats.stdout)["docs"] >= 2  # the good shard's documents are counted
    shown = _inspect("show", str(root), "--index", "0")
    assert "Traceback" not in shown.stderr and shown.returncode in (0, 1), shown.stderr
    gallery = _inspect("html", str(root), str(tmp_path / "g.html"))
    assert gallery.returncode == 0 and "Traceback" not in gallery.stderr, gallery.stderr


def test_a_size_larger_than_the_stream_on_a_pipe_reads_only_what_is_there():
    """No n-byte allocation up front for a member a non-seekable stream claims to hold."""
    header = _header(f"{KEY}.json", 0)
    header[124:136] = b"\x80" + (1 << 60).to_bytes(11, "big")
    data = _reseal(header) + b"{}" + bytes(510)
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(data)
    proc.stdin.close()
    try:
        with pytest.raises(Exception, match="truncated") as err:
            list(iter_samples("pipe.tar", fileobj=proc.stdout))
        assert type(err.value).__name__ == "TarFormatError"
    finally:
        proc.stdout.close()
        proc.wait()


# ------------------------------------------------------------------------------------ the gallery


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "java\tscript:x",
     "data:text/html,<script>alert(1)</script>", "vbscript:x", "http://a b", "\x01https://x"],
)  # fmt: skip
def test_only_http_urls_count_as_links(url):
    from pipelines.inspect.html import is_web_url

    assert not is_web_url(url)


def test_gallery_renders_a_javascript_url_as_text_not_as_a_link(tmp_path):
    rec = json.loads(_record())
    rec["url"] = "javascript:alert(document.domain)"
    rec["images"][1]["src"] = "javascript:alert(2)"
    shard = tmp_path / "000000.tar"
    shard.write_bytes(
        _tar(
            _member(f"{KEY}.json", json.dumps(rec).encode()),
            _member(f"{KEY}.1.jpg", b"\xff\xd8\xff"),
        )
    )
    out = tmp_path / "g.html"
    write_gallery(resolve_target(shard), out, n=5)
    page = out.read_text()
    assert "alert(document.domain)" in page  # shown, as text
    assert 'href="javascript' not in page.lower()
    assert "href" not in page.split("alert(document.domain)")[0].rsplit("<", 2)[-2]
    safe = json.loads(_record())
    shard.write_bytes(_tar(_member(f"{KEY}.json", json.dumps(safe).encode())))
    write_gallery(resolve_target(shard), out, n=5)
    assert 'href="https://example.org/p"' in out.read_text()


# A record of the wrong shape: each field of another type than docs/format.md says.
BAD_RECORDS = [
    {"texts": 5, "images": [None]},
    {"texts": {"a": 1}, "images": {"b": 2}},
    {"texts": ["a", None], "images": [None, "a string"]},
    {"texts": ["a", None],
     "images": [None, {"member": 5, "width": "x", "height": [1], "attach": {}, "alt": 3, "src": 7}]},
    {"url": 5, "texts": [3], "images": [None], "lang": {}, "lang_score": "x", "stats": [1, 2],
     "p_next": "q", "source": "s", "fetched": [1]},
    {"texts": ["a"], "images": [None], "lang_score": float("nan"),
     "stats": {"a": {"b": {"c": {"d": {"e": {"f": [1]}}}}}}},
]  # fmt: skip


@pytest.mark.parametrize("i", range(len(BAD_RECORDS)))
def test_records_of_the_wrong_shape_are_shown_not_crashes(tmp_path, i):
    """stats, show, grep and html read records through `Sample.view`; verify names the field."""
    import io as _io

    from pipelines.inspect.show import grep, show
    from pipelines.inspect.stats import compute_stats

    rec = {"schema": "m3w/1", "url": "https://example.org/p", **BAD_RECORDS[i]}
    shard = tmp_path / "000000.tar"
    shard.write_bytes(
        _tar(
            _member(f"{KEY}.json", json.dumps(rec).encode()),
            _member(f"{KEY}.1.jpg", b"\xff\xd8\xff"),
        )
    )
    target = resolve_target(shard)
    assert not verify(target).ok
    assert compute_stats(target).docs == 1
    for as_json in (False, True):
        out = _io.StringIO()
        assert show(target, index=0, out=out, as_json=as_json) and out.getvalue()
    list(grep(target, "a"))
    write_gallery(target, tmp_path / "g.html", n=5)
    assert (tmp_path / "g.html").stat().st_size > 0
