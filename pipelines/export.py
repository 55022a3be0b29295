"""`m3w export JOB OUT --format parquet|jsonl`: a built job as a Hugging Face dataset folder.

Why an export beside the WebDataset shards: users compare with OBELICS, which is one
`load_dataset` call over parquet files whose rows are documents (`texts`, `images`, `metadata`,
`general_metadata`). The export writes that schema, plus m3w's `attach` per image, one parquet
file per shard (so the shard ↔ file mapping stays obvious and the export parallelises by shard
later), with row groups of a few dozen documents so a streaming reader holds one group's images,
not a file's. The image bytes are embedded as the `datasets.Image` feature (a struct of bytes and
path, declared in the file's `huggingface` schema metadata), so they decode to PIL with no m3w
installed. `metadata` and `general_metadata` are JSON strings, as in OBELICS: their keys vary
(the DOM statistics), and a string column never breaks a reader's schema.

`--format jsonl` writes the same rows without image bytes (each image is its URL, with its sha256
in `metadata`), for text tooling. A dataset card `README.md` declares the files and features and
carries the build's report summary, so `load_dataset(OUT)` needs no argument.

Every file is written under a temporary name and renamed when complete; OUT must be new or empty,
so an export never mixes two jobs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3w_builder.atomic import AtomicFile
from m3w_builder.errors import UserError
from pipelines.cli_help import DefaultsFormatter
from pipelines.inspect.read import Sample, Target, iter_samples, resolve_target

FORMATS = ("parquet", "jsonl")
ROWS_PER_GROUP = 64  # documents per parquet row group: a few MB of images, streaming-sized
MAX_GROUP_BYTES = 64 << 20  # ...and a group is cut early once its image bytes pass this


class ExportError(UserError):
    """A user's mistake the CLI reports in one line (missing job, OUT not empty, no pyarrow)."""


@dataclass(slots=True)
class ExportSummary:
    files: int
    documents: int
    images: int
    bytes: int
    out: str


def features() -> Any:
    """The `datasets.Features` of an exported row (the parquet export)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features(
        {
            "texts": datasets.List(string),
            "images": datasets.List(datasets.Image()),
            "attach": datasets.List(string),
            "metadata": string,
            "general_metadata": string,
        }
    )


def jsonl_features() -> Any:
    import datasets

    string = datasets.Value("string")
    return datasets.Features(
        {
            "texts": datasets.List(string),
            "images": datasets.List(string),
            "attach": datasets.List(string),
            "metadata": string,
            "general_metadata": string,
        }
    )


def row(sample: Sample, with_bytes: bool) -> dict[str, Any]:
    """One document in the OBELICS layout (from the m3w/1-shaped view of either schema)."""
    record = sample.record or {}
    images, attach, metadata = [], [], []
    for pos, image in enumerate(record.get("images") or []):
        if image is None:
            images.append(None)
            attach.append(None)
            metadata.append(None)
            continue
        member = image.get("member")
        data = sample.members.get(member) if member else None
        if with_bytes:
            images.append({"bytes": data, "path": f"{sample.key}.{member}"} if data else None)
        else:
            images.append(image.get("src"))
        attach.append(image.get("attach"))
        metadata.append(
            {
                "src": image.get("src"),
                "src_page": image.get("src_page"),
                "alt": image.get("alt"),
                "width": image.get("width"),
                "height": image.get("height"),
                "sha256": image.get("sha256"),
                "phash": image.get("phash"),
                "format": member.rsplit(".", 1)[-1] if member else None,
                "position": pos,
            }
        )
    source = record.get("source") or {}
    general = {
        "url": record.get("url"),
        "key": sample.key,
        "schema": record.get("schema"),
        "warc": source.get("warc"),
        "offset": source.get("offset"),
        "fetched": record.get("fetched"),
        "lang": record.get("lang"),
        "lang_score": record.get("lang_score"),
        "p_next": record.get("p_next"),
        "stats": record.get("stats") or {},
    }
    return {
        "texts": list(record.get("texts") or []),
        "images": images,
        "attach": attach,
        "metadata": json.dumps(metadata, ensure_ascii=False, sort_keys=True),
        "general_metadata": json.dumps(general, ensure_ascii=False, sort_keys=True),
    }


def _require_pyarrow() -> None:
    try:
        import datasets  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"m3w export needs pyarrow and datasets ({e.name} is missing): pip install 'm3w[hf]'"
        ) from None


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; give a new or empty folder for the export")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; give a new or empty folder for the export")
    (out / "data").mkdir(parents=True, exist_ok=True)


def export(
    job: str, out: str | Path, fmt: str = "parquet", rows_per_group: int = ROWS_PER_GROUP
) -> ExportSummary:
    """Write the dataset folder; raises ExportError for a mistake the user can fix."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _require_pyarrow()
    try:
        target = resolve_target(job)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    if not target.shards:
        raise ExportError(f"no shards in {job} (a job folder, a shard or a brace pattern)")
    out = Path(out)
    _prepare_out(out)
    summary = ExportSummary(files=0, documents=0, images=0, bytes=0, out=str(out))
    n = len(target.shards)
    for i, shard in enumerate(target.shards):
        name = f"train-{i:05d}-of-{n:05d}.{fmt}"
        path = out / "data" / name
        part = AtomicFile(path)  # the writers take a path: they write part.tmp_path
        part.file.close()
        samples = (s for s in iter_samples(shard, images=fmt == "parquet") if s.record)
        try:
            if fmt == "parquet":
                docs, images = _write_parquet(samples, part.tmp_path, rows_per_group)
            else:
                docs, images = _write_jsonl(samples, part.tmp_path)
        except BaseException:
            part.abort()
            raise
        part.commit()
        summary.files += 1
        summary.documents += docs
        summary.images += images
        summary.bytes += path.stat().st_size
    (out / "README.md").write_text(dataset_card(target, fmt, summary), encoding="utf-8")
    return summary


