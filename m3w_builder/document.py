"""Records that flow through the build: RawPage in, Document out, and the shard JSON of schema m3w/1.

A Document is an ordered list of nodes (text chunks and images) in DOM reading order. On disk it becomes
the OBELICS-style parallel lists `texts` / `images` (DESIGN §3): at each position exactly one of the two
is non-null. Keeping one ordered node list in memory (instead of two parallel lists) makes it impossible
to build a document whose lists disagree in length.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "m3w/1"


@dataclass(slots=True)
class RawPage:
    """One fetched or archived HTML page, before parsing.

    `source_file`/`source_offset` name where it came from (WARC path and record offset, or the HTML file
    path with offset 0) so that every error and every shard record points back to its input.
    """

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    source_file: str = ""
    source_offset: int = 0
    date: str | None = None

    @property
    def content_type(self) -> str:
        for name, value in self.headers.items():
            if name.lower() == "content-type":
                return value
        return ""


@dataclass(slots=True)
class TextNode:
    """A paragraph-level text chunk (a block element's text, already whitespace-normalised)."""

    text: str
    tag: str = "p"


@dataclass(slots=True)
class ImageNode:
    """An image reference, later resolved to bytes.

    Before fetching, `src` is the page's preferred URL and `candidates` every URL that may hold the
    same picture, best first (srcset entries by size, `<picture>` sources, lazy-load attributes,
    `src`, the `<noscript>` copy; `candidates[0] == src`), and `width`/`height` are the HTML
    attributes (or None). After the images stage `src` is the URL whose bytes were stored,
    `src_page` the page's preferred URL when that differs, `candidates` is empty, `width`/`height`
    are the decoded original size, `data` holds the re-encoded bytes and `ext` their extension.
    """

    src: str
    alt: str = ""
    width: int | None = None
    height: int | None = None
    data: bytes | None = None
    ext: str | None = None
    sha256: str | None = None
    phash: str | None = None
    attach: str | None = None  # "following" | "preceding", set by attach.sample
    candidates: list[str] = field(default_factory=list)
    src_page: str | None = None

    def to_json(self, pos: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "member": f"{pos}.{self.ext}" if self.ext else None,
            "src": self.src,
            "alt": self.alt,
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
            "attach": self.attach,
        }
        if self.phash is not None:
            out["phash"] = self.phash
        if self.src_page is not None:
            out["src_page"] = self.src_page
        if len(self.candidates) > 1:  # extract-stage records only: resolution empties the list
            out["candidates"] = list(self.candidates)
        return out


Node = TextNode | ImageNode


def document_key(url: str) -> str:
    """32 hex chars derived from the URL: stable across rebuilds and free of dots (a dot splits a
    WebDataset sample key, DESIGN §3)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(slots=True)
class Document:
    url: str
    nodes: list[Node] = field(default_factory=list)
    source_file: str = ""
    source_offset: int = 0
    fetched: str | None = None
    lang: str | None = None
    lang_score: float | None = None
    p_next: float | None = None
    drops: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return document_key(self.url)

    @property
    def texts(self) -> list[str | None]:
        return [n.text if isinstance(n, TextNode) else None for n in self.nodes]

    @property
    def images(self) -> list[ImageNode | None]:
        return [n if isinstance(n, ImageNode) else None for n in self.nodes]

    @property
    def image_nodes(self) -> list[ImageNode]:
        return [n for n in self.nodes if isinstance(n, ImageNode)]

    @property
    def text_nodes(self) -> list[TextNode]:
        return [n for n in self.nodes if isinstance(n, TextNode)]

    def text(self, sep: str = "\n\n") -> str:
        return sep.join(n.text for n in self.nodes if isinstance(n, TextNode))

    def to_json(self) -> dict[str, Any]:
        """The shard record `{key}.json` (DESIGN §3)."""
        return {
            "schema": SCHEMA,
            "key": self.key,
            "url": self.url,
            "source": {"warc": self.source_file, "offset": self.source_offset},
            "fetched": self.fetched,
            "lang": self.lang,
            "lang_score": self.lang_score,
            "texts": self.texts,
            "images": [
                n.to_json(pos) if isinstance(n, ImageNode) else None
                for pos, n in enumerate(self.nodes)
            ],
            "p_next": self.p_next,
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], members: dict[str, bytes] | None = None) -> Document:
        """Inverse of to_json; `members` maps "{pos}.{ext}" to image bytes when they are at hand.
        Raises RecordError (a ValueError) for anything `check_record` refuses."""
        check_record(record)
        if record.get("schema") != SCHEMA:
            raise ValueError(f"unsupported schema {record.get('schema')!r}, expected {SCHEMA!r}")
        texts, images = record["texts"], record["images"]
        if len(texts) != len(images):
            raise ValueError(f"texts ({len(texts)}) and images ({len(images)}) differ in length")
        nodes: list[Node] = []
        for pos, (text, image) in enumerate(zip(texts, images, strict=True)):
            if (text is None) == (image is None):
                raise ValueError(f"position {pos}: exactly one of texts/images must be non-null")
            if text is not None:
                nodes.append(TextNode(text))
                continue
            member = image.get("member")
            ext = member.rsplit(".", 1)[-1] if member else None
            nodes.append(
                ImageNode(
                    src=image.get("src", ""),
                    alt=image.get("alt") or "",
                    width=image.get("width"),
                    height=image.get("height"),
                    data=(members or {}).get(member) if member else None,
                    ext=ext,
                    sha256=image.get("sha256"),
                    phash=image.get("phash"),
                    attach=image.get("attach"),
                    candidates=list(image.get("candidates") or []),
                    src_page=image.get("src_page"),
                )
            )
        source = record.get("source") or {}
        return cls(
            url=record["url"],
            nodes=nodes,
            source_file=source.get("warc") or "",
            source_offset=source.get("offset") or 0,
            fetched=record.get("fetched"),
            lang=record.get("lang"),
            lang_score=record.get("lang_score"),
            p_next=record.get("p_next"),
            stats=record.get("stats") or {},
        )


# --------------------------------------------------------------------------------------------------
# The record check: one place that knows what an m3w/1 record may hold
# --------------------------------------------------------------------------------------------------


class RecordError(ValueError):
    """A shard record that is not schema m3w/1; the message says which field and position."""


_ATTACH = (None, "following", "preceding")
_IMAGE_TEXT_FIELDS = ("member", "src", "alt", "sha256", "phash", "attach", "src_page")


def check_record(record: Any) -> dict[str, Any]:
    """`record` if it is a well-typed m3w/1 record (docs/format.md), else RecordError.

    Why one checker: shards come from anywhere (other builders, a damaged disk, a hostile upload) and
    every reader (Document.from_json, the trainer's loader) must refuse the same records for the same
    reasons instead of each crashing differently on `texts: 5`, an image entry that is a string, an
    int `member` or a NaN. Checked: an object of schema m3w/1 with a str `url`; `texts`/`images`
    lists of one length with exactly one non-null per position, texts str, images objects whose
    text fields are str or null, `width`/`height` positive ints or null, `attach` following,
    preceding or null; `lang_score`, `p_next` finite numbers or null (p_next within [0, 1]);
    `lang`, `fetched`, `key` str or null; `source` and `stats` objects or null. Other keys are
    ignored (a newer writer may add some). Values are only looked at, never copied or recursed
    into, so the check costs one pass over the lists whatever `stats` holds.
    """
    if not isinstance(record, dict):
        raise RecordError(f"record is a JSON {_json_type(record)}, not an object")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"unsupported schema {record.get('schema')!r}, expected {SCHEMA!r}")
    if not isinstance(record.get("url"), str):
        raise RecordError(f"url is {_json_type(record.get('url'))}, not a string")
    texts, images = record.get("texts"), record.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        raise RecordError(
            f"texts ({_json_type(texts)}) and images ({_json_type(images)}) must be lists"
        )
    if len(texts) != len(images):
        raise RecordError(f"texts ({len(texts)}) and images ({len(images)}) differ in length")
    for pos, (text, image) in enumerate(zip(texts, images, strict=True)):
        if (text is None) == (image is None):
            raise RecordError(f"position {pos}: exactly one of texts/images must be non-null")
        if text is not None and not isinstance(text, str):
            raise RecordError(f"position {pos}: text is {_json_type(text)}, not a string")
        if image is not None:
            _check_image(pos, image)
    for name in ("lang_score", "p_next"):
        value = record.get(name)
        if value is not None and not _finite(value):
            raise RecordError(f"{name} {value!r} is not a finite number")
    if record.get("p_next") is not None and not 0 <= record["p_next"] <= 1:
        raise RecordError(f"p_next {record['p_next']!r} is not a probability")
    for name in ("lang", "fetched", "key"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise RecordError(f"{name} is {_json_type(record[name])}, not a string")
    source = record.get("source")
    if source is not None:
        if not isinstance(source, dict):
            raise RecordError(f"source is {_json_type(source)}, not an object")
        if source.get("warc") is not None and not isinstance(source["warc"], str):
            raise RecordError("source.warc is not a string")
        if source.get("offset") is not None and not _int(source["offset"]):
            raise RecordError("source.offset is not an integer")
    if record.get("stats") is not None and not isinstance(record["stats"], dict):
        raise RecordError(f"stats is {_json_type(record['stats'])}, not an object")
    return record


def _check_image(pos: int, image: Any) -> None:
    if not isinstance(image, dict):
        raise RecordError(f"position {pos}: image entry is {_json_type(image)}, not an object")
    for name in _IMAGE_TEXT_FIELDS:
        if image.get(name) is not None and not isinstance(image[name], str):
            raise RecordError(f"position {pos}: image {name} is {_json_type(image[name])}")
    for name in ("width", "height"):
        value = image.get(name)
        if value is not None and not (_int(value) and value > 0):
            raise RecordError(f"position {pos}: image {name} {value!r} is not a positive integer")
    if image.get("attach") not in _ATTACH:
        raise RecordError(f"position {pos}: attach {image.get('attach')!r} not in {_ATTACH[1:]}")
    candidates = image.get("candidates")
    if candidates is not None and not (
        isinstance(candidates, list) and all(isinstance(c, str) for c in candidates)
    ):
        raise RecordError(f"position {pos}: image candidates is not a list of strings")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (what the user wrote), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "NaN" if isinstance(value, float) and value != value else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)
