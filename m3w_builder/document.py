"""Records that flow through the build: RawPage in, Document out, and the shard records of schemas
m3w/1 and m3w/2.

A Document is an ordered list of nodes (text chunks and images) in DOM reading order. On disk it becomes
the OBELICS-style parallel lists `texts` / `images` (DESIGN §3): at each position exactly one of the two
is non-null. Keeping one ordered node list in memory (instead of two parallel lists) makes it impossible
to build a document whose lists disagree in length.

`Document.to_json()` is the m3w/1-shaped record: the extract stage's working files and `m3w extract`
use it, and it is the one view every reader works on. The shard writer writes m3w/2 (`to_shard()`):
the same content with one fixed set of members per sample and one JSON type per field, so that
Hugging Face `datasets`, which infers a table schema from a shard's first samples, can read the shards
(docs/format.md § Why m3w/2). `read_shard_sample` turns a sample of either schema back into the
m3w/1-shaped view, so readers never branch on the schema.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "m3w/2"  # what the shard writer writes
SCHEMA_V1 = "m3w/1"  # the extract-stage record, and shards written before m3w/2
READABLE_SCHEMAS = (SCHEMA_V1, SCHEMA)
IMAGES_MEMBER = "images.mp"  # m3w/2: one msgpack list of every image's bytes, parallel to texts


class RecordError(ValueError):
    """A shard sample that does not hold a readable m3w record (names what is wrong)."""


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
        """The m3w/1-shaped record (DESIGN §3): extract-stage files, `m3w extract`, and the view
        `read_shard_sample` gives of a shard sample of any schema."""
        return {
            "schema": SCHEMA_V1,
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
        The record is m3w/1-shaped (an m3w/2 shard sample goes through `read_shard_sample`
        first). Raises RecordError (a ValueError) for anything `check_record` refuses."""
        check_record(record)
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

    def to_shard(self) -> tuple[dict[str, Any], bytes]:
        """The m3w/2 sample: (`{key}.json` record, `{key}.images.mp` bytes), docs/format.md."""
        return self.shard_record(), self.packed_images()

    def shard_record(self) -> dict[str, Any]:
        """The m3w/2 record. Why its rules: `datasets.load_dataset("webdataset", ...)` infers one
        Arrow type per field from a shard's first five samples and casts every later sample to
        it. Members named `{key}.{pos}.jpg` give samples different columns (an error); a field
        null in those five and a string later fails the cast; a key first seen later is lost. So
        every sample has the same two members, every key is always present, no scalar is ever
        null (the empty string means unknown, a score is 0.0 when its label is empty, p_next is
        -1 when no draw was made), and the free-form `stats` is a JSON string."""
        images: list[dict[str, Any] | None] = []
        for pos, node in enumerate(self.nodes):
            if not isinstance(node, ImageNode):
                images.append(None)
                continue
            if node.data is None or not node.ext:
                raise ValueError(f"{self.url}: image at position {pos} has no stored bytes")
            images.append(
                {
                    "ext": node.ext,
                    "src": node.src,
                    "alt": node.alt or "",
                    "width": int(node.width or 0),
                    "height": int(node.height or 0),
                    "sha256": node.sha256 or "",
                    "phash": node.phash or "",
                    "src_page": node.src_page or "",
                    "attach": node.attach or "",
                }
            )
        return {
            "schema": SCHEMA,
            "key": self.key,
            "url": self.url,
            "source": {"warc": self.source_file or "", "offset": int(self.source_offset or 0)},
            "fetched": self.fetched or "",
            "lang": self.lang or "",
            "lang_score": float(self.lang_score or 0.0),
            "texts": self.texts,
            "images": images,
            "p_next": float(self.p_next if self.p_next is not None else -1.0),
            "stats": json.dumps(self.stats, ensure_ascii=False, sort_keys=True),
        }

    def packed_images(self) -> bytes:
        """`{key}.images.mp`: a msgpack array parallel to `texts`, the image bytes at image
        positions and nil elsewhere (`datasets` and `webdataset` decode `.mp` members)."""
        import msgpack

        return msgpack.packb(
            [n.data if isinstance(n, ImageNode) else None for n in self.nodes], use_bin_type=True
        )


