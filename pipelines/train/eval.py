"""`m3w eval`: does a trained Flamingo look at the images? (issue 13 §3)

Two measurements on shards the run did not train on, with the trainer's own model loading
(`pipelines.train.loop.build_parts`) and data pipeline (`pipelines.train.data`), so that the layout, windows,
labels and attachment masks are exactly the training ones:

1. **Image ablations.** Every eval batch is scored four times, under
   (a) `true_images`; (b) `shuffled_images`: every valid image slot holds a valid image of another
   document of the eval stream (a seeded derangement, slot structure unchanged); (c) `no_images`:
   every slot invalid; (d) `flipped_attachment`: `preceding = ~preceding` on every valid slot.
   The cross-entropy is split by the TRUE attachment mask (`Flamingo.media_mask` of the batch's
   `preceding` and `image_valid`): a target token is *attached* when the position that predicts it
   attends to an image, *unattached* otherwise; label -100 and `<image>` targets are excluded as in
   training (`model.flamingo._shift_loss`). A model that uses the images has (a) clearly below
   (b), (c) and (d) on attached text, and about the same loss on unattached text in (a)-(c).
   (c) keeps the pixel tensor and marks every slot invalid, the way a training batch without
   images looks, rather than passing `pixel_values=None`: where `None` skips the xattn blocks (the
   model did until the blocks were made to run without images), their gated feed-forward, which
   acts on every token, would be skipped too, and (c) would measure the blocks, not the images.
2. **Few-shot in context** (OpenFlamingo's evaluation style, Alayrac et al. 2022 §3.1): for each
   line of a JSONL file of captioned images, a prompt of k support pairs `<image> caption <EOC>`
   from the other lines, then `<image>` of the query, laid out by `pipelines.train.data.layout` exactly as
   a training document that opens with an image; greedy `Flamingo.generate` until `<EOC>`/EOS; the
   first value of each attribute named in the generation is scored against the line's.

`evaluate()` is the library call (`m3w demo` hands in its in-memory model); `register()` adds the
CLI. A user's mistake (no checkpoint, shards matching nothing, a bad few-shot line) is a UserError:
one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from m3w_builder.errors import ConfigError, InputError
from model.flamingo import next_token_targets
from pipelines.cli_help import DefaultsFormatter
from pipelines.train import checkpoint
from pipelines.train.checks import check_model_ref
from pipelines.train.config import TrainConfig
from pipelines.train.data import (
    DataConfig,
    ImageRef,
    TokenIds,
    find_shards,
    layout,
    make_image_transform,
    make_loader,
    pad_images,
)
from pipelines.train.loop import Parts, autocast_for, build_parts, unwrap_model

log = logging.getLogger(__name__)

CONDITIONS = ("true_images", "shuffled_images", "no_images", "flipped_attachment")
DEFAULT_SHOTS = (0, 2, 4, 8)  # OpenFlamingo reports 0, 4, 8, 16, 32 shots; 2 fits small files
# Batches whose images are deranged together: a group is closed once it has this many batches and
# no window holds more than half of its images (a derangement then exists), which bounds memory.
SHUFFLE_GROUP_BATCHES = 8
FLAMINGO_CONFIG = "flamingo_config.json"  # model.flamingo.CONFIG_NAME: `final/` of a run
FLAMINGO_WEIGHTS = "flamingo_trainable.safetensors"  # model.flamingo.WEIGHTS_NAME
# FlamingoConfig fields that are no `model.flamingo` setting of a TrainConfig: the model section's
# own (lm, vision, cross_attn_every_n_layers) and the token ids `Flamingo.from_models` fills in
DERIVED_FIELDS = ("lm", "vision", "cross_attn_every_n_layers", "image_token_id", "eoc_token_id")
DERIVED_FIELDS += ("new_token_ids", "base_vocab_size")


# --------------------------------------------------------------------------------------------
# Which checkpoint, and the model it records
# --------------------------------------------------------------------------------------------
@dataclass
class EvalModel:
    """A model ready to evaluate: its parts, the TrainConfig of the run (None when unknown) and
    where it came from."""

    parts: Parts
    config: TrainConfig | None = None
    path: Path | None = None
    step: int | None = None


@dataclass
class Found:
    """A checkpoint on disk, checked and read: a step folder (state.json, trainable.pt) or a
    `final/` folder (flamingo_config.json + safetensors)."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None = None  # state.json of a step folder
    flamingo: dict[str, Any] | None = None  # flamingo_config.json of a final/ folder


