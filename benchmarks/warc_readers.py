"""WARC/ARC readers: FastWARC vs warcio vs m3w's own reader (warc.iter_records), same run.

Two questions, two tables:

1. Speed over the dev corpus WARCs (warc/aut + warc/warcio, 2.6 MB, 19 files), each reader doing
   the same work: every record, WARC headers parsed, HTTP headers parsed, the whole payload read
   with chunked transfer-coding and gzip content-encoding undone (FastWARC: `parse_http=True,
   auto_decode="all"`; warcio: `content_stream().read()`; m3w: `iter_records` with all types).
   Files a reader cannot read at all are left out of *its* timing (noted in the table). Also run
   over a larger file made in the same run: aut/example.warc.gz concatenated `--copies` times
   (gzip members concatenate into a valid .warc.gz), and the same uncompressed.
   Each number is the best of `--repeats` in CPU seconds of this process (the machine is shared
   by several jobs: CPU time is what a reader costs, wall time also counts the neighbours; both
   are printed). MB/s counts the bytes of the files on disk.
2. Robustness over the broken files of warc/warcio and over generated damage (a truncated tail,
   garbage between records, a corrupt gzip member, a record cut in half; gzip and plain): how many
   of the intact response records each reader returns, and whether it says anything.

    python benchmarks/warc_readers.py [--repeats 5] [--copies 8] [--write-md PATH]
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3w_builder.reasons import Counts  # noqa: E402
from m3w_builder.warc import iter_records  # noqa: E402

CORPUS = Path(os.environ.get("M3W_DEV_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))
ALL_TYPES = frozenset({"warcinfo", "response", "resource", "request", "revisit", "metadata"})

# ------------------------------------------------------------------------------------------------
# The three readers: each returns (records, payload bytes) for one file, or raises.


def read_fastwarc(path: Path) -> tuple[int, int]:
    from fastwarc.warc import ArchiveIterator

    n = size = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, parse_http=True, auto_decode="all", quirks_mode=True):
            size += len(record.reader.read())
            n += 1
    return n, size


def read_warcio(path: Path) -> tuple[int, int]:
    from warcio.archiveiterator import ArchiveIterator

    n = size = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, arc2warc=True):
            size += len(record.content_stream().read())
            n += 1
    return n, size


def read_m3w(path: Path) -> tuple[int, int]:
    n = size = 0
    for record in iter_records(str(path), Counts(), types=ALL_TYPES):
        size += len(record.body)
        n += 1
    return n, size


READERS: dict[str, Callable[[Path], tuple[int, int]]] = {
    "fastwarc": read_fastwarc,
    "warcio": read_warcio,
    "m3w": read_m3w,
}


def time_reader(read: Callable[[Path], tuple[int, int]], files: list[Path], repeats: int) -> dict:
    """Best-of-`repeats` time over the files this reader can read; which files it can't."""
    ok, failed = [], []
    for path in files:
        try:
            read(path)
            ok.append(path)
        except Exception as exc:  # noqa: BLE001 - a reader's failure is a result here
            failed.append(f"{path.name} ({type(exc).__name__})")
    best = best_wall = float("inf")
    records = 0
    for _ in range(repeats):
        start, start_wall = time.process_time(), time.perf_counter()
        records = sum(read(path)[0] for path in ok)
        best = min(best, time.process_time() - start)
        best_wall = min(best_wall, time.perf_counter() - start_wall)
    mb = sum(p.stat().st_size for p in ok) / 1e6
    return {"records": records, "seconds": best, "wall": best_wall, "mb": mb, "failed": failed}


# ------------------------------------------------------------------------------------------------
# Robustness: generated damage


def _warc_bytes(gz: bool, n: int = 8) -> tuple[bytes, list[int]]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    offsets = []
    for i in range(n):
        offsets.append(buf.tell())
        body = f"<html><body><p>page {i}</p>".encode() + b"x" * 500 + b"</body></html>"
        http = StatusAndHeaders(
            "200 OK",
            [("Content-Type", "text/html"), ("Content-Length", str(len(body)))],
            protocol="HTTP/1.1",
        )
        record = writer.create_warc_record(
            f"http://ex.test/{i}", "response", payload=io.BytesIO(body), http_headers=http
        )
        writer.write_record(record)
    return buf.getvalue(), offsets