def _write_parquet(samples: Iterator[Sample], path: Path, rows_per_group: int) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = features().arrow_schema  # carries the `huggingface` features metadata
    docs = images = 0
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:

        def flush() -> None:
            nonlocal batch_bytes
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()
                batch_bytes = 0

        for sample in samples:
            r = row(sample, with_bytes=True)
            kept = [im for im in r["images"] if im is not None]
            docs += 1
            images += len(kept)
            batch.append(r)
            batch_bytes += sum(len(im["bytes"]) for im in kept)
            if len(batch) >= rows_per_group or batch_bytes >= MAX_GROUP_BYTES:
                flush()
        flush()
    return docs, images


def _write_jsonl(samples: Iterator[Sample], path: Path) -> tuple[int, int]:
    docs = images = 0
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            r = row(sample, with_bytes=False)
            docs += 1
            images += sum(im is not None for im in r["images"])
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return docs, images


def dataset_card(target: Target, fmt: str, summary: ExportSummary) -> str:
    """README.md: YAML front matter `datasets` reads (configs, features), then a human summary."""
    import datasets
    import yaml

    feats = features() if fmt == "parquet" else jsonl_features()
    info = datasets.DatasetInfo(features=feats)._to_yaml_dict()
    front = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": f"data/train-*.{fmt}"}],
            }
        ],
        "dataset_info": {**info, "splits": [{"name": "train", "num_examples": summary.documents}]},
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# m3w export of `{target.spec}`",
        "",
        "Interleaved image/text documents built by m3w, in the OBELICS layout: one row per web "
        "page, `texts` and `images` parallel lists in reading order (at each position exactly one "
        "is non-null).",
        "",
        f"{summary.documents:,} documents, {summary.images:,} images, {summary.files} "
        f"{fmt} files ({summary.bytes:,} bytes), one per shard of the job.",
        "",
        "## Features",
        "",
        "| column | type | what |",
        "|---|---|---|",
        "| `texts` | list<string or null> | the text at each position, null at an image |",
        (
            "| `images` | list<image or null> | the image bytes (`datasets.Image`: decode to PIL) |"
            if fmt == "parquet"
            else "| `images` | list<string or null> | the image URL at each image position |"
        ),
        "| `attach` | list<string or null> | per image: `following` (the text after it sees it, "
        "Flamingo's default) or `preceding` |",
        "| `metadata` | string (JSON list) | per position: null, or the image's `src`, `src_page`, "
        "`alt`, original `width`/`height`, `sha256`, `phash`, `format` |",
        "| `general_metadata` | string (JSON object) | `url`, `key`, `schema`, `warc`, `offset`, "
        "`fetched`, `lang`, `lang_score`, `p_next`, `stats` |",
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder", split="train")  # or streaming=True',
        "```",
        "",
    ]
    report = target.report or {}
    if report:
        lines += ["## Build report", "", *_report_lines(report), ""]
    return "\n".join(lines)


def _report_lines(report: dict[str, Any]) -> list[str]:
    from pipelines.build.funnel import format_funnel

    keys = ("pages", "documents_extracted", "documents", "images", "shards", "seconds", "seed")
    lines = [f"- {k}: {report[k]:,}" for k in keys if isinstance(report.get(k), int | float)]
    if report.get("profile"):
        lines.append(f"- profile: {report['profile']}")
    langs = report.get("languages") or {}
    if langs:
        lines.append("- languages: " + ", ".join(f"{k} {v:,}" for k, v in list(langs.items())[:8]))
    if report.get("funnel"):
        lines += ["", "```", format_funnel(report["funnel"]), "```"]
    drops = sorted((report.get("drops") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    if drops:
        lines += ["", "| drop reason | count |", "|---|---|"]
        lines += [f"| `{code}` | {n:,} |" for code, n in drops]
    return lines


# ---------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a job as a Hugging Face dataset folder (parquet or jsonl, OBELICS layout)",
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("job", metavar="JOB", help="a job folder, a shard, or a brace pattern of shards")
    p.add_argument("out", metavar="OUT", help="a new or empty folder")
    p.add_argument("--format", choices=FORMATS, default="parquet", help="file format")
    p.add_argument(
        "--rows-per-group",
        type=int,
        default=ROWS_PER_GROUP,
        help="documents per parquet row group (a group is also cut at 64 MiB of images)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    summary = export(args.job, args.out, args.format, args.rows_per_group)
    print(
        f"exported {summary.documents:,} documents, {summary.images:,} images into "
        f"{summary.files} {args.format} files under {Path(summary.out) / 'data'} "
        f"({summary.bytes:,} bytes); load with datasets.load_dataset({summary.out!r})"
    )
    return 0


__all__ = ["ExportError", "export", "features", "row"]