def find_checkpoint(ref: str | Path) -> Found:
    """`--checkpoint` → the checkpoint it means: a step folder; `RUN/checkpoints/latest` (the one
    it names, else the newest complete one); the run folder or its `checkpoints/` (the newest
    complete checkpoint, as `m3w train --resume` chooses it); or a `final/` folder."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise InputError(f"--checkpoint {ref}: no such file or folder")
    if path.is_file():
        if path.name != "latest":
            raise InputError(
                f"--checkpoint {ref}: is a file; give RUN/checkpoints/step-N, "
                "RUN/checkpoints/latest or the run folder RUN"
            )
        named = checkpoint.latest(path.parent)
        if named is not None:
            try:
                return _read_step(named)
            except checkpoint.CheckpointError as e:
                log.warning("%s names %s, which is unusable: %s", path, named.name, e)
        return _newest(path.parent, ref)
    if (path / "state.json").is_file() or path.name.startswith("step-"):
        try:
            return _read_step(path)
        except checkpoint.CheckpointError as e:
            raise InputError(f"--checkpoint {ref}: {e.file} {e.why}") from None
    if (path / FLAMINGO_CONFIG).is_file():
        return _read_final(path)
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if checkpoint.candidates(root):
        return _newest(root, ref)
    if (path / "final" / FLAMINGO_CONFIG).is_file():
        return _read_final(path / "final")
    raise InputError(
        f"--checkpoint {ref}: holds no checkpoint (no state.json, step-*/, checkpoints/ or final/)"
    )


def _newest(root: Path, ref: str | Path) -> Found:
    """The newest complete checkpoint under `root` (checkpoint.candidates' order); each newer one
    that is skipped is one warning naming why."""
    skipped = []
    for path in checkpoint.candidates(root):
        try:
            return _read_step(path)
        except checkpoint.CheckpointError as e:
            log.warning(
                "checkpoint %s is unusable: %s %s; trying an older one", path, e.file, e.why
            )
            skipped.append(path.name)
    unusable = f" ({len(skipped)} unusable, see above)" if skipped else ""
    raise InputError(f"--checkpoint {ref}: no complete checkpoint in {root}{unusable}")


def _read_step(path: Path) -> Found:
    """A step folder's state.json and trainable weights, checked against its completion marker the
    way `checkpoint.read` does; the optimiser state (twice the weights) is never read."""
    marker = path / checkpoint.MARKER
    if marker.exists():
        try:
            sizes = dict(json.loads(marker.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            raise checkpoint.CheckpointError(path, checkpoint.MARKER, "does not parse") from None
        for name in ("state.json", "trainable.pt"):
            try:
                actual = (path / name).stat().st_size
            except OSError:
                raise checkpoint.CheckpointError(path, name, "is missing") from None
            if name in sizes and actual != sizes[name]:
                why = f"has {actual:,} bytes, the marker says {sizes[name]:,}"
                raise checkpoint.CheckpointError(path, name, why)
    try:
        state = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        raise checkpoint.CheckpointError(path, "state.json", "is missing") from None
    except (OSError, ValueError) as e:
        raise checkpoint.CheckpointError(path, "state.json", f"does not parse ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise checkpoint.CheckpointError(path, "state.json", "is not a checkpoint state")
    if state.get("version") != checkpoint.VERSION:
        why = f"has version {state.get('version')}, expected {checkpoint.VERSION}"
        raise checkpoint.CheckpointError(path, "state.json", why)
    try:
        weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise checkpoint.CheckpointError(path, "trainable.pt", "is missing") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure: truncated or corrupt
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = f"does not load (truncated or corrupt: {first})"
        raise checkpoint.CheckpointError(path, "trainable.pt", why) from None
    return Found(path, weights, state=state)


def _read_final(path: Path) -> Found:
    """`Flamingo.save_trainable` output (a run's `final/`); the run's TrainConfig, for the data
    settings, comes from a checkpoint beside it when there is one."""
    from safetensors.torch import load_file

    try:
        flamingo = json.loads((path / FLAMINGO_CONFIG).read_text())
        weights = load_file(str(path / FLAMINGO_WEIGHTS))
    except FileNotFoundError as e:
        raise InputError(f"--checkpoint {path}: {Path(e.filename or '').name} is missing") from None
    except Exception as e:  # noqa: BLE001 - a truncated safetensors file or broken JSON
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"--checkpoint {path}: does not load ({first})") from None
    state = None
    for step in checkpoint.candidates(path.parent / "checkpoints"):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((step / "state.json").read_text())
            break
    return Found(path, weights, state=state, flamingo=flamingo)


def _run_flamingo_config(found: Found) -> dict[str, Any] | None:
    """The FlamingoConfig the run saved in `RUN/final/`, for a step folder whose TrainConfig names
    no model (a run handed its model in memory, as `m3w demo` does)."""
    if found.flamingo is not None:
        return found.flamingo
    path = found.path.parent.parent / "final" / FLAMINGO_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_checkpoint(
    ref: str | Path | Found,
    *,
    lm: str | None = None,
    vision: str | None = None,
    tokenizer: str | None = None,
) -> EvalModel:
    """The model a checkpoint records, rebuilt by the trainer's `build_parts` (frozen LM and tower
    by id or local path, the Flamingo settings of the run) with the checkpoint's trainable weights.

    `lm`, `vision` and `tokenizer` replace what the checkpoint names; they are needed when it names
    none and the run left no `final/flamingo_config.json` either."""
    found = ref if isinstance(ref, Found) else find_checkpoint(ref)
    cfg = TrainConfig()
    if found.state is not None:
        try:
            cfg = TrainConfig.from_dict(found.state["config"])
        except ConfigError as e:
            raise InputError(f"--checkpoint {found.path}: its config does not load: {e}") from None
    saved = None if cfg.model.lm and cfg.model.vision else _run_flamingo_config(found)
    if saved is not None:
        cfg.model.lm, cfg.model.vision = saved.get("lm"), saved.get("vision")
        cfg.model.cross_attn_every_n_layers = saved.get("cross_attn_every_n_layers", 1)
        cfg.model.flamingo = {k: v for k, v in saved.items() if k not in DERIVED_FIELDS}
    for name, value in (("lm", lm), ("vision", vision), ("tokenizer", tokenizer)):
        if value:
            setattr(cfg.model, name, value)
    if not cfg.model.lm or not cfg.model.vision:
        raise InputError(
            f"--checkpoint {found.path}: the run's config names no model (it was handed one in "
            "memory, as `m3w demo` does); give --lm and --vision"
        )
    for key in ("lm", "vision", "tokenizer"):
        if getattr(cfg.model, key):
            check_model_ref(f"--{key}", getattr(cfg.model, key))
    parts = build_parts(cfg)
    _load_weights(parts.model, found.weights, found.path)
    step = found.state.get("step") if found.state and found.flamingo is None else None
    return EvalModel(parts, cfg if found.state else None, found.path, step)


def _load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Every trainable weight of `model` from `weights` (names as `get_state_dict` writes them);
    a weight it does not have, or one of another shape, is an error naming the first."""
    weights = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in weights.items()}
    known = set(model.state_dict())
    unexpected = sorted(set(weights) - known)
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in weights)
    if unexpected or missing:
        raise InputError(
            f"--checkpoint {where}: its weights do not fit the model built from its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "give the --lm/--vision it trained"
        )
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise InputError(
            f"--checkpoint {where}: its weights do not fit the model built from its config: {first}"
        ) from None


