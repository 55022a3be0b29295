"""Shards → tokenised Flamingo training batches (DESIGN §3, §4), streamed and resumable.

The loader is a chain of small generator stages, as webdataset's `tariterators` and `filters` are:

    shard urls → split by node and worker → (shuffled) shard order → tar samples (wds) → decode
    → sample shuffle buffer → tokenise (`<BOS> text <EOC> <image> text ... <EOC> <EOS>`)
    → random window of L tokens, first N images → tensors → collate (+ the [B, T, N] attachment mask)

Why we split shards ourselves instead of `webdataset.WebDataset(..., nodesplitter=...)`: wds 1.0.2 raises
under WORLD_SIZE > 1 unless a node splitter is given and again when a worker gets no shard (unless
`empty_check=False`); more importantly a resumable stream needs to know which shard, and which sample
inside it, each worker has consumed. So the shard order is a pure function of (seed, epoch), a worker's
share is `order[rank::world][worker::workers]` (webdataset's `split_by_node` then `split_by_worker`),
and the worker reports its position with every batch. We still read tars with webdataset's
`tar_file_iterator`/`group_by_keys` and open URLs with its `gopen` (`pipe:`, http, gs, ...) or fsspec
(s3://, gcs://, ...).

Every random choice (window start, resampled attachment draw, shuffle buffer) is seeded by
(seed, epoch, rank, worker) or by the document key, so an interrupted run that resumes from the saved
position sees exactly the batches of an uninterrupted one (tests/test_train.py checks the losses).

Drops are counted with reason codes `data.<why>` and never stop the stream: a shard that cannot be
opened or is truncated, a record that is not JSON or not schema m3w/1 or m3w/2, a document with no text, an image
that does not decode (that image becomes an invalid slot; its text stays).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import io
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from m3w_builder.document import (
    READABLE_SCHEMAS,
    BadJSON,
    RecordError,
    check_record,
    parse_record_json,
    read_shard_sample,
)
from m3w_builder.errors import ConfigError, InputError
from m3w_builder.reasons import Counts

log = logging.getLogger(__name__)

# Kept identical to model.flamingo's constants; repeated here so the loader never needs the model.
IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<|endofchunk|>"
ATTACH_MODES = ("shard", "resample", "following", "preceding")
IMAGE_MODES = ("true", "shuffled")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt", "caption", "text")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """One dataset of a mixture. Defaults follow Flamingo (Alayrac et al. 2022, §3 and appendix A.3.1)."""

    shards: str = ""  # brace pattern, folder, list file (*.txt), 'a::b', pipe:..., s3://...
    name: str = "m3w"
    weight: float = 1.0  # λ_m: the loss of this dataset is scaled by it (Flamingo eq. 2)
    batch_size: int = 4
    seq_len: int = 256  # L: Flamingo's M3W window is 256 tokens
    max_images: int = 5  # N: Flamingo samples up to 5 images per M3W window
    attach: str = (
        "shard"  # shard: the builder's draw; resample: redraw per doc; following|preceding
    )
    p_next: float = 0.5  # for attach=resample: Flamingo's per-page p_next = 1/2
    shuffle_shards: bool = True
    shuffle_buffer: int = 1000  # samples; 0 or 1 disables the sample shuffle
    resampled: bool = False  # draw shards with replacement forever (web-scale training)
    epoch_length: int | None = None  # samples per worker per epoch in resampled mode
    num_workers: int = 2
    seed: int = 0
    # "shuffled": every image of a batch is swapped for one of another document of the batch — the
    # control run of `m3w eval`'s ablations, which must not learn to use the images
    images: str = "true"

    def __post_init__(self) -> None:
        if self.attach not in ATTACH_MODES:
            raise ConfigError(f"attach must be one of {ATTACH_MODES}, got {self.attach!r}")
        if self.images not in IMAGE_MODES:
            raise ConfigError(f"images must be one of {IMAGE_MODES}, got {self.images!r}")
        if self.seq_len < 8 or self.max_images < 1 or self.batch_size < 1:
            raise ConfigError("seq_len >= 8, max_images >= 1 and batch_size >= 1 are required")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(slots=True)
class TokenIds:
    """The special token ids the layout needs, read once from the tokenizer."""

    bos: int
    eos: int
    pad: int
    image: int
    eoc: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenIds:
        image = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        eoc = tokenizer.convert_tokens_to_ids(EOC_TOKEN)
        unk = getattr(tokenizer, "unk_token_id", None)
        if image is None or eoc is None or (unk is not None and unk in (image, eoc)):
            raise ValueError(
                f"tokenizer lacks {IMAGE_TOKEN!r}/{EOC_TOKEN!r}: call model.flamingo.add_flamingo_tokens"
            )
        eos = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if bos is None or eos is None:
            raise ValueError(
                "tokenizer needs an eos token (used as bos/pad when those are missing)"
            )
        return cls(bos=bos, eos=eos, pad=pad, image=image, eoc=eoc)


# --------------------------------------------------------------------------------------------
# Shard lists and splitting
# --------------------------------------------------------------------------------------------
class ShardsError(InputError, ValueError):
    """A shard spec that names no shard at all, or only shards that do not exist."""


@dataclass(slots=True)
class ShardList:
    """A spec's shards split into those that exist (or cannot be checked: http, pipe:) and those
    that do not: a brace pattern over a half-copied dataset names both."""

    present: list[str]
    missing: list[str]

    def warn_missing(self, label: str, doing: str) -> None:
        """The one warning for the missing ones, if any: `label` names the flag and its value."""
        if self.missing:
            log.warning(
                "%s: %d of %d shards do not exist (first: %s); %s on the other %d",
                label,
                len(self.missing),
                len(self.missing) + len(self.present),
                self.missing[0],
                doing,
                len(self.present),
            )


def find_shards(spec: str | Iterable[str]) -> ShardList:
    """`expand_shards`, then which of them exist: local paths by stat, fsspec URLs (s3://, gs://)
    by one listing per parent folder. Raises ShardsError when none exists, so that training never
    starts on a dataset that can only ever warn; the missing ones are the caller's one warning."""
    urls = expand_shards(spec)
    listings: dict[str, set[str] | None] = {}
    present = [u for u in urls if _shard_exists(u, listings)]
    missing = [u for u in urls if u not in set(present)]
    if not present:
        raise ShardsError(
            f"{_spec_text(spec)}: none of its {len(urls)} shard(s) exists (first: {missing[0]})"
        )
    return ShardList(present, missing)


def _spec_text(spec: str | Iterable[str]) -> str:
    return spec if isinstance(spec, str) else " ".join(spec)


def _shard_exists(url: str, listings: dict[str, set[str] | None]) -> bool:
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url and not url.startswith("pipe:"):
        return os.path.isfile(url)
    scheme = url.split(":", 1)[0]
    if scheme in ("pipe", "http", "https") or len(listings) > 16:  # cannot list: assume present
        return True
    try:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(url)
        parent = fs._parent(path)
        if parent not in listings:
            try:
                listings[parent] = {fs._strip_protocol(p) for p in fs.ls(parent, detail=False)}
            except FileNotFoundError:
                listings[parent] = set()
        listing = listings[parent]
    except Exception:  # noqa: BLE001 - no fsspec backend or no permission to list: cannot tell
        return True
    return listing is None or fs._strip_protocol(path) in listing


def expand_shards(spec: str | Iterable[str]) -> list[str]:
    """A brace pattern, `a::b` list, folder of *.tar, text file of urls, or list → the shard urls.

    Folders and globs are sorted so every rank and worker sees the same list.
    """
    if not isinstance(spec, str):
        return [u for s in spec for u in expand_shards(s)]
    from webdataset.shardlists import expand_urls

    urls: list[str] = []
    for url in expand_urls(spec):
        if os.path.isdir(url):
            urls.extend(sorted(str(p) for p in Path(url).glob("*.tar")))
        elif url.endswith(".txt") and os.path.isfile(url):
            urls.extend(line.strip() for line in Path(url).read_text().splitlines() if line.strip())
        elif any(c in url for c in "*?[") and "://" not in url and not url.startswith("pipe:"):
            urls.extend(sorted(glob.glob(url)))
        else:
            urls.append(url)
    if not urls:
        raise ShardsError(
            f"{_spec_text(spec)}: matches no shard (give a brace pattern, a folder of .tar files, "
            "a glob, a .txt list or URLs)"
        )
    return urls


def split_shards(urls: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """webdataset's split_by_node then split_by_worker, with explicit arguments so that tests can
    simulate ranks. A worker may get none (fewer shards than ranks × workers): it then yields nothing,
    which is fine for a finite epoch; the trainer restarts epochs so every rank keeps stepping."""
    return urls[rank::world][worker::workers]


def _mix_seed(*parts: Any) -> int:
    """A stable 64-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def shard_order(urls: list[str], cfg: DataConfig, epoch: int) -> list[str]:
    """The epoch's global shard order: the same on every rank, so that splitting never duplicates."""
    order = list(urls)
    if cfg.shuffle_shards:
        random.Random(_mix_seed(cfg.seed, "shards", epoch)).shuffle(order)
    return order


def open_url(url: str) -> Any:
    """Open a shard for streaming: local path, `pipe:cmd`, wds schemes (http, gs, ais...) or fsspec."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the caller
    import webdataset  # noqa: F401 - registers webdataset.gopen in sys.modules

    gopen_mod = sys.modules["webdataset.gopen"]
    scheme = url.split(":", 1)[0]
    # webdataset pipes gs:// through the `gsutil` CLI; gcsfs (in our images) reads it in-process
    # like the builder does, so prefer it whenever it is installed.
    fsspec_first = scheme == "gs" and importlib.util.find_spec("gcsfs") is not None
    if scheme in gopen_mod.gopen_schemes and scheme != "__default__" and not fsspec_first:
        return gopen_mod.gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


# --------------------------------------------------------------------------------------------
# Position: what a restart needs (DESIGN §7)
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class WorkerPosition:
    """Where one logical worker's stream stands. `shards_done` whole shards of epoch `epoch` are
    consumed and `samples_in_shard` raw samples of the next one; `emitted` counts raw samples that left
    the reader since the epoch began (used to replay the shuffle buffer exactly)."""

    epoch: int = 0
    shards_done: int = 0
    samples_in_shard: int = 0
    emitted: int = 0
    batches: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "shards_done": self.shards_done,
            "samples_in_shard": self.samples_in_shard,
            "emitted": self.emitted,
            "batches": self.batches,
        }


# --------------------------------------------------------------------------------------------
# Stage 1: raw samples from a worker's shards (with position)
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class RawSample:
    key: str
    members: dict[str, bytes]
    url: str
    epoch: int
    shard_index: int  # index of the shard in this worker's list for the epoch
    index_in_shard: int


def read_shard(url: str, counts: Counts) -> Iterator[dict[str, Any]]:
    """webdataset's tar reader grouped by key; a shard that fails to open or is truncated ends early
    with a count (data.shard_open / data.shard_truncated), never an exception."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        return False  # stop this shard; the stream goes on with the next one

    try:
        stream = open_url(url)
    except Exception as exn:  # noqa: BLE001 - any open failure is a counted skip
        counts["data.shard_open"] += 1
        log.warning("cannot open shard %s: %s", url, exn)
        return
    try:
        try:
            files = tar_file_iterator(stream, handler=handler)
            tagged = ({**f, "__url__": url} for f in files)  # group_by_keys wants the url
            yield from group_by_keys(tagged, handler=handler)
        except Exception as exn:  # noqa: BLE001 - tarfile raises on truncation outside the handler
            errors.append(exn)
        if errors:
            counts["data.shard_truncated"] += 1
            log.warning("shard %s is truncated or corrupt: %s", url, errors[0])
    finally:
        stream.close()


def raw_samples(
    urls: list[str],
    cfg: DataConfig,
    rank: int,
    world: int,
    worker: int,
    workers: int,
    epoch: int,
    counts: Counts,
    skip_shards: int = 0,
    skip_samples: int = 0,
) -> Iterator[RawSample]:
    """One logical worker's raw samples for one epoch.

    Finite mode: this worker's share of the epoch's shuffled order. Resampled mode: shards drawn with
    replacement from the rank's share until `epoch_length` samples (forever when None). Shards before
    `skip_shards` are never opened; samples before `skip_samples` of the next one are read, not decoded.
    """
    if cfg.resampled:
        pool = split_shards(urls, rank, world, 0, 1) or urls
        rng = random.Random(_mix_seed(cfg.seed, "resample", epoch, rank, worker))
        mine: Iterable[str] = (rng.choice(pool) for _ in iter(int, 1))
    else:
        mine = split_shards(shard_order(urls, cfg, epoch), rank, world, worker, workers)
    produced = 0
    for shard_index, url in enumerate(mine):
        if shard_index < skip_shards:
            continue
        for i, sample in enumerate(read_shard(url, counts)):
            if shard_index == skip_shards and i < skip_samples:
                continue
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            yield RawSample(sample["__key__"], members, url, epoch, shard_index, i)
            produced += 1
            if cfg.resampled and cfg.epoch_length and produced >= cfg.epoch_length:
                return


# --------------------------------------------------------------------------------------------
# Stage 2: decode a raw sample into an ordered node list
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ImageRef:
    """An image of the document: undecoded bytes plus its attachment."""

    data: bytes | None
    preceding: bool


@dataclass(slots=True)
class DocSample:
    key: str
    nodes: list[str | ImageRef]
    raw: RawSample


def decode(sample: RawSample, counts: Counts) -> DocSample | None:
    """m3w/1 or m3w/2 record → nodes; a LAION-style pair (`jpg` + `txt`) → [image, caption] (Flamingo trains
    image-text pairs as the one-image case `<image> caption <EOC>`)."""
    members = sample.members
    if "json" in members and isinstance(members["json"], bytes | str):
        try:
            record = parse_record_json(members["json"])
        except BadJSON:
            counts["data.bad_json"] += 1
            return None
        except RecordError as e:  # nested past the recursion limit, or not an object
            counts["data.bad_record"] += 1
            log.warning("%s: %s: %s", sample.url, sample.key, e)
            return None
        if record.get("schema") in READABLE_SCHEMAS:
            return _decode_m3w(sample, record, counts)
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    caption_ext = next((e for e in CAPTION_EXTS if e in members), None)
    if image_ext and caption_ext:
        caption = members[caption_ext].decode("utf-8", "replace").strip()
        if not caption:
            counts["data.no_text"] += 1
            return None
        return DocSample(sample.key, [ImageRef(members[image_ext], False), caption], sample)
    counts["data.unknown_sample"] += 1
    return None


def _read_m3w(
    sample: RawSample, record: dict[str, Any], counts: Counts
) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """m3w/1 or m3w/2 sample → the m3w/1-shaped record and its images by member name; one
    reader (`m3w_builder.document.read_shard_sample`) for the loader, inspect and the writer."""
    try:
        return read_shard_sample(record, sample.members)
    except RecordError as e:
        counts["data.bad_record"] += 1
        log.warning("sample %s of %s: %s", sample.key, sample.url, e)
        return None


def _decode_m3w(sample: RawSample, record: dict[str, Any], counts: Counts) -> DocSample | None:
    """Nodes of a record of either schema, read through `read_shard_sample` and then checked by
    `m3w_builder.document.check_record` (the one record check the build's Document.from_json uses
    too); any other record is `data.bad_record`, logged, skipped."""
    read = _read_m3w(sample, record, counts)
    if read is None:
        return None
    record, members = read
    try:
        check_record(record)
    except RecordError as e:
        counts["data.bad_record"] += 1
        log.warning("%s: %s: bad m3w record: %s", sample.url, sample.key, e)
        return None
    texts, images = record["texts"], record["images"]
    nodes: list[str | ImageRef] = []
    for text, image in zip(texts, images):
        if text is not None:
            if text.strip():
                nodes.append(text)
        elif image is not None:
            member = (image.get("member") or "").lower()
            data = members.get(member)
            if data is None:
                counts["data.missing_image"] += 1
            nodes.append(ImageRef(data, image.get("attach") == "preceding"))
    if not any(isinstance(n, str) for n in nodes):
        counts["data.no_text"] += 1
        return None
    return DocSample(sample.key, nodes, sample)


# --------------------------------------------------------------------------------------------
# Stage 3: sample shuffle buffer
# --------------------------------------------------------------------------------------------
def shuffle(items: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """A seeded reservoir shuffle (webdataset's `shuffle` with our own RNG so a replay is exact)."""
    if bufsize <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) < bufsize:
            continue
        k = rng.randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------------------------
# Stage 4: tokenise and window (DESIGN §4)
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Layout:
    """A whole document as token ids; `image_pos[k]` is the position of image k's `<image>` token."""

    ids: list[int]
    image_pos: list[int]
    images: list[ImageRef]


def flow_texts(nodes: list[str | ImageRef]) -> list[str]:
    """The text of each text node as it reads in the flow: a newline between consecutive blocks, a
    space after an image. Also what a text-only LM is pretrained on (`m3w demo`), so that it knows
    the chunks' first tokens as the layout spells them."""
    texts: list[str] = []
    seen_image = prev_text = False
    for node in nodes:
        if isinstance(node, ImageRef):
            seen_image, prev_text = True, False
            continue
        texts.append(("\n" + node) if prev_text else (" " + node if seen_image else node))
        prev_text = True
    return texts


def layout(nodes: list[str | ImageRef], tokenizer: Any, tok: TokenIds) -> Layout:
    """`<BOS> text0 <EOC> <image> text1 <EOC> <image> text2 <EOC> <EOS>` (DESIGN §4).

    `<EOC>` closes every chunk before an `<image>` and at the end; a document that opens with an
    image gets no empty chunk 0 (`<BOS> <image> caption <EOC> <EOS>`, the pair case). Consecutive text
    nodes are joined with a newline, as they were separate blocks on the page.
    """
    texts = flow_texts(nodes)  # tokenised in one call
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    ids = [tok.bos]
    image_pos: list[int] = []
    images: list[ImageRef] = []
    for node in nodes:
        if isinstance(node, ImageRef):
            if len(ids) > 1:
                ids.append(tok.eoc)
            image_pos.append(len(ids))
            images.append(node)
            ids.append(tok.image)
        else:
            ids.extend(next(encoded))
    ids.extend([tok.eoc, tok.eos])
    return Layout(ids, image_pos, images)


@dataclass(slots=True)
class Window:
    ids: list[int]  # length <= L
    images: list[ImageRef]  # the first N images whose <image> token is inside the window
    doc_key: str = ""
    start: int = 0  # offset of the window in the document's token ids


def choose_window(lay: Layout, seq_len: int, max_images: int, rng: random.Random) -> Window:
    """A uniformly random window of `seq_len` tokens (the whole document when shorter) and the first
    `max_images` images whose `<image>` token falls inside it (Flamingo appendix A.3.1)."""
    start = rng.randrange(len(lay.ids) - seq_len + 1) if len(lay.ids) > seq_len else 0
    end = start + seq_len
    images = [im for p, im in zip(lay.image_pos, lay.images) if start <= p < end][:max_images]
    return Window(lay.ids[start:end], images, start=start)


# --------------------------------------------------------------------------------------------
# Stage 5: tensors
# --------------------------------------------------------------------------------------------
ImageTransform = Callable[[list[Image.Image]], torch.Tensor]


def make_image_transform(image_processor: Any) -> ImageTransform:
    """Wrap a transformers image processor (the vision tower's) as list[PIL] → [n, C, H, W] float."""

    def transform(images: list[Image.Image]) -> torch.Tensor:
        return image_processor(images=images, return_tensors="pt")["pixel_values"]

    return transform


def _decode_image(data: bytes | None, size: tuple[int, int] | None = None) -> Image.Image | None:
    """Bytes → RGB, or None when they do not decode. A JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that still covers `size` on both sides (Pillow's `draft`): the processor then
    resizes from fewer pixels, which is most of the cost for web photos larger than 224 px."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if size is not None and im.format == "JPEG":
                im.draft("RGB", size)
            return im.convert("RGB")
    except Exception:  # noqa: BLE001 - Pillow raises many types on corrupt data
        return None


def build_labels(
    input_ids: torch.Tensor, tok: TokenIds, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Next-token labels (unshifted; the model shifts): the ids, with padding marked -100. That
    `<image>` is never a target is the model's rule (model.flamingo.next_token_targets), applied
    wherever a loss is taken."""
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    return labels


def window_to_tensors(
    win: Window,
    cfg: DataConfig,
    tok: TokenIds,
    transform: ImageTransform,
    image_shape: tuple[int, int, int],
    counts: Counts,
) -> dict[str, torch.Tensor]:
    """One window → tensors: ids/attention/labels [L]; image_valid, preceding [N]; and `images`, the
    k valid images decoded (PIL, slot order). Images that fail to decode become invalid slots."""
    L, N = cfg.seq_len, cfg.max_images
    n_tok = len(win.ids)
    input_ids = torch.full((L,), tok.pad, dtype=torch.long)
    input_ids[:n_tok] = torch.tensor(win.ids, dtype=torch.long)
    attention_mask = torch.zeros(L, dtype=torch.long)
    attention_mask[:n_tok] = 1
    image_valid = torch.zeros(N, dtype=torch.bool)
    preceding = torch.zeros(N, dtype=torch.bool)
    decoded: list[Image.Image] = []
    for k, ref in enumerate(win.images):
        preceding[k] = ref.preceding
        if ref.data is None:  # member absent: already counted once, as data.missing_image
            continue
        im = _decode_image(ref.data, (image_shape[2], image_shape[1]))
        if im is None:
            counts["data.image_decode"] += 1
            continue
        decoded.append(im)
        image_valid[k] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": build_labels(input_ids, tok, attention_mask),
        "images": decoded,  # PIL images; collate runs the processor once per batch
        "image_valid": image_valid,
        "preceding": preceding,
    }


def pad_images(images: torch.Tensor, image_valid: torch.Tensor) -> torch.Tensor:
    """Packed images [M, C, H, W] → the model's pixel_values [B, N, C, H, W], zeros where invalid.
    Done by the trainer on the device, so the zeros never cross a process or PCIe."""
    out = images.new_zeros((*image_valid.shape, *images.shape[1:]))
    out[image_valid] = images
    return out


def resolve_attachment(doc: DocSample, cfg: DataConfig, epoch: int) -> None:
    """Apply `--attach`: keep the shard's draw, redraw it per document (seeded by key and epoch), or
    force one direction (DESIGN §4)."""
    refs = [n for n in doc.nodes if isinstance(n, ImageRef)]
    if cfg.attach == "shard":
        return
    if cfg.attach == "resample":
        rng = random.Random(_mix_seed(cfg.seed, "attach", doc.key, epoch))
        prec = rng.random() >= cfg.p_next
    else:
        prec = cfg.attach == "preceding"
    for ref in refs:
        ref.preceding = prec


# --------------------------------------------------------------------------------------------
# The dataset: chain of stages per worker
# --------------------------------------------------------------------------------------------
class ShardStream(torch.utils.data.IterableDataset):
    """Batches from one dataset, split over ranks and DataLoader workers, with resumable positions.

    Batching happens inside the worker (DataLoader(batch_size=None)) so that each batch comes from one
    worker and carries that worker's position after it (`batch["_position"]`). On resume, physical
    worker w plays logical worker (w + rotate) % workers, so that DataLoader's round-robin continues
    with the logical worker whose batch was next. With num_workers=0 the logical workers are
    interleaved in the same round-robin order inside the main process, so a run gives the same
    batches whatever the process layout.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        transform: ImageTransform,
        image_shape: tuple[int, int, int],
        *,
        rank: int = 0,
        world: int = 1,
        positions: dict[int, WorkerPosition] | None = None,
        rotate: int = 0,
        epochs: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.tok = TokenIds.from_tokenizer(tokenizer)
        self.transform = transform
        self.image_shape = image_shape
        self.rank, self.world = rank, world
        self.urls = find_shards(cfg.shards).present  # the trainer warned once about the others
        self.positions = positions or {}
        self.rotate = rotate
        self.epochs = epochs  # None: forever (the trainer counts steps)

    @property
    def workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            if info.num_workers != self.workers:
                raise ValueError("DataLoader num_workers must equal DataConfig.num_workers")
            yield from self.worker_batches((info.id + self.rotate) % self.workers)
            return
        iters = {w: self.worker_batches(w) for w in range(self.workers)}
        live = [(w + self.rotate) % self.workers for w in range(self.workers)]
        while live:
            for w in list(live):
                try:
                    yield next(iters[w])
                except StopIteration:
                    live.remove(w)

    def worker_batches(self, worker: int) -> Iterator[dict[str, Any]]:
        """Collate the windows of one logical worker into batches tagged with its position."""
        cfg = self.cfg
        start = self.positions.get(worker, WorkerPosition())
        counts = Counts()
        pos = WorkerPosition(**start.to_json())
        batch: list[dict[str, torch.Tensor]] = []
        for win, raw_sample, emitted in self.windows(worker, start, counts):
            pos.epoch, pos.emitted = raw_sample.epoch, emitted
            pos.shards_done = raw_sample.shard_index
            pos.samples_in_shard = raw_sample.index_in_shard + 1
            batch.append(
                window_to_tensors(win, cfg, self.tok, self.transform, self.image_shape, counts)
            )
            if len(batch) == cfg.batch_size:
                pos.batches += 1
                yield self._finish(batch, worker, pos, counts)
                batch = []
        if batch:
            pos.batches += 1
            yield self._finish(batch, worker, pos, counts)

    def _finish(
        self, batch: list[dict[str, torch.Tensor]], worker: int, pos: WorkerPosition, counts: Counts
    ) -> dict[str, Any]:
        out = collate(batch, self.tok, self.transform, self.image_shape)
        if self.cfg.images == "shuffled":
            out["images"] = images_of_other_documents(out["images"], out["image_valid"])
        out["_position"] = {"worker": worker, **pos.to_json()}
        out["_counts"] = counts.as_dict()
        out["_dataset"] = self.cfg.name
        counts.clear()
        return out

    def windows(
        self, worker: int, start: WorkerPosition, counts: Counts
    ) -> Iterator[tuple[Window, RawSample, int]]:
        """Epoch after epoch: raw samples → shuffle buffer → decode → tokenise → window.

        Without a shuffle buffer a resume skips straight to (shards_done, samples_in_shard). With one,
        the buffer's content is not in the checkpoint, so the epoch is replayed: samples are read
        but not decoded until `emitted` have left the buffer, which reproduces the order exactly.
        """
        cfg = self.cfg
        epoch = start.epoch
        replay = cfg.shuffle_buffer > 1
        first = True
        while self.epochs is None or epoch < self.epochs:
            skip_shards = start.shards_done if first and not replay else 0
            skip_samples = start.samples_in_shard if first and not replay else 0
            skip_emitted = start.emitted if first and replay else 0
            emitted = start.emitted if first and not replay else 0
            raw = raw_samples(
                self.urls, cfg, self.rank, self.world, worker, self.workers, epoch, counts,
                skip_shards, skip_samples,
            )  # fmt: skip
            rng = random.Random(_mix_seed(cfg.seed, "buffer", epoch, self.rank, worker))
            produced = 0
            for raw_sample in shuffle(raw, cfg.shuffle_buffer, rng):
                emitted += 1
                produced += 1
                if emitted <= skip_emitted:
                    continue
                doc = decode(raw_sample, counts)
                if doc is None:
                    continue
                resolve_attachment(doc, cfg, epoch)
                lay = layout(doc.nodes, self.tokenizer, self.tok)
                wrng = random.Random(_mix_seed(cfg.seed, "window", doc.key, epoch))
                win = choose_window(lay, cfg.seq_len, cfg.max_images, wrng)
                win.doc_key = doc.key
                yield win, raw_sample, emitted
            if produced == 0 and not (first and (skip_shards or skip_samples)):
                log.warning(
                    "%s: rank %d worker %d read nothing in epoch %d (%d shards): its stream ends",
                    cfg.name, self.rank, worker, epoch, len(self.urls),
                )  # fmt: skip
                return
            epoch += 1
            first = False


# --------------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------------
def collate(
    samples: list[dict[str, Any]],
    tok: TokenIds,
    transform: ImageTransform,
    image_shape: tuple[int, int, int],
) -> dict[str, Any]:
    """Stack per-sample tensors, preprocess every image of the batch in one processor call, and
    build the [B, T, N] attachment mask with model.masks (the one place the DESIGN §4 rule lives;
    without the model package the mask is left to the model).

    `images` is packed, [M, C, H, W] in (sample, slot) order = the order of `image_valid.nonzero()`,
    not a zero-padded [B, N, C, H, W]: a 256-token M3W window holds about one image, not five, so
    padding would multiply the worker → trainer traffic; `pad_images` pads on the device.
    """
    batch: dict[str, Any] = {
        k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "images"
    }
    pil = [im for s in samples for im in s["images"]]
    batch["images"] = transform(pil).to(torch.float32) if pil else torch.zeros((0, *image_shape))
    batch["media_mask"] = compute_media_mask(batch, tok)
    return batch


def images_of_other_documents(images: torch.Tensor, image_valid: torch.Tensor) -> torch.Tensor:
    """Packed images [M, C, H, W] (in `image_valid.nonzero()` order) rearranged so that every slot of
    a document holds an image of the next document of the batch that has images (cyclically): no
    image stays in its own document whenever two documents of the batch have images."""
    counts = image_valid.sum(1).tolist()
    starts = [sum(counts[:i]) for i in range(len(counts))]
    docs = [i for i, c in enumerate(counts) if c]
    if len(docs) < 2:
        return images
    order = []
    for i, doc in enumerate(docs):
        donor = docs[(i + 1) % len(docs)]
        order += [starts[donor] + j % counts[donor] for j in range(counts[doc])]
    return images[torch.tensor(order, dtype=torch.long)]


def compute_media_mask(batch: dict[str, Any], tok: TokenIds) -> torch.Tensor:
    from model.masks import attachment_mask

    return attachment_mask(
        batch["input_ids"], batch["preceding"], batch["image_valid"], tok.image, tok.eoc
    )


def make_loader(
    cfg: DataConfig,
    tokenizer: Any,
    image_processor: Any,
    *,
    rank: int = 0,
    world: int = 1,
    positions: dict[int, WorkerPosition] | None = None,
    rotate: int = 0,
    epochs: int | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `ShardStream`: batches are built in the workers (batch_size=None)."""
    stream = ShardStream(
        cfg,
        tokenizer,
        make_image_transform(image_processor),
        (3, *image_processor_size(image_processor)),
        rank=rank,
        world=world,
        positions=positions,
        rotate=rotate,
        epochs=epochs,
    )
    workers = cfg.num_workers
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def image_processor_size(image_processor: Any) -> tuple[int, int]:
    """(H, W) of the processor's output: crop_size when it crops (CLIP), else size (SigLIP)."""
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if not size:
            continue
        if isinstance(size, int):
            return (size, size)
        size = dict(size)
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size and attr == "size":
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    raise ValueError(f"cannot tell the output size of {type(image_processor).__name__}")