def _v2_to_v1(record: dict[str, Any], packed: bytes | None) -> tuple[dict[str, Any], dict]:
    """An m3w/2 record and its images member → (m3w/1-shaped record, {"{pos}.{ext}": bytes})."""
    import msgpack

    texts, images = record.get("texts"), record.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        raise RecordError("texts and images must both be lists")
    members: dict[str, bytes] = {}
    if packed is not None:
        try:
            blobs = msgpack.unpackb(packed, raw=False)
        except Exception as e:  # noqa: BLE001 - any unpacking failure is the finding
            raise RecordError(f"{IMAGES_MEMBER} is not msgpack: {type(e).__name__}: {e}") from e
        if not isinstance(blobs, list) or len(blobs) != len(images):
            n = len(blobs) if isinstance(blobs, list) else type(blobs).__name__
            raise RecordError(f"{IMAGES_MEMBER} holds {n} entries for {len(images)} positions")
    else:
        blobs = [None] * len(images)
    v1_images: list[dict[str, Any] | None] = []
    for pos, (image, blob) in enumerate(zip(images, blobs)):
        if not isinstance(image, dict):
            if blob is not None:
                raise RecordError(f"{IMAGES_MEMBER} has bytes at text position {pos}")
            v1_images.append(image)
            continue
        member = f"{pos}.{image.get('ext')}" if image.get("ext") else None
        if member is not None and isinstance(blob, bytes):
            members[member] = blob
        entry = {
            "member": member,
            "src": image.get("src"),
            "alt": image.get("alt"),
            "width": image.get("width") or None,
            "height": image.get("height") or None,
            "sha256": image.get("sha256") or None,
            "attach": image.get("attach") or None,
        }
        for optional in ("phash", "src_page"):
            if image.get(optional):
                entry[optional] = image[optional]
        v1_images.append(entry)
    stats = record.get("stats")
    try:
        stats = json.loads(stats) if isinstance(stats, str) else (stats or {})
    except json.JSONDecodeError as e:
        raise RecordError(f"stats is not a JSON string ({e.msg})") from e
    p_next = record.get("p_next")
    view = {
        **record,
        "fetched": record.get("fetched") or None,
        "lang": record.get("lang") or None,
        "lang_score": record.get("lang_score") if record.get("lang") else None,
        "images": v1_images,
        "p_next": None if p_next is None or p_next < 0 else p_next,
        "stats": stats,
    }
    return view, members


class BadJSON(RecordError):
    """A record member that is not JSON at all (the loader counts it apart: data.bad_json)."""