# --------------------------------------------------------------------------------------------
# The eval stream
# --------------------------------------------------------------------------------------------
def eval_data_config(
    shards: str | Sequence[str],
    config: TrainConfig | None,
    *,
    batch_size: int,
    seq_len: int | None,
    max_images: int | None,
    attach: str | None,
    seed: int,
    workers: int,
) -> DataConfig:
    """The first training dataset's layout settings (seq_len, max_images, attach, p_next), one pass
    over `shards` in file order: no shard shuffle, no sample buffer, no resampling, true images."""
    template = config.data[0] if config is not None and config.data else DataConfig()
    known = {f.name for f in dataclasses.fields(DataConfig)}
    changes: dict[str, Any] = {
        "shards": shards if isinstance(shards, str) else "::".join(shards),
        "name": "eval",
        "batch_size": batch_size,
        "shuffle_shards": False,
        "shuffle_buffer": 0,
        "resampled": False,
        "epoch_length": None,
        "num_workers": workers,
        "seed": seed,
    }
    if "images" in known:  # a control run trained on shuffled images: evaluate on the true ones
        changes["images"] = "true"
    for name, value in (("seq_len", seq_len), ("max_images", max_images), ("attach", attach)):
        if value is not None:
            changes[name] = value
    try:
        return dataclasses.replace(template, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def derangement(owners: Sequence[int], rng: random.Random) -> list[int] | None:
    """A seeded permutation `d` of the images with `owners[d[j]] != owners[j]` for every j, or None
    when none exists (one owner holds more than half of them).

    Owners are laid out in random blocks (random order inside each) and every image takes the one
    `biggest` places further round: a block is at most `biggest` ≤ M/2 long, so the shift always
    lands in another owner's block."""
    blocks: dict[int, list[int]] = {}
    for j, owner in enumerate(owners):
        blocks.setdefault(owner, []).append(j)
    m = len(owners)
    biggest = max((len(b) for b in blocks.values()), default=0)
    if not derangeable(owners):
        return None
    groups = list(blocks.values())
    rng.shuffle(groups)
    for g in groups:
        rng.shuffle(g)
    order = [j for g in groups for j in g]
    donors = [0] * m
    for pos, j in enumerate(order):
        donors[j] = order[(pos + biggest) % m]
    return donors


def derangeable(owners: Sequence[int]) -> bool:
    """True when no owner holds more than half of the images (no image at all included)."""
    counts: dict[int, int] = {}
    for owner in owners:
        counts[owner] = counts.get(owner, 0) + 1
    return 2 * max(counts.values(), default=0) <= len(owners)


def _donors(owners: list[int], rng: random.Random) -> tuple[list[int], int]:
    """`derangement`, else (one window holds most images of the last group) a draw with
    replacement among the images of other windows; returns the donors and how many were drawn."""
    exact = derangement(owners, rng)
    if exact is not None:
        return exact, 0
    if len(set(owners)) < 2:
        raise InputError(
            "--shards: only one window of the eval stream has images: the shuffled-image "
            "ablation needs images of two documents; give more shards"
        )
    donors = [rng.choice([i for i, o in enumerate(owners) if o != owner]) for owner in owners]
    return donors, len(owners)


def _owners(batch: dict[str, Any], first_row: int) -> list[int]:
    """The window (a running row number) of every packed image, in `image_valid.nonzero()` order."""
    rows = batch["image_valid"].nonzero()[:, 0]
    return [first_row + int(r) for r in rows]


def shuffle_groups(
    batches: Iterable[dict[str, Any]], size: int = SHUFFLE_GROUP_BATCHES
) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches in groups whose images can be deranged (see SHUFFLE_GROUP_BATCHES). A
    group is handed on only when the next one closes, so that a last group too small to derange
    on its own is merged into the one before it."""
    pending: list[dict[str, Any]] | None = None
    current: list[dict[str, Any]] = []
    owners: list[int] = []
    rows = 0
    for batch in batches:
        batch["_owners"] = _owners(batch, rows)
        rows += int(batch["input_ids"].shape[0])
        current.append(batch)
        owners += batch["_owners"]
        closable = len(current) >= size
        if closable and derangeable(owners):
            if pending is not None:
                yield pending
            pending, current, owners = current, [], []
    if current and pending is not None and not derangeable(owners):
        pending, current = pending + current, []
    if pending is not None:
        yield pending
    if current:
        yield current


# --------------------------------------------------------------------------------------------
# Losses under the four conditions
# --------------------------------------------------------------------------------------------
@dataclass
class LossSums:
    """Σ cross-entropy and token counts per condition and token kind (attached / unattached)."""

    sums: dict[str, dict[str, float]] = field(
        default_factory=lambda: {c: {"attached": 0.0, "unattached": 0.0} for c in CONDITIONS}
    )
    tokens: dict[str, int] = field(default_factory=lambda: {"attached": 0, "unattached": 0})

    def mean(self, condition: str, kind: str) -> float | None:
        if kind == "all":
            n = sum(self.tokens.values())
            total = sum(self.sums[condition].values())
            return total / n if n else None
        n = self.tokens[kind]
        return self.sums[condition][kind] / n if n else None


def _token_nll(flamingo: Any, inputs: dict[str, Any], targets: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy [B, T-1] in fp32, as the training loss computes it."""
    logits = flamingo(**inputs).logits[:, :-1].float()  # (B, T-1, V)
    return F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")


def score_batch(
    flamingo: Any,
    batch: dict[str, Any],
    donor_images: torch.Tensor,
    sums: LossSums,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> None:
    """Add one batch's losses under every condition to `sums`. `donor_images` are the batch's
    packed images moved between documents (`derangement`)."""
    ids = batch["input_ids"].to(device)
    attention = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    valid = batch["image_valid"].to(device)
    preceding = batch["preceding"].to(device)
    pixels = pad_images(batch["images"].to(device), valid)  # (B, N, C, H, W)
    true_mask = flamingo.media_mask(ids, preceding, valid)  # (B, T, N)
    targets = next_token_targets(labels, flamingo.config.image_token_id)  # (B, T-1)
    is_target = targets != -100
    sees = true_mask[:, :-1].any(-1)  # the position that predicts target t+1 sees an image
    kinds = {"attached": is_target & sees, "unattached": is_target & ~sees}
    flipped = torch.where(valid, ~preceding, preceding)
    conditions = {
        "true_images": (pixels, valid, true_mask),
        "shuffled_images": (pad_images(donor_images.to(device), valid), valid, true_mask),
        # every slot invalid, pixels kept: see the module docstring for why not pixel_values=None
        "no_images": (
            torch.zeros_like(pixels),
            torch.zeros_like(valid),
            torch.zeros_like(true_mask),
        ),
        "flipped_attachment": (pixels, valid, flamingo.media_mask(ids, flipped, valid)),
    }
    for name, (pv, image_valid, mask) in conditions.items():
        inputs = {"input_ids": ids, "attention_mask": attention, "pixel_values": pv}
        inputs.update(image_valid=image_valid, media_mask=mask)
        with autocast or contextlib.nullcontext():
            nll = _token_nll(flamingo, inputs, targets)
        for kind, where in kinds.items():
            sums.sums[name][kind] += float(nll[where].double().sum())
    for kind, where in kinds.items():
        sums.tokens[kind] += int(where.sum())


def score_stream(
    flamingo: Any,
    batches: Iterator[dict[str, Any]],
    device: torch.device,
    seed: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[LossSums, dict[str, Any]]:
    """Score every batch of the stream under the four conditions; returns the sums and counts."""
    sums = LossSums()
    stats: dict[str, Any] = {"batches": 0, "windows": 0, "images": 0, "drawn_donors": 0}
    counts: dict[str, int] = {}
    for g, group in enumerate(shuffle_groups(batches)):
        owners = [o for b in group for o in b["_owners"]]
        donors, drawn = _donors(owners, random.Random(f"{seed}/shuffle/{g}"))
        stats["drawn_donors"] += drawn
        flat = [im for b in group for im in b["images"]]
        start = 0
        for batch in group:
            n = int(batch["images"].shape[0])
            picked = [flat[d] for d in donors[start : start + n]]
            donor_images = torch.stack(picked) if picked else batch["images"]
            start += n
            score_batch(flamingo, batch, donor_images, sums, device, autocast)
            stats["batches"] += 1
            stats["windows"] += int(batch["input_ids"].shape[0])
            stats["images"] += n
            for code, c in (batch.get("_counts") or {}).items():
                counts[code] = counts.get(code, 0) + int(c)
        log.info("eval: %d batches scored", stats["batches"])
    stats["data_counts"] = counts
    return sums, stats


def _stream(cfg: DataConfig, parts: Parts, max_batches: int | None) -> Iterator[dict[str, Any]]:
    loader = make_loader(cfg, parts.tokenizer, parts.image_processor, epochs=1)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


# --------------------------------------------------------------------------------------------
# Few-shot in context
# --------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One line of the few-shot file: an image, its caption and the attributes to score."""

    line: int
    image: Any  # PIL.Image, RGB
    caption: str
    attributes: dict[str, str]  # {"caption": caption} when the line gives none


def words(text: str) -> list[str]:
    """Lower-case words (letters and digits), punctuation dropped."""
    return re.findall(r"[^\W_]+", text.lower())


def read_fewshot(path: str | Path) -> list[Example]:
    """The JSONL file; a line that is not `{"image": ..., "caption": ..., "attributes": {...}}`
    with an image that opens is an error naming its line number."""
    from PIL import Image

    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"--fewshot {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"--fewshot {path}: not a UTF-8 text file") from None
    examples = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue

        def bad(why: str, n: int = n) -> InputError:
            return InputError(f"--fewshot {path}: line {n}: {why}")

        try:
            row = json.loads(text)
        except ValueError as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(row, dict):
            raise bad('not a JSON object {"image": ..., "caption": ...}')
        image, caption, attributes = row.get("image"), row.get("caption"), row.get("attributes")
        if not isinstance(image, str) or not image:
            raise bad('no "image" path')
        if not isinstance(caption, str) or not words(caption):
            raise bad('no "caption" text')
        if attributes is None:
            attributes = {"caption": caption}
        elif not isinstance(attributes, dict) or not attributes:
            raise bad('"attributes" is not an object of attribute → value')
        for key, value in attributes.items():
            if not isinstance(value, str | int) or not words(str(value)):
                raise bad(f'attribute "{key}" has no value (a word, e.g. "red")')
        file = Path(image).expanduser()
        file = file if file.is_absolute() else path.parent / file
        try:
            with Image.open(file) as im:
                pil = im.convert("RGB")
        except OSError as e:
            raise bad(f"image {image}: {e.strerror or e}") from None
        attrs = {str(k): str(v) for k, v in attributes.items()}
        examples.append(Example(n, pil, caption, attrs))
    if not examples:
        raise InputError(f"--fewshot {path}: holds no example")
    return examples


def predict(generated: list[str], values: list[list[str]]) -> str | None:
    """The first value (as its words) that the generated words name, a plural -s/-es of its last
    word counting as the value; at one position the longest value wins."""
    by_length = sorted(values, key=len, reverse=True)
    for i in range(len(generated)):
        for value in by_length:
            got = generated[i : i + len(value)]
            if len(got) != len(value) or got[:-1] != value[:-1]:
                continue
            last = value[-1]
            if got[-1] in (last, last + "s", last + "es"):
                return " ".join(value)
    return None


def _correct(attribute: str, expected: str, generated: str, values: list[list[str]]) -> bool:
    if attribute == "caption":  # normalised exact match at the start of the generation
        want = words(expected)
        return words(generated)[: len(want)] == want
    return predict(words(generated), values) == " ".join(words(expected))


def _prompt(
    support: list[Example], query: Example, parts: Parts, tok: TokenIds
) -> tuple[torch.Tensor, torch.Tensor]:
    """`<BOS> <image> caption <EOC> ... <image>` as `pipelines.train.data.layout` lays out a document
    that opens with an image (captions after an image get a leading space), and the images."""
    nodes: list[Any] = []
    for ex in support:
        nodes += [ImageRef(None, False), ex.caption]
    nodes.append(ImageRef(None, False))
    ids = layout(nodes, parts.tokenizer, tok).ids[:-2]  # without the closing <EOC> <EOS>
    pixels = make_image_transform(parts.image_processor)([ex.image for ex in [*support, query]])
    return torch.tensor([ids]), pixels[None].to(torch.float32)  # (1, T), (1, n, C, H, W)


def score_fewshot(
    parts: Parts,
    examples: list[Example],
    shots: Sequence[int],
    *,
    seed: int,
    device: torch.device,
    max_new_tokens: int = 16,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Accuracy of every attribute for every k of `shots`; a k that needs more examples than the
    file has, or more images than the model takes, is skipped with the reason."""
    flamingo, tokenizer = unwrap_model(parts.model), parts.tokenizer
    tok = TokenIds.from_tokenizer(tokenizer)
    values: dict[str, list[list[str]]] = {}
    for ex in examples:
        for key, value in ex.attributes.items():
            v = words(value)
            if v not in values.setdefault(key, []):
                values[key].append(v)
    chance = {key: 1.0 / len(v) for key, v in values.items()}
    slots = flamingo.config.max_images
    out: dict[str, Any] = {"accuracy": {}, "attribute_accuracy": {}, "skipped": {}}
    out.update(chance=sum(chance.values()) / len(chance), attribute_chance=chance)
    out.update(queries=len(examples), examples=[])
    stop = [t for t in (tok.eoc, tokenizer.eos_token_id) if t is not None]
    for k in shots:
        if k + 1 > len(examples):
            have = len(examples)
            why = f"{k} shots need {k + 1} examples (a query and {k} others), the file has {have}"
        elif k + 1 > slots:
            why = f"{k} shots need {k + 1} images per prompt, the model takes {slots} (max_images)"
        else:
            why = None
        if why:
            log.warning("few-shot: skipping k=%d: %s", k, why)
            out["skipped"][str(k)] = why
            continue
        right = {key: 0 for key in values}
        total = {key: 0 for key in values}
        for i, query in enumerate(examples):
            others = examples[:i] + examples[i + 1 :]
            support = random.Random(f"{seed}/fewshot/{k}/{i}").sample(others, k)
            ids, pixels = _prompt(support, query, parts, tok)
            n = pixels.shape[1]
            with autocast or contextlib.nullcontext():
                gen = flamingo.generate(
                    ids.to(device),
                    pixels.to(device),
                    torch.ones(1, n, dtype=torch.bool, device=device),
                    torch.zeros(1, n, dtype=torch.bool, device=device),
                    attention_mask=torch.ones_like(ids, device=device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop,
                )
            new = gen[0, ids.shape[1] :].tolist()
            new = new[: next((j for j, t in enumerate(new) if t in stop), len(new))]
            text = tokenizer.decode(new, skip_special_tokens=True)
            for key, expected in query.attributes.items():
                total[key] += 1
                right[key] += _correct(key, expected, text, values[key])
            if i < 3:
                out["examples"].append({"shots": k, "line": query.line, "generated": text})
        per = {key: right[key] / total[key] for key in values if total[key]}
        out["attribute_accuracy"][str(k)] = per
        out["accuracy"][str(k)] = sum(per.values()) / len(per)
    return out


# --------------------------------------------------------------------------------------------
# The library call
# --------------------------------------------------------------------------------------------
def evaluate(
    model: str | Path | Parts | EvalModel,
    shards: str | Sequence[str],
    *,
    fewshot: str | Path | list[Example] | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    max_images: int | None = None,
    attach: str | None = None,
    max_batches: int | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seed: int = 0,
    device: str | None = None,
    workers: int = 0,
    max_new_tokens: int = 16,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Image ablations on `shards` (and few-shot accuracy when `fewshot`, a JSONL file or the
    examples `read_fewshot` returned, is given) of a trained Flamingo; returns the dict
    `m3w eval --json` prints.

    `model` is a checkpoint (a step folder, `RUN/checkpoints/latest`, the run folder, `final/`),
    a `load_checkpoint` result, or `Parts` whose model holds the trained weights (`m3w demo`). The
    data settings (seq_len, max_images, attach) default to the run's first dataset: the
    checkpoint's TrainConfig, or `config` beside `Parts`. `device` None: the model's own device
    for `Parts`, else cuda when available. The model is put in eval mode and back afterwards."""
    started = time.perf_counter()
    found = None
    if isinstance(model, str | Path):
        found = find_checkpoint(model)  # before the shards and the model: the fast mistakes first
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"--max-batches must be at least 1, got {max_batches}")
    if any(k < 0 for k in shots):
        raise ConfigError(f"--shots must be 0 or more, got {list(shots)}")
    shard_list = find_shards(shards)
    shard_list.warn_missing("--shards", "evaluating")
    examples = read_fewshot(fewshot) if isinstance(fewshot, str | Path) else fewshot
    if found is not None:
        model = load_checkpoint(found)
        device = device or "auto"
    if isinstance(model, Parts):
        model = EvalModel(model, config)
    assert isinstance(model, EvalModel)
    parts, cfg = model.parts, model.config if model.config is not None else config
    flamingo = unwrap_model(parts.model)
    data = eval_data_config(
        shard_list.present,
        cfg,
        batch_size=batch_size,
        seq_len=seq_len,
        max_images=max_images,
        attach=attach,
        seed=seed,
        workers=workers,
    )
    slots = flamingo.config.max_images
    if max_images is not None and max_images > slots:
        raise ConfigError(f"--max-images {max_images}: the model takes at most {slots} per window")
    data.max_images = min(data.max_images, slots)
    dev = _device(device, flamingo)
    flamingo.to(dev)
    autocast = autocast_for(cfg or TrainConfig(), dev)
    was_training = flamingo.training
    flamingo.eval()
    try:
        with torch.inference_mode():
            sums, stats = score_stream(
                flamingo, _stream(data, parts, max_batches), dev, seed, autocast
            )
            few = None
            if examples is not None:
                few = score_fewshot(
                    parts,
                    examples,
                    shots,
                    seed=seed,
                    device=dev,
                    max_new_tokens=max_new_tokens,
                    autocast=autocast,
                )
    finally:
        flamingo.train(was_training)
    if stats["batches"] == 0:
        raise InputError(
            f"--shards: no window could be read from {len(shard_list.present)} shard(s) "
            f"(data counts: {stats['data_counts'] or 'none'})"
        )
    if sums.tokens["attached"] == 0:
        raise InputError(
            f"--shards: no text token of the {stats['windows']} windows sees an image (no valid "
            "image in them): the image ablations need interleaved or image-text data"
        )
    return _result(model, data, sums, stats, few, shard_list.present, started)


def _device(device: str | None, flamingo: Any) -> torch.device:
    if device is None:
        return next(flamingo.parameters()).device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device(device)


def _result(model, data, sums, stats, few, shards, started) -> dict[str, Any]:
    names = {c: f"loss_{c}" for c in CONDITIONS}
    names["flipped_attachment"] = "loss_flipped_attachment"
    result: dict[str, Any] = {names[c]: sums.mean(c, "attached") for c in CONDITIONS}
    result["loss_unattached_text"] = sums.mean("true_images", "unattached")
    result["loss_unattached"] = {c: sums.mean(c, "unattached") for c in CONDITIONS}
    result["loss_all_text"] = {c: sums.mean(c, "all") for c in CONDITIONS}
    result["tokens_attached"] = sums.tokens["attached"]
    result["tokens_unattached"] = sums.tokens["unattached"]
    few = few or {}
    result["fewshot_accuracy"] = few.get("accuracy", {})
    result["fewshot_chance"] = few.get("chance")
    for key in ("attribute_accuracy", "attribute_chance", "skipped", "queries", "examples"):
        if key in few:
            result[f"fewshot_{key}"] = few[key]
    result.update(stats)
    result.update(
        checkpoint=str(model.path) if model.path else None,
        step=model.step,
        shards=len(shards),
        seq_len=data.seq_len,
        max_images=data.max_images,
        attach=data.attach,
        batch_size=data.batch_size,
        seed=data.seed,
        wall_s=time.perf_counter() - started,
    )
    return result


# --------------------------------------------------------------------------------------------
# Reports: terminal table, TensorBoard
# --------------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    def num(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"

    where = result.get("checkpoint") or "the given model"
    step = f" (step {result['step']})" if result.get("step") is not None else ""
    lines = [
        f"m3w eval: {where}{step}",
        f"  {result['shards']} shard(s): {result['batches']} batches, {result['windows']} windows, "
        f"{result['images']} images; seq_len {result['seq_len']}, max_images "
        f"{result['max_images']}, attach {result['attach']}",
        f"  {'':<20} {'attached text':>14} {'vs true':>9} {'unattached':>11} {'all text':>9}",
    ]
    true = result["loss_true_images"]
    for c in CONDITIONS:
        attached = result[f"loss_{c}"]
        gap = "" if c == "true_images" or attached is None else f"{attached - true:+.4f}"
        unattached, every = result["loss_unattached"][c], result["loss_all_text"][c]
        label = c.replace("_", " ")
        lines.append(
            f"  {label:<20} {num(attached):>14} {gap:>9} {num(unattached):>11} {num(every):>9}"
        )
    lines.append(
        f"  {'tokens':<20} {result['tokens_attached']:>14,} {'':>9} "
        f"{result['tokens_unattached']:>11,}"
    )
    if result.get("drawn_donors"):
        lines.append(
            f"  ({result['drawn_donors']} shuffled images were drawn with replacement: one window "
            "held most images of the last group)"
        )
    if result.get("fewshot_accuracy") or result.get("fewshot_skipped"):
        chance = result.get("fewshot_attribute_chance", {})
        attrs = list(chance)
        queries, mean_chance = result.get("fewshot_queries"), num(result["fewshot_chance"])
        lines.append(f"few-shot: {queries} queries, chance {mean_chance}")
        lines.append(f"  {'shots':<6} {'mean':>7} " + " ".join(f"{a:>10}" for a in attrs))
        lines.append(f"  {'chance':<6} {'':>7} " + " ".join(f"{num(chance[a]):>10}" for a in attrs))
        for k, acc in result["fewshot_accuracy"].items():
            per = result["fewshot_attribute_accuracy"][k]
            cells = " ".join(f"{num(per.get(a)):>10}" for a in attrs)
            lines.append(f"  {k:<6} {num(acc):>7} {cells}")
        for k, why in result.get("fewshot_skipped", {}).items():
            lines.append(f"  {k:<6} skipped: {why}")
    return "\n".join(lines)


def tensorboard_scalars(result: dict[str, Any]) -> dict[str, float]:
    """`eval/...` scalars: the contract keys, each condition's unattached loss, few-shot by k."""
    scalars = {f"eval/loss_{c}": result[f"loss_{c}"] for c in CONDITIONS}
    scalars["eval/loss_unattached_text"] = result["loss_unattached_text"]
    for c in CONDITIONS:
        scalars[f"eval/loss_unattached/{c}"] = result["loss_unattached"][c]
    for k, acc in result.get("fewshot_accuracy", {}).items():
        scalars[f"eval/fewshot_accuracy/{k}shot"] = acc
        for attr, a in result["fewshot_attribute_accuracy"][k].items():
            scalars[f"eval/fewshot_{attr}/{k}shot"] = a
    if result.get("fewshot_chance") is not None:
        scalars["eval/fewshot_chance"] = result["fewshot_chance"]
    return {k: float(v) for k, v in scalars.items() if v is not None}


def write_tensorboard(result: dict[str, Any], directory: str | Path) -> None:
    """The scalars at the checkpoint's step (0 when unknown), beside a run's training curves."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    try:
        for tag, value in tensorboard_scalars(result).items():
            writer.add_scalar(tag, value, result.get("step") or 0)
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shots takes numbers like 0,2,4,8, not {text!r}"
        ) from None
    if not shots or any(k < 0 for k in shots):
        raise argparse.ArgumentTypeError(f"--shots takes numbers like 0,2,4,8, not {text!r}")
    return shots


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="does a trained model use the images? ablations and few-shot accuracy",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="RUN/checkpoints/step-N, RUN/checkpoints/latest, the run folder RUN (its newest "
        "complete checkpoint) or RUN/final",
    )
    p.add_argument(
        "--shards", required=True, nargs="+", help="shards the run did not train on (patterns)"
    )
    p.add_argument("--fewshot", metavar="FILE.jsonl", help="captioned images for few-shot accuracy")
    p.add_argument("--shots", type=_shots, default=DEFAULT_SHOTS, metavar="K,K,...",
                   help="support examples per few-shot prompt (default: 0,2,4,8)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--tb", metavar="DIR", help="also write eval/... TensorBoard scalars here")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    p.add_argument("--max-batches", type=int, help="stop after N batches (default: every window)")
    p.add_argument("--seq-len", type=int, help="default: the run's first dataset's")
    p.add_argument("--max-images", type=int, help="default: the run's first dataset's")
    p.add_argument("--attach", choices=["shard", "resample", "following", "preceding"],
                   help="default: the run's first dataset's")  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--max-new-tokens", type=int, default=16, help="few-shot generation length")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when there is one")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="windows, shuffled images, few-shot draws")
    p.add_argument("--lm", help="the LM, when the checkpoint's config names none (or another)")
    p.add_argument("--vision", help="the vision tower, likewise")
    p.add_argument("--tokenizer", help="the tokenizer, likewise")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = find_checkpoint(args.checkpoint)
    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be at least 1 and --workers at least 0")
    find_shards(args.shards)  # a pattern matching nothing: one line before the model loads
    examples = read_fewshot(args.fewshot) if args.fewshot else None
    model = load_checkpoint(found, lm=args.lm, vision=args.vision, tokenizer=args.tokenizer)
    result = evaluate(
        model,
        args.shards,
        fewshot=examples,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_images=args.max_images,
        attach=args.attach,
        max_batches=args.max_batches,
        shots=args.shots,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        max_new_tokens=args.max_new_tokens,
    )
    if args.tb:
        write_tensorboard(result, args.tb)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(format_table(result))
    return 0