def damaged_files(tmp: Path) -> list[tuple[str, Path, int]]:
    """(name, path, intact response records) for each kind of damage, gzip and plain."""
    out = []
    for gz in (True, False):
        data, offs = _warc_bytes(gz)
        kind = "gz" if gz else "plain"
        cases = {
            "truncated tail": (data[: offs[7] + (len(data) - offs[7]) // 2], 7),
            "garbage between records": (
                data[: offs[3]] + b"GARBAGE\x00\x01junk\r\n" * 40 + data[offs[3] :],
                8,
            ),
            "corrupt bytes in record 3": (
                data[: offs[3] + 60] + b"\xff" * 20 + data[offs[3] + 80 :],
                7,
            ),
            "record 3 cut in half": (
                data[: offs[3] + (offs[4] - offs[3]) // 2] + data[offs[4] :],
                7,
            ),
        }
        for name, (blob, intact) in cases.items():
            path = tmp / f"{kind}-{name.replace(' ', '_')}.warc"
            path.write_bytes(blob)
            out.append((f"{name} ({kind})", path, intact))
    return out


def responses(reader: str, path: Path) -> tuple[str, bool]:
    """Intact response URLs read, and whether the reader reported anything (error or warning)."""
    urls: list[str] = []  # None-safe: a record may lack a target URI
    reported = False
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger().addHandler(handler)
    saved_stderr = sys.stderr
    sys.stderr = io.StringIO()  # warcio prints its warnings to stderr
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if reader == "fastwarc":
                from fastwarc.warc import ArchiveIterator, WarcRecordType

                with open(path, "rb") as f:
                    for r in ArchiveIterator(
                        f, record_types=WarcRecordType.response, quirks_mode=True
                    ):
                        r.reader.read()
                        urls.append(r.headers.get("WARC-Target-URI"))
            elif reader == "warcio":
                from warcio.archiveiterator import ArchiveIterator

                with open(path, "rb") as f:
                    for r in ArchiveIterator(f):
                        if r.rec_type == "response":
                            r.content_stream().read()
                            urls.append(r.rec_headers.get_header("WARC-Target-URI"))
            else:
                counts = Counts()
                for r in iter_records(str(path), counts):
                    urls.append(r.url)
                reported = counts["warc.corrupt_record"] > 0
            reported = reported or bool(caught)
    except Exception as exc:  # noqa: BLE001
        urls.append(f"! {type(exc).__name__}")
        reported = True
    finally:
        reported = reported or bool(sys.stderr.getvalue().strip())
        sys.stderr = saved_stderr
        logging.getLogger().removeHandler(handler)
    good = sum(1 for u in urls if not str(u).startswith("!"))
    crash = any(str(u).startswith("!") for u in urls)
    return f"{good}{' + error' if crash else ''}", reported


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--write-md", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # m3w logs every corrupt record; the tables say enough

    corpus_files = sorted(
        p
        for folder in ("aut", "warcio")
        for p in (CORPUS / "warc" / folder).iterdir()
        if p.name != "index.jsonl"
    )
    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line)
        lines.append(line)

    emit(
        f"# WARC readers: FastWARC vs warcio vs m3w ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)"
    )
    emit()
    emit(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}; best of {args.repeats}."
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        big_gz = tmp / "aut-x.warc.gz"
        big_gz.write_bytes((CORPUS / "warc" / "aut" / "example.warc.gz").read_bytes() * args.copies)
        big_plain = tmp / "aut-x.warc"
        big_plain.write_bytes(gzip.decompress(big_gz.read_bytes()))
        sets = {
            f"dev corpus ({len(corpus_files)} files)": corpus_files,
            f"aut example ×{args.copies}, .warc.gz": [big_gz],
            f"aut example ×{args.copies}, plain .warc": [big_plain],
        }
        emit()
        emit(
            "| input | reader | records | MB | CPU s | wall s | records/s | MB/s | vs warcio "
            "| cannot read |"
        )
        emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, files in sets.items():
            results = {
                name: time_reader(read, files, args.repeats) for name, read in READERS.items()
            }
            base = results["warcio"]
            for name, r in results.items():
                speed = r["mb"] / r["seconds"]
                base_speed = base["mb"] / base["seconds"]
                emit(
                    f"| {label} | {name} | {r['records']} | {r['mb']:.2f} | {r['seconds']:.3f} | "
                    f"{r['wall']:.3f} | "
                    f"{r['records'] / r['seconds']:,.0f} | {speed:.1f} | {speed / base_speed:.2f}× | "
                    f"{', '.join(r['failed']) or '-'} |"
                )
        emit()
        emit("Intact response records returned (of N), and whether the reader reported the damage:")
        emit()
        emit("| damage | N | fastwarc | warcio | m3w |")
        emit("|---|---:|---|---|---|")
        for name, path, intact in damaged_files(tmp):
            cells = []
            for reader in READERS:
                got, reported = responses(reader, path)
                cells.append(f"{got}{'' if reported else ' (silent)'}")
            emit(f"| {name} | {intact} | " + " | ".join(cells) + " |")
        emit()
        emit("Broken corpus files (warc/warcio), response records returned:")
        emit()
        emit("| file | fastwarc | warcio | m3w |")
        emit("|---|---|---|---|")
        for name in (
            "example-bad-non-chunked.warc.gz",
            "example-bad.warc.gz.bad",
            "example-wrong-chunks.warc.gz",
            "example-trunc.warc",
            "example-space-in-url.arc",
            "bad.arc",
        ):
            path = CORPUS / "warc" / "warcio" / name
            cells = []
            for reader in READERS:
                got, reported = responses(reader, path)
                cells.append(f"{got}{' (reported)' if reported else ''}")
            emit(f"| {name} | " + " | ".join(cells) + " |")
    if args.write_md:
        args.write_md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
