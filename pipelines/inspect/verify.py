"""`m3w inspect verify`: is every shard exactly what DESIGN §3 promises?

Checked per shard, in one streaming read (the file's sha256 is computed from the same bytes):
- tar integrity: header checksums, no truncated header or payload, the two-zero-block end marker, nothing
  but zero padding after it (TarFormatError names the shard and the byte offset);
- each sample: a parsable `{key}.json` of schema m3w/2 (or m3w/1) whose lists obey the one-non-null rule, a key of 32
  hex chars (a dot would split the sample in webdataset, docs/format.md), every referenced image member
  present, matching its recorded sha256 and
  decodable by Pillow in the format its extension says, no stray members, no key twice;
- against the job's manifest.jsonl: sha256, docs, images and bytes per shard; shards missing from either.
Every problem is a `Problem` with a code, so the summary counts them like the build's reason codes.
Shards verify independently, so `--jobs N` fans them out over processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from m3w_builder.document import SCHEMA, record_problems
from pipelines.inspect.read import (
    Sample,
    Shard,
    TarFormatError,
    Target,
    iter_samples,
    open_shard,
    shard_name,
)

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[0-9a-f]{32}$")
MEMBER_RE = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp)$")
PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
ATTACH = ("following", "preceding")


@dataclass(slots=True)
class Problem:
    code: str  # e.g. tar.truncated, json.bad, member.missing, manifest.sha256
    shard: str
    message: str
    offset: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = self.shard + (f" @ byte {self.offset:,}" if self.offset is not None else "")
        key = f" [{self.key}]" if self.key else ""
        return f"{self.code:<18} {where}{key}: {self.message}"


@dataclass(slots=True)
class ShardCheck:
    """Result of verifying one shard (picklable: it comes back from a worker process)."""

    shard: str
    docs: int = 0
    images: int = 0
    bytes: int = 0
    sha256: str = ""
    keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class _HashingReader(io.RawIOBase):
    """Read-through sha256. It has no fileno, so TarReader reads (never seeks) every byte once."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = self.raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data


def check_record(sample: Sample) -> Iterator[tuple[str, str]]:
    """(code, message) for each way the record breaks its schema, m3w/1 or m3w/2 (docs/format.md).

    The schema's own rules are `m3w_builder.document.record_problems`, the check every reader
    applies (the loader refuses what is reported here). On top, what only a *built shard* must
    hold: the record's key is its member key, a non-empty url, at least one image, image members
    named `{pos}.{ext}`, every image attached, and an m3w/2 record's one type per field
    (`check_v2_types`, which keeps it readable by `datasets`)."""
    rec = sample.record or {}
    problems = list(record_problems(rec))
    yield from problems
    if rec.get("schema") == SCHEMA and sample.stored is not None:
        yield from check_v2_types(sample.stored)
    if "key" in rec and isinstance(rec["key"], str) and rec["key"] != sample.key:
        yield "schema.key", f"record key {rec['key']!r} differs from member key {sample.key!r}"
    if rec.get("url") == "":
        yield "schema.url", "url is empty"
    texts, images = rec.get("texts"), rec.get("images")
    if any(code == "schema.lists" for code, _ in problems) or not isinstance(images, list):
        return
    if not any(isinstance(im, dict) for im in images):
        # the build drops such documents (DESIGN §2, doc.no_images): one in a shard is a build bug
        yield "schema.no_images", "document has no image"
    for pos, (text, image) in enumerate(zip(texts, images, strict=True)):
        if text is None and isinstance(image, dict):
            yield from _shard_image_problems(pos, image)


def _shard_image_problems(pos: int, image: dict[str, Any]) -> Iterator[tuple[str, str]]:
    m = MEMBER_RE.match(str(image.get("member")))
    if not m or int(m.group(1)) != pos:
        yield (
            "schema.member",
            f"position {pos}: member {image.get('member')!r} is not '{pos}.<ext>'",
        )
    if image.get("attach") is None:
        yield "schema.attach", f"position {pos}: attach None not in {ATTACH}"


