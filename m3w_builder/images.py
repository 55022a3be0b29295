"""Images: decode guards, M3W/OBELICS filters, re-encoding and hashing, and the batch entry point.

`process_image(data, config)` turns untrusted bytes into the stored form or raises `Skip(code)`:

1. **Bytes cap and magic bytes.** The format comes from the first bytes, never from a header or a file
   name; Pillow is then asked to try only the plugin for that format, which keeps its other
   parsers (TIFF, ICO, ...) away from bytes that merely claim to be a JPEG.
2. **Header checks before any pixel is decoded.** `Image.open` reads only the header; the declared
   size is checked against `max_pixels` (decompression bombs, DESIGN §7) and the side/aspect filters
   before `load()`, so a 44-byte GIF declaring 4 gigapixels costs microseconds. We never touch
   `Image.MAX_IMAGE_PIXELS` (STYLE (c): OBELICS and OpenFlamingo turn the guard off process-wide).
3. **Decode** the first frame only (animated GIF/WebP/APNG), with JPEG `draft()` when the stored image
   will be smaller than the source: libjpeg then decodes at 1/2, 1/4 or 1/8 scale, the biggest saving
   of the whole stage. Truncated files are an error, not silently grey-padded.
4. **Normalise**: EXIF orientation applied (Flamingo's pages are shown upright to the reader, so the
   pixels must be too), every mode (CMYK, P, LA, I;16, ...) to RGB, transparency flattened on white.
5. **Filters**: Flamingo M3W (Alayrac et al. 2022, appendix A.3.3): sides ≥ 64 px, aspect ≤ 3, not
   single-coloured; OBELICS (Laurençon et al. 2023, §3.2): jpg/png/webp, sides 150–20,000, aspect ≤ 2.
6. **Store** re-encoded (JPEG or WebP) at `store_max_side`, with the original size, the sha256 of the
   stored bytes and a 64-bit DCT perceptual hash (pHash, Zauner 2010) for near-duplicate detection.

`resolve_images(docs, config, counts, archive)` does this for a batch of documents, reading bytes from
the WARC archive when the image was captured next to its page and from the web otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from m3w_builder.config import BuildConfig, ImageConfig
from m3w_builder.dedup import ImageDedup, url_key
from m3w_builder.document import Document, ImageNode
from m3w_builder.fetch import Fetcher, sniff_image_format
from m3w_builder.reasons import Counts, Skip
from m3w_builder.warc import ArchiveIndex

log = logging.getLogger(__name__)

# Pillow plugins allowed to open each sniffed format (an MPO is a JPEG with extra frames).
_PLUGINS: dict[str, list[str]] = {
    "jpeg": ["JPEG", "MPO"],
    "png": ["PNG"],
    "gif": ["GIF"],
    "webp": ["WEBP"],
    "bmp": ["BMP"],
    "ico": ["ICO"],
    "tiff": ["TIFF"],
    "avif": ["AVIF"],
}
_STORE_EXT = {"jpeg": "jpg", "webp": "webp"}


@dataclass(slots=True)
class StoredImage:
    """An image that passed every guard and filter, in the form written to the shard."""

    data: bytes
    ext: str  # "jpg" | "webp"
    width: int  # original (upright) size, before re-encoding
    height: int
    source_format: str  # sniffed: "jpeg", "png", ...
    sha256: str  # of `data`
    phash: str  # 16 hex chars, 64-bit DCT hash


def process_image(data: bytes, config: ImageConfig) -> StoredImage:
    """Untrusted bytes → StoredImage, or `Skip(code)` naming the first guard or filter that failed."""
    if len(data) > config.max_bytes:
        raise Skip("image.too_large_bytes", f"{len(data)} bytes > {config.max_bytes}")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise Skip("image.bad_content_type", f"not an image by its magic bytes: {data[:16]!r}")
    if fmt not in _PLUGINS or (config.formats is not None and fmt not in config.formats):
        raise Skip("image.unsupported_format", fmt)
    im = _open(data, fmt, config)
    orientation = _orientation(im)
    width, height = (im.height, im.width) if orientation in (5, 6, 7, 8) else im.size
    _check_size(width, height, config)
    stored = _passthrough_bytes(data, im, orientation, config)
    if stored is not None:
        # Pixels only for the uniform check and pHash: libjpeg decodes at 1/2–1/8 scale.
        im.draft("RGB", (_SMALL, _SMALL))
    im = _decode_first_frame(im, orientation, config)
    im = _to_rgb(im)
    rgb = im if max(im.size) <= config.store_max_side else _shrink(im, config.store_max_side)
    if _is_uniform(rgb, config.uniform_std_max):
        raise Skip("image.uniform", f"max channel std < {config.uniform_std_max}")
    if stored is None:
        stored = _encode(rgb, config)
    return StoredImage(
        data=stored,
        ext=_STORE_EXT[config.store_format],
        width=width,
        height=height,
        source_format=fmt,
        sha256=hashlib.sha256(stored).hexdigest(),
        phash=phash(rgb),
    )


_SMALL = 64  # side of the sample that the uniform check and pHash need
# JPEG markers kept by the passthrough: APP0 (JFIF) and APP14 (Adobe: says whether the data is YCbCr);
# every other APPn (EXIF with GPS, XMP, ICC, MPF, maker notes) and COM is dropped (ITU T.81 B.2.4).
_KEEP_APP = frozenset({0xE0, 0xEE})


def _passthrough_bytes(
    data: bytes, im: Image.Image, orientation: int, config: ImageConfig
) -> bytes | None:
    """The source JPEG minus its metadata, when `jpeg_passthrough` is on and nothing else would
    change: an upright 3-channel JPEG within `store_max_side`, stored as JPEG. This skips a lossy
    re-encode (generational loss, and half the CPU of the stage); None means re-encode."""
    if not (
        config.jpeg_passthrough
        and config.store_format == "jpeg"
        and im.format == "JPEG"
        and im.mode == "RGB"
        and orientation == 1
        and max(im.size) <= config.store_max_side
    ):
        return None
    return strip_jpeg_metadata(data)


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """Copy a JPEG's segments except metadata APPn/COM, and cut after EOI (drops MPO extra frames
    and trailing junk). None if the marker structure is not the plain one this expects."""
    out = bytearray(b"\xff\xd8")
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return None
        segment = data[pos : pos + 2 + length]
        if marker == 0xDA:  # SOS: the entropy-coded data (and any later scans) run to EOI
            eoi = data.find(b"\xff\xd9", pos + 2 + length)
            if eoi < 0:
                return None
            out += data[pos : eoi + 2]
            return bytes(out)
        if not (0xE0 <= marker <= 0xEF and marker not in _KEEP_APP) and marker != 0xFE:
            out += segment
        pos += 2 + length
    return None


def _open(data: bytes, fmt: str, config: ImageConfig) -> Image.Image:
    """Read only the header. Pillow's own bomb check (2 × MAX_IMAGE_PIXELS) may fire here already;
    ours (`max_pixels`) is applied right after, still before any pixel is decoded."""
    try:
        # No warnings.catch_warnings() here: it mutates process state and is not thread-safe.
        # Pillow's DecompressionBombWarning (1-2x its limit) is harmless: `max_pixels` decides below.
        im = Image.open(io.BytesIO(data), formats=_PLUGINS[fmt])
    except Image.DecompressionBombError as e:
        raise Skip("image.bomb", str(e)) from None
    except UnidentifiedImageError as e:
        raise Skip("image.decode_error", f"unidentified {fmt}: {e}") from None
    except ValueError as e:  # PNG zlib bomb in a text chunk: "Decompressed data too large"
        code = "image.bomb" if "too large" in str(e) else "image.decode_error"
        raise Skip(code, str(e)) from None
    except (OSError, SyntaxError, EOFError, KeyError, IndexError, TypeError, RuntimeError) as e:
        # RuntimeError: Pillow's AVIF plugin (libavif) on a corrupt file (found by the fuzz soak)
        raise Skip("image.decode_error", f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise Skip("image.decode_error", f"declared size {w}x{h}")
    if w * h > config.max_pixels:
        raise Skip("image.bomb", f"{w}x{h} = {w * h} pixels > {config.max_pixels}")
    return im


def _orientation(im: Image.Image) -> int:
    """EXIF Orientation (1 = upright; 5–8 swap the sides), read from the header only."""
    if im.format == "PNG" and "exif" not in im.info:
        # PngImageFile.getexif() would call load() to look for an eXIf chunk after the pixels:
        # that is a full decode before our filters, and it would hide a truncated file's error.
        return 1
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF is common and harmless: treat as upright
        return 1


def _check_size(width: int, height: int, config: ImageConfig) -> None:
    """Side and aspect filters on the declared size, before decoding (they don't depend on pixels)."""
    if min(width, height) < config.min_side:
        raise Skip("image.too_small", f"{width}x{height} < {config.min_side}")
    if max(width, height) > config.max_side:
        raise Skip("image.too_large", f"{width}x{height} > {config.max_side}")
    aspect = max(width, height) / min(width, height)
    if aspect > config.max_aspect:
        raise Skip("image.aspect", f"{width}x{height}: aspect {aspect:.2f} > {config.max_aspect}")


def _decode_first_frame(im: Image.Image, orientation: int, config: ImageConfig) -> Image.Image:
    """Decode frame 0 (animated images keep their first frame) and apply EXIF orientation."""
    if im.format in ("JPEG", "MPO") and max(im.size) > config.store_max_side:
        # libjpeg DCT scaling: decode at the smallest 1/2^k scale still ≥ the stored size.
        # Ask for the stored size with the source's aspect so the scale follows the longer side.
        scale = config.store_max_side / max(im.size)
        im.draft(None, (max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    try:
        im.load()
        if orientation != 1:  # exif_transpose copies even an upright image; skip it then
            im = ImageOps.exif_transpose(im) or im
    except Image.DecompressionBombError as e:
        raise Skip("image.bomb", str(e)) from None
    except ValueError as e:
        code = "image.bomb" if "too large" in str(e) else "image.decode_error"
        raise Skip(code, str(e)) from None
    except (
        OSError,
        SyntaxError,
        EOFError,
        KeyError,
        IndexError,
        TypeError,
        ZeroDivisionError,
        RuntimeError,  # libavif: "Decoding of color planes failed" (found by the fuzz soak)
    ) as e:
        code = "image.truncated" if "truncated" in str(e).lower() else "image.decode_error"
        raise Skip(code, f"{type(e).__name__}: {e}") from None
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB. Transparency is flattened on white (how a browser shows it on a white
    page); 16/32-bit greys are scaled, not clipped, so a 16-bit PNG does not come out white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        # Values ≤ 255 are 8-bit data widened (Pillow's own L→I;16); otherwise the full 16-bit range.
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def _shrink(im: Image.Image, side: int) -> Image.Image:
    im = im.copy()
    # reducing_gap: box-reduce by an integer factor first, then a short bicubic pass (Pillow ≥ 7).
    im.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return im


def _is_uniform(im: Image.Image, std_max: float) -> bool:
    """Single-coloured or nearly so: every channel's standard deviation under `std_max` (on 0–255).
    Measured on a 64×64 nearest-neighbour sample (a strided pick, not an average, so fine texture
    is not blurred into flatness): a flat image is flat at any scale, and this skips a full copy."""
    sample = np.asarray(im.resize((64, 64), Image.Resampling.NEAREST), np.float32).reshape(-1, 3)
    return bool(sample.std(axis=0).max() < std_max)


def _encode(im: Image.Image, config: ImageConfig) -> bytes:
    """Deterministic re-encoding: no metadata (EXIF GPS tags etc. are dropped), fixed settings."""
    out = io.BytesIO()
    if config.store_format == "jpeg":
        im.save(out, "JPEG", quality=config.store_quality, optimize=False)
    elif config.store_format == "webp":
        im.save(out, "WEBP", quality=config.store_quality, method=4)
    else:
        raise ValueError(f"store_format must be 'jpeg' or 'webp', got {config.store_format!r}")
    return out.getvalue()


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: D @ x is the DCT of a column vector x (numpy has no DCT)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT32 = _dct_matrix(32)


def phash(im: Image.Image) -> str:
    """64-bit perceptual hash (pHash): 32×32 grey → 2-D DCT → the 8×8 lowest frequencies without the
    DC term compared to their median. Robust to re-encoding and rescaling, so Hamming distance ≤ ~4
    marks near-duplicates (the same photo at two sizes). Returned as 16 hex chars."""
    factor = min(im.size) // 64
    if factor > 1:  # box-reduce first: the same anti-aliased result at a fraction of the cost
        im = im.reduce(factor)
    grey = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    coeffs = _DCT32 @ grey @ _DCT32.T  # (32, 32)
    low = coeffs[:8, :8].flatten()[1:]  # 63 coefficients, DC dropped (it is the mean brightness)
    bits = np.concatenate([[False], low > np.median(low)])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a `data:[<mediatype>][;base64],<data>` URI (RFC 2397)."""
    try:
        header, _, payload = uri.partition(",")
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except ValueError as e:
        raise Skip("image.decode_error", f"bad data: URI: {e}") from None


# --------------------------------------------------------------------------------------------------
# The batch entry point
# --------------------------------------------------------------------------------------------------

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def decoder_pool(workers: int = 0) -> ThreadPoolExecutor:
    """One decode pool per process and size, reused across batches. Pillow releases the GIL while
    decoding, resizing and encoding, so threads use every core without pickling bytes to processes."""
    workers = workers or max(1, os.cpu_count() or 1)
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="m3w-img")
        return _POOLS[workers]


@dataclass(slots=True)
class _Outcome:
    stored: StoredImage | None = None
    code: str | None = None  # the reason code when stored is None
    source: str = ""  # "archive" | "web" | "data_uri": where bytes were (or would have been) read
    url: str = ""  # the candidate whose bytes were stored (or last tried)
    got_bytes: bool = False  # bytes were read (a filter may still have refused them)


# Failures after which the next candidate of the same image is tried: the URL is gone (404/410,
# an HTML error page), its bytes are broken, or they are a placeholder (a tiny or single-colour
# picture shown until a lazy loader swaps in the real one). Other failures (timeouts, DNS, SSRF,
# noai, bombs, aspect) say something about the host or the picture itself, not about this URL.
NEXT_CANDIDATE_CODES = frozenset(
    {
        "image.http_404",
        "image.http_410",
        "image.bad_content_type",
        "image.decode_error",
        "image.truncated",
        "image.archive_error",
        "image.unsupported_format",
        "image.too_small",
        "image.uniform",
    }
)


def resolve_images(
    docs: list[Document],
    config: BuildConfig,
    counts: Counts,
    archive: ArchiveIndex | None = None,
) -> list[Document]:
    """Fill every ImageNode of a batch of documents, drop what fails, return the documents kept.

    Bytes come from `archive` when the image was captured there, else from the web (unless
    `config.fetch.offline`), each distinct URL once per batch. Each failure removes that image only:
    its code is appended to `doc.drops` and counted. Then, per document: exact and near duplicates
    (dedup.ImageDedup), and documents left with fewer than `min_images_per_doc` images are dropped
    as `doc.no_images` (Flamingo keeps only pages with an image); the upper bound is the DOM walk's
    (`images.max_images_per_doc`, `image.too_many`). Kept documents are returned in input order and are modified in place.
    Synchronous: the asyncio fetcher runs in its own event loop inside. For many batches,
    `iter_resolved` (or one `ImageResolver`) keeps the connections and DNS cache between them.
    """
    with ImageResolver(config, archive) as resolver:
        return resolver.resolve(docs, counts)


def iter_resolved(
    docs: Iterable[Document],
    config: BuildConfig,
    counts: Counts,
    archive: ArchiveIndex | None = None,
    *,
    batch_docs: int = 32,
    window: int = 4,
) -> Iterator[Document]:
    """`resolve_images` over a stream: batches of `batch_docs` documents with up to `window`
    batches in flight, kept documents yielded in input order. Overlapping batches hides the tail
    of each one (a single image stuck until its timeout no longer idles the whole fetcher); memory
    stays bounded by window × batch_docs documents."""
    pending: deque[_Pending] = deque()
    with ImageResolver(config, archive) as resolver:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_docs:
                pending.append(resolver.submit(batch, counts))
                batch = []
                while len(pending) >= window:
                    yield from pending.popleft().result()
        if batch:
            pending.append(resolver.submit(batch, counts))
        while pending:
            yield from pending.popleft().result()


class ImageResolver:
    """A persistent asyncio loop (in a helper thread) with one Fetcher, shared by many batches:
    keep-alive connections, the DNS cache and the global concurrency limit span batches.

        with ImageResolver(config, archive) as resolver:
            kept = resolver.resolve(docs, counts)          # or .submit(docs, counts).result()

    `counts` and the documents are touched only in the calling thread (in `submit` and in
    `result()`); the loop thread only produces per-URL outcomes. Because the loop has a thread of
    its own, this also works when the caller already runs an event loop (an async Ray actor)."""

    def __init__(self, config: BuildConfig, archive: ArchiveIndex | None = None) -> None:
        self.config = config
        self.archive = archive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fetcher: Fetcher | None = None
        self._slots: asyncio.Semaphore | None = None

    def __enter__(self) -> ImageResolver:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="m3w-image-loop", daemon=True
        )
        self._thread.start()
        self._call(self._open())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join()
            self._loop.close()
            self._loop = None

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "use `with ImageResolver(...)`"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.config.fetch.concurrency))
        if not self.config.fetch.offline:
            self._fetcher = await Fetcher(self.config.fetch).__aenter__()

    async def _close(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.__aexit__(None, None, None)
            self._fetcher = None

    def resolve(self, docs: list[Document], counts: Counts) -> list[Document]:
        return self.submit(docs, counts).result()

    def submit(self, docs: list[Document], counts: Counts) -> _Pending:
        """Start resolving a batch; `.result()` on the returned handle finishes it."""
        images = _distinct_images(docs, counts)
        assert self._loop is not None, "use `with ImageResolver(...)`"
        future = asyncio.run_coroutine_threadsafe(self._resolve_all(images), self._loop)
        return _Pending(docs, future, self.config, counts)

    async def _resolve_all(self, images: list[tuple[str, ...]]) -> dict[tuple[str, ...], _Outcome]:
        """Every distinct candidate list → its outcome. At most `fetch.concurrency` images are in
        flight at once (across batches), which bounds memory to about concurrency × max_bytes of
        raw bodies (decoded pixels live only inside one decode call per worker thread)."""
        results = await asyncio.gather(*(self._one(c) for c in images))
        return dict(zip(images, results, strict=True))

    async def _one(self, candidates: tuple[str, ...]) -> _Outcome:
        """Resolve one image from its candidate URLs (best first): every archived candidate in
        order, the first success winning; only when none succeeded, the ones not archived from
        the web, in order, at most `fetch.max_candidate_fetches` requests; a failure moves on to
        the next candidate only when it says "not this URL" (NEXT_CANDIDATE_CODES)."""
        assert self._slots is not None
        async with self._slots:
            archived = [u for u in candidates if self._archived(u)]
            outcome: _Outcome | None = None
            for url in archived:
                outcome = await self._try(url, "archive")
                if outcome.stored is not None or outcome.code not in NEXT_CANDIDATE_CODES:
                    return outcome
            remote = []
            for url in candidates:
                if url in archived:
                    continue
                status = self.archive.failure(url) if self.archive is not None else None
                if status is None:
                    remote.append(url)
                elif outcome is None or outcome.code == "image.not_archived":
                    # the crawler got this status: a dead link, not worth a request
                    outcome = _Outcome(None, f"image.http_{status}", "archive", url)
            if self._fetcher is None:  # offline: the archive was all there is
                local = [u for u in remote if u.startswith("data:")]
                for url in local:
                    outcome = await self._try(url, "data_uri")
                    if outcome.stored is not None:
                        return outcome
                return outcome or _Outcome(None, "image.not_archived", "", candidates[0])
            fetches = 0
            for url in remote:
                if not url.startswith("data:"):
                    if fetches >= self.config.fetch.max_candidate_fetches:
                        break
                    fetches += 1
                outcome = await self._try(url, "data_uri" if url.startswith("data:") else "web")
                if outcome.stored is not None or outcome.code not in NEXT_CANDIDATE_CODES:
                    return outcome
            return outcome or _Outcome(None, "image.not_archived", "", candidates[0])

    def _archived(self, url: str) -> bool:
        return (
            self.archive is not None
            and not url.startswith("data:")
            and (self.archive.lookup(url) is not None)
        )

    async def _try(self, url: str, source: str) -> _Outcome:
        """Bytes of one candidate from `source`, processed; a failure is an outcome, not raised."""
        config, loop = self.config, asyncio.get_running_loop()
        pool = decoder_pool(config.images.decode_workers)
        got_bytes = False
        try:
            if source == "data_uri":
                data = decode_data_uri(url)
            elif source == "archive":
                assert self.archive is not None
                data = await loop.run_in_executor(
                    pool, self.archive.read, url, config.images.max_bytes
                )
                if data is None:
                    return _Outcome(None, "image.not_archived", "", url)
            else:
                assert self._fetcher is not None
                cap = min(config.images.max_bytes, config.fetch.max_response_bytes)
                data = (await self._fetcher.fetch(url, sniff=True, max_bytes=cap)).body
            got_bytes = True
            stored = await loop.run_in_executor(pool, _process, data, config)
            return _Outcome(stored, None, source, url, True)
        except Skip as e:
            log.debug("image skipped: %s (%s)", e, url[:200])
            return _Outcome(None, e.code, source, url, got_bytes)
        except Exception:  # a bug or an unforeseen decoder error: one image, not the job
            log.exception("image failed unexpectedly: %s", url[:200])
            return _Outcome(None, "image.internal_error", source, url, got_bytes)


@dataclass(slots=True)
class _Pending:
    """A submitted batch; `result()` waits for its outcomes and applies them to the documents."""

    docs: list[Document]
    future: Future[dict[tuple[str, ...], _Outcome]]
    config: BuildConfig
    counts: Counts

    def result(self) -> list[Document]:
        outcomes = self.future.result()
        return [doc for doc in self.docs if _finish(doc, outcomes, self.config, self.counts)]


def candidates_of(node: ImageNode) -> tuple[str, ...]:
    """The URLs that may hold an image's picture, best first (the DOM's list, else its `src`)."""
    return tuple(node.candidates) if node.candidates else (node.src,)


def _distinct_images(docs: list[Document], counts: Counts) -> list[tuple[str, ...]]:
    """Drop an image repeated inside one page (its preferred URL seen before: resolved and kept
    once), and list the batch's distinct candidate lists."""
    wanted: dict[tuple[str, ...], None] = {}
    for doc in docs:
        seen: set[str] = set()
        kept_nodes = []
        for node in doc.nodes:
            if isinstance(node, ImageNode):
                key = node.src if node.src.startswith("data:") else url_key(node.src)
                if key in seen:
                    _drop(doc, "image.duplicate", counts)
                    continue
                seen.add(key)
                wanted[candidates_of(node)] = None
            kept_nodes.append(node)
        doc.nodes = kept_nodes
    return list(wanted)


def _drop(doc: Document, code: str, counts: Counts) -> None:
    doc.drops.append(code)
    counts[code] += 1


def _finish(
    doc: Document,
    outcomes: dict[tuple[str, ...], _Outcome],
    config: BuildConfig,
    counts: Counts,
) -> bool:
    """Apply outcomes, within-document dedup and the per-document caps; False drops the document."""
    dedup = ImageDedup(max_distance=config.dedup.image_phash_max_distance)
    nodes = []
    n_images = 0
    for node in doc.nodes:
        if isinstance(node, ImageNode):
            outcome = outcomes[candidates_of(node)]
            if outcome.got_bytes:  # progress: where each image's bytes came from
                counts[f"image.from_{outcome.source}"] += 1
            if outcome.stored is None:
                _drop(doc, outcome.code or "image.unknown", counts)
                continue
            stored = outcome.stored
            code = dedup.check(stored.sha256, stored.phash)
            if code is not None:
                _drop(doc, code, counts)
                continue
            node.data, node.ext, node.sha256, node.phash = (
                stored.data,
                stored.ext,
                stored.sha256,
                stored.phash,
            )
            node.width, node.height = stored.width, stored.height
            if outcome.url != node.src:  # the page preferred another size or copy
                node.src_page, node.src = node.src, outcome.url
            node.candidates = []
            n_images += 1
            counts["image.kept"] += 1
        nodes.append(node)
    doc.nodes = nodes
    if n_images < config.images.min_images_per_doc:
        counts["doc.no_images"] += 1
        return False
    return True


def _process(data: bytes, config: BuildConfig) -> StoredImage:
    return process_image(data, config.images)