def parse_record_json(data: bytes | str) -> dict[str, Any]:
    """A shard sample's `.json` member → its record object, or RecordError: not JSON (BadJSON),
    JSON nested deeper than the interpreter's recursion limit (`[[[[...` a megabyte deep: a bad
    record, not a RecursionError that ends the command), or JSON that is not an object."""
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadJSON(f"bad JSON ({e})") from None
    except RecursionError:
        raise RecordError("bad JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise RecordError("record is not a JSON object")
    return record


def read_shard_sample(
    record: dict[str, Any], members: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One shard sample of either schema → (m3w/1-shaped record, {"{pos}.{ext}": bytes}).

    `members` maps the member suffixes after the key ("1.jpg", or "images.mp") to their bytes.
    The record keeps its own `schema` value, so a reader can still tell where it came from."""
    schema = record.get("schema")
    if schema == SCHEMA_V1:
        return record, {k: v for k, v in members.items() if k != "json"}
    if schema == SCHEMA:
        return _v2_to_v1(record, members.get(IMAGES_MEMBER))
    raise RecordError(f"schema is {schema!r}, expected one of {READABLE_SCHEMAS}")


# --------------------------------------------------------------------------------------------------
# The record check: one place that knows what an m3w/1-shaped record may hold
# --------------------------------------------------------------------------------------------------


_ATTACH = (None, "following", "preceding")
_IMAGE_TEXT_FIELDS = ("member", "src", "alt", "sha256", "phash", "attach", "src_page")


def check_record(record: Any) -> dict[str, Any]:
    """`record` if it is a well-typed m3w/1 record (docs/format.md), else RecordError naming the
    first problem `record_problems` finds.

    Why one checker: shards come from anywhere (other builders, a damaged disk, a hostile upload) and
    every reader (Document.from_json, the trainer's loader, `m3w inspect verify`) must refuse the
    same records for the same reasons instead of each crashing differently on `texts: 5`, an image
    entry that is a string, an int `member` or a NaN."""
    for _code, message in record_problems(record):
        raise RecordError(message)
    return record


def record_problems(record: Any) -> Iterator[tuple[str, str]]:
    """(code, message) for each way an m3w/1-shaped record breaks the schema; nothing for a good one.

    Checked: an object of schema m3w/1 or m3w/2 with a str `url`; `texts`/`images` lists of one
    length with exactly one non-null per position, texts str, images objects whose text fields are
    str or null, `width`/`height` positive ints or null, `attach` following, preceding or null;
    `lang_score`, `p_next` finite numbers or null (p_next within [0, 1]); `lang`, `fetched`, `key`
    str or null; `source` and `stats` objects or null. Other keys are ignored (a newer writer may
    add some). Values are only looked at, never copied or recursed into, so the check costs one
    pass over the lists whatever `stats` holds. The codes are `m3w inspect verify`'s."""
    if not isinstance(record, dict):
        yield "schema.record", f"record is a JSON {_json_type(record)}, not an object"
        return
    if record.get("schema") not in READABLE_SCHEMAS:
        yield (
            "schema.version",
            f"unsupported schema {record.get('schema')!r}, expected one of {READABLE_SCHEMAS}",
        )
    if not isinstance(record.get("url"), str):
        yield "schema.url", f"url is {_json_type(record.get('url'))}, not a string"
    texts, images = record.get("texts"), record.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        yield (
            "schema.lists",
            f"texts ({_json_type(texts)}) and images ({_json_type(images)}) must be lists",
        )
        return
    if len(texts) != len(images):
        yield "schema.lists", f"texts ({len(texts)}) and images ({len(images)}) differ in length"
        return
    for pos, (text, image) in enumerate(zip(texts, images, strict=True)):
        if (text is None) == (image is None):
            yield "schema.position", f"position {pos}: exactly one of texts/images must be non-null"
        elif text is not None and not isinstance(text, str):
            yield "schema.text", f"position {pos}: text is {_json_type(text)}, not a string"
        elif image is not None:
            yield from _image_problems(pos, image)
    for name in ("lang_score", "p_next"):
        value = record.get(name)
        if value is not None and not _finite(value):
            yield f"schema.{name}", f"{name} {value!r} is not a finite number"
        elif name == "p_next" and value is not None and not 0 <= value <= 1:
            yield "schema.p_next", f"p_next {value!r} is not a probability"
    for name in ("lang", "fetched", "key"):
        if record.get(name) is not None and not isinstance(record[name], str):
            yield f"schema.{name}", f"{name} is {_json_type(record[name])}, not a string"
    source = record.get("source")
    if source is not None:
        if not isinstance(source, dict):
            yield "schema.source", f"source is {_json_type(source)}, not an object"
        elif source.get("warc") is not None and not isinstance(source["warc"], str):
            yield "schema.source", "source.warc is not a string"
        elif source.get("offset") is not None and not _int(source["offset"]):
            yield "schema.source", "source.offset is not an integer"
    if record.get("stats") is not None and not isinstance(record["stats"], dict):
        yield "schema.stats", f"stats is {_json_type(record['stats'])}, not an object"


def _image_problems(pos: int, image: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(image, dict):
        yield "schema.image", f"position {pos}: image entry is {_json_type(image)}, not an object"
        return
    for name in _IMAGE_TEXT_FIELDS:
        if image.get(name) is not None and not isinstance(image[name], str):
            yield "schema.image", f"position {pos}: image {name} is {_json_type(image[name])}"
    for name in ("width", "height"):
        value = image.get(name)
        if value is not None and not (_int(value) and value > 0):
            yield (
                "schema.image",
                f"position {pos}: image {name} {value!r} is not a positive integer",
            )
    if image.get("attach") not in _ATTACH:
        yield (
            "schema.attach",
            f"position {pos}: attach {image.get('attach')!r} not in {_ATTACH[1:]}",
        )
    candidates = image.get("candidates")
    if candidates is not None and not (
        isinstance(candidates, list) and all(isinstance(c, str) for c in candidates)
    ):
        yield "schema.image", f"position {pos}: image candidates is not a list of strings"


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