def decode_problem(data: bytes, ext: str, full: bool = True) -> str | None:
    """None if Pillow decodes `data` as the format `ext` names, else why not.

    `full=False` parses only the header (format, size): ~100× faster, but a cut-off image body passes.
    A JPEG is decoded at 1/8 scale (libjpeg's DCT scaling via `draft`): every entropy-coded scan is
    still read, so truncation and corrupt data raise exactly as in a full decode, but the IDCT and
    colour conversion run on 1/64 of the pixels (~1.5× faster on photo-like 1024×768 JPEGs).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if full:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
            if img.format != PIL_FORMATS.get(ext):
                return f"bytes are {img.format}, extension says {ext}"
    except Exception as e:  # noqa: BLE001 - any decoder failure is the finding itself
        return f"not decodable: {type(e).__name__}: {e}"
    return None


# m3w/2: every key present, with this JSON type (docs/format.md § Why m3w/2)
V2_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "key": str,
    "url": str,
    "source": dict,
    "fetched": str,
    "lang": str,
    "lang_score": (int, float),
    "texts": list,
    "images": list,
    "p_next": (int, float),
    "stats": str,
}
V2_IMAGE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ext": str,
    "src": str,
    "alt": str,
    "width": int,
    "height": int,
    "sha256": str,
    "phash": str,
    "src_page": str,
    "attach": str,
}


def check_v2_types(stored: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """An m3w/2 record whose fields do not all have their one type (a null, a missing key) would
    break `datasets`' schema inference on another user's machine: report it as schema.type."""
    for name, kind in V2_FIELDS.items():
        if (
            name not in stored
            or isinstance(stored[name], bool)
            or not isinstance(stored[name], kind)
        ):
            yield "schema.type", f"field {name!r} is {stored.get(name)!r}, not {_type_name(kind)}"
    extra = sorted(set(stored) - set(V2_FIELDS))
    if extra:
        yield "schema.type", f"unknown fields {extra} (m3w/2 has one fixed set of keys)"
    for pos, image in enumerate(stored.get("images") or []):
        if image is None:
            continue
        if not isinstance(image, dict) or set(image) != set(V2_IMAGE_FIELDS):
            keys = sorted(image) if isinstance(image, dict) else type(image).__name__
            yield "schema.type", f"position {pos}: image keys {keys}, not {sorted(V2_IMAGE_FIELDS)}"
            continue
        for name, kind in V2_IMAGE_FIELDS.items():
            if isinstance(image[name], bool) or not isinstance(image[name], kind):
                yield (
                    "schema.type",
                    f"position {pos}: {name} is {image[name]!r}, not {_type_name(kind)}",
                )


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "a number" if isinstance(kind, tuple) else f"a {kind.__name__}"


def check_sample(sample: Sample, decode: bool = True) -> Iterator[tuple[str, str]]:
    """(code, message) for one sample: key, record, members."""
    if not KEY_RE.match(sample.key):
        dotted = [s for s in sample.sizes if s != "json" and not MEMBER_RE.match(s)]
        hint = " (a dot in the key splits the sample in webdataset)" if dotted else ""
        yield "key.invalid", f"key {sample.key!r} is not 32 lowercase hex chars{hint}"
    yield from sample.extra
    if sample.record is None:
        yield (
            ("json.bad", sample.json_error)
            if sample.json_error
            else ("json.missing", f"no {sample.key}.json among {sorted(sample.sizes)}")
        )
        return
    yield from check_record(sample)
    referenced: set[str] = set()
    for image in sample.record.get("images") or []:
        if not isinstance(image, dict) or not isinstance(image.get("member"), str):
            continue
        member = image["member"]
        referenced.add(member)
        data = sample.members.get(member)
        if data is None:
            yield "member.missing", f"image member {sample.key}.{member} is not in the shard"
            continue
        expected = image.get("sha256")
        if isinstance(expected, str) and hashlib.sha256(data).hexdigest() != expected:
            # images.py records the sha256 of the stored bytes: a mismatch is a corrupted member
            yield "image.sha256", f"{sample.key}.{member}: bytes do not match the record's sha256"
        why = decode_problem(data, member.rsplit(".", 1)[-1], full=decode)
        if why:
            yield "image.undecodable", f"{sample.key}.{member}: {why}"
    for suffix in sorted(set(sample.sizes) - referenced - {"json"}):
        yield "member.stray", f"member {sample.key}.{suffix} is not referenced by the record"


def verify_shard(path: Shard, decode: bool = True) -> ShardCheck:
    """Verify one shard file; never raises for a broken shard (the problems say what is wrong)."""
    check = ShardCheck(shard=shard_name(path))
    try:
        with open_shard(path) as raw:
            _verify_stream(path, raw, check, decode)
    except OSError as e:  # vanished, unreadable, or a remote read that failed
        check.problems.append(Problem("tar.unreadable", check.shard, f"cannot read: {e}", 0))
    return check


def _verify_stream(path: Shard, raw: IO[bytes], check: ShardCheck, decode: bool) -> None:
    """Read the shard once through a hashing wrapper: samples, then the trailer, then the sha256."""
    seen: set[str] = set()
    f = _HashingReader(raw)
    try:
        for sample in iter_samples(path, images=True, fileobj=f):
            if sample.key in seen:
                check.problems.append(
                    Problem(
                        "key.duplicate",
                        check.shard,
                        "key appears again after other samples (webdataset splits it)",
                        sample.offset,
                        sample.key,
                    )
                )
            seen.add(sample.key)
            check.keys.append(sample.key)
            check.docs += sample.record is not None
            check.images += sum(1 for s in sample.sizes if s != "json")
            for code, message in check_sample(sample, decode):
                check.problems.append(
                    Problem(code, check.shard, message, sample.offset, sample.key)
                )
        _check_trailer(f, check)
    except TarFormatError as e:
        check.problems.append(Problem(e.code, check.shard, e.message, e.offset))
    check.bytes = f.count
    check.sha256 = f.hash.hexdigest()


def _check_trailer(f: _HashingReader, check: ShardCheck) -> None:
    """After the end marker a tar holds only zero padding (to its 10240-byte record size)."""
    while chunk := f.read(1 << 20):
        stripped = chunk.lstrip(b"\0")
        if stripped:
            offset = f.count - len(stripped)
            check.problems.append(
                Problem("tar.trailing", check.shard, "non-zero bytes after end-of-archive", offset)
            )
            while f.read(1 << 20):  # hash the rest so the sha256 still describes the file
                pass
            return


@dataclass(slots=True)
class VerifyReport:
    shards: int = 0
    docs: int = 0
    images: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.code for p in self.problems).most_common())

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "shards": self.shards,
            "docs": self.docs,
            "images": self.images,
            "bytes": self.bytes,
            "problem_counts": self.counts(),
            "problems": [
                {
                    "code": p.code,
                    "shard": p.shard,
                    "offset": p.offset,
                    "key": p.key,
                    "message": p.message,
                }
                for p in self.problems
            ],
        }


def _check_manifest(target: Target, checks: list[ShardCheck], report: VerifyReport) -> None:
    if target.job_dir is None:
        return
    if target.manifest is None:
        report.problems.append(Problem("manifest.missing", "manifest.jsonl", "job has no manifest"))
        return
    # `name` is the shard's path relative to the job dir ("shards/000000.tar") or its bare file name
    rows = {Path(str(r.get("name"))).name: r for r in target.manifest}
    for check in checks:
        row = rows.pop(check.shard, None)
        if row is None:
            report.problems.append(
                Problem("manifest.unlisted", check.shard, "shard is not listed in manifest.jsonl")
            )
            continue
        if row.get("sha256") != check.sha256:
            report.problems.append(
                Problem(
                    "manifest.sha256",
                    check.shard,
                    f"sha256 {check.sha256[:16]}… but manifest says {str(row.get('sha256'))[:16]}…",
                )
            )
        for field_ in ("docs", "images", "bytes"):
            if row.get(field_) != getattr(check, field_):
                report.problems.append(
                    Problem(
                        f"manifest.{field_}",
                        check.shard,
                        f"{field_} is {getattr(check, field_):,}, manifest says "
                        + (f"{row[field_]:,}" if isinstance(row.get(field_), int) else "nothing"),
                    )
                )
    for name in rows:
        report.problems.append(
            Problem("manifest.absent", name, "listed in manifest.jsonl but not in shards/")
        )


def verify(
    target: Target, jobs: int = 1, progress: bool = False, decode: bool = True
) -> VerifyReport:
    """Verify every shard of `target` (in `jobs` processes), then the manifest and cross-shard keys.

    `decode=False` checks image headers only (see `decode_problem`); the default decodes every pixel.
    """
    report = VerifyReport(shards=len(target.shards))
    report.problems += [Problem("job.unreadable", target.spec, p) for p in target.problems]
    paths = list(target.shards)
    one = functools.partial(verify_shard, decode=decode)
    if jobs > 1 and len(paths) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a possibly threaded parent
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            checks = list(_progress(pool.map(one, paths), len(paths), progress))
    else:
        checks = list(_progress(map(one, paths), len(paths), progress))
    owner: dict[str, str] = {}
    for check in checks:
        report.docs += check.docs
        report.images += check.images
        report.bytes += check.bytes
        report.problems += check.problems
        for key in check.keys:
            if owner.setdefault(key, check.shard) != check.shard:
                report.problems.append(
                    Problem("key.duplicate", check.shard, f"key also in {owner[key]}", key=key)
                )
    _check_manifest(target, checks, report)
    return report


def _progress(it: Iterator[ShardCheck], total: int, on: bool) -> Iterator[ShardCheck]:
    if not on:
        return it
    from tqdm import tqdm

    return iter(tqdm(it, total=total, unit="shard", desc="verify", leave=False))
