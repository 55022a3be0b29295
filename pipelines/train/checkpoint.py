"""Training checkpoints: everything a restart needs, written atomically (DESIGN §7, STYLE (b) train.py).

A checkpoint is a directory `OUT/checkpoints/step-00001000/` holding
- `trainable.pt`: the trainable weights only (resampler, xattn blocks, new token rows): the frozen LM and
  vision tower come back from their model ids, so a checkpoint of a 7B-LM Flamingo stays small;
- `optim.pt`: AdamW state, and `scheduler.pt`;
- `state.json`: version, step, config and, per rank, each dataset's stream position (shards consumed
  and samples into the next shard, per DataLoader worker; pipelines/data.WorkerPosition);
- `rng.pt`: per rank, the Python, NumPy, torch CPU and CUDA generator states;
- `complete.json`, written last: every file's size, the step and the time of the save.
It is written under `step-N.tmp/` (each file fsynced), renamed when complete, then `latest` (a one-line
file) is replaced atomically: a run killed mid-save leaves the previous checkpoint intact. Model and
optimiser states go through `torch.distributed.checkpoint.state_dict` with full (unsharded) tensors, so
the same code serves plain, DDP and FSDP models (titan's trainer, STYLE (b)).

Resume never silently starts over (DESIGN §7). `choose` takes the newest *complete* checkpoint:
newest by the save time in its marker (a fresh run written into an old `--out` is newer than that
run's higher steps), complete when the marker is there, every file has the size it lists and loads
(state.json parses, every .pt unpickles). `latest` is only a convenience for people: it may be
missing, stale or garbage without changing what resumes. Each newer checkpoint that is skipped is
one logged line naming the file and why ("optim.pt does not load: ..."); a checkpoint written before
markers existed counts as complete when every file loads. Pruning keeps the checkpoint a run resumed
from and never touches a later step.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from m3w_builder.atomic import atomic_write

log = logging.getLogger(__name__)

VERSION = 1
MARKER = "complete.json"
FILES = ("trainable.pt", "optim.pt", "scheduler.pt", "rng.pt", "state.json")


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather(obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank (a list with one entry when not distributed)."""
    if not _dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: str | Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
    protect: Iterable[str | Path] = (),
) -> Path:
    """Collective: every rank calls it. Rank 0 writes; returns the final directory. Pruning
    (`keep`) never deletes a checkpoint in `protect` (the one the run resumed from)."""
    root = Path(root)
    rank = dist.get_rank() if _dist() else 0
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
    data_states = _gather(data_state)
    rng_states = _gather(rng_state())
    final = root / f"step-{step:08d}"
    if rank == 0:
        tmp = root / f"step-{step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _torch_save(model_sd, tmp / "trainable.pt")
            _torch_save(optim_sd, tmp / "optim.pt")
            _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
            _torch_save(rng_states, tmp / "rng.pt")
            state = {"version": VERSION, "step": step, "world": len(data_states)}
            state.update(data=data_states, config=config)
            (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
            _write_marker(tmp, step)
        except BaseException:  # a full disk mid-save: the previous checkpoints stay as they are
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write(root / "latest", (final.name + "\n").encode())
        _prune(root, keep, final, {Path(p).name for p in protect})
        log.info("saved checkpoint %s", final)
    if _dist():
        dist.barrier()
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file, so that a full disk is the OSError (ENOSPC) it is: given a
    path, torch's C++ writer reports only "unexpected pos 704 vs 662" (a RuntimeError)."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from e


def _write_marker(directory: Path, step: int) -> None:
    """fsync every file, then write the completion marker listing their sizes, last: a crash or a
    full disk before this point leaves no marker, and a later truncation changes a size."""
    sizes = {}
    for name in FILES:
        with open(directory / name, "rb") as f:
            os.fsync(f.fileno())
            sizes[name] = os.fstat(f.fileno()).st_size
    marker = {"version": VERSION, "step": step, "saved_at": time.time(), "files": sizes}
    atomic_write(directory / MARKER, json.dumps(marker, indent=1).encode())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(root: Path, keep: int, current: Path, protect: set[str] | None = None) -> None:
    """Keep `current` (the one `latest` names) and the `keep - 1` checkpoints just before it, and
    every checkpoint named in `protect` (the one this run resumed from).

    Only lower steps are pruned: a run started without `--resume` in an old `--out` writes steps
    below that run's checkpoints, and pruning by step alone deleted the new checkpoint at once,
    leaving `latest` pointing at nothing (a later `--resume` then silently started from step 0).
    Higher steps belong to that earlier run and are left alone."""
    protect = protect or set()
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    older = [p for p in done if p.name < current.name and p.name not in protect]
    later = [p for p in done if p.name > current.name]
    if later:
        log.warning(
            "%s holds checkpoints of a later step from another run: %s", root, later[-1].name
        )
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: str | Path) -> Path | None:
    """The checkpoint the `latest` pointer names, if its state.json is there (for people and
    tools; resuming uses `choose`, which does not trust the pointer)."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = Path(root) / name
    return path if name.startswith("step-") and (path / "state.json").is_file() else None


class CheckpointError(Exception):
    """A checkpoint that is not complete: names the directory, the file and why."""

    def __init__(self, path: Path, file: str, why: str) -> None:
        super().__init__(f"{path.name}: {file} {why}")
        self.path, self.file, self.why = path, file, why


@dataclass(slots=True)
class Loaded:
    """Everything one rank needs from a checkpoint, read and checked before anything is applied
    (so a truncated optim.pt never leaves the model restored and the optimiser not)."""

    path: Path
    state: dict[str, Any]
    model: dict[str, Any]
    optim: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


@dataclass(slots=True)
class Choice:
    """What `choose` found: the checkpoint to resume from (or None) and each newer one skipped."""

    loaded: Loaded | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dir name, why)

    @property
    def path(self) -> Path | None:
        return self.loaded.path if self.loaded is not None else None


def candidates(root: str | Path) -> list[Path]:
    """Finished step folders, newest first: by the save time in the marker (else state.json's
    mtime, for checkpoints older than markers), then by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]

    def saved_at(p: Path) -> float:
        try:
            return float(json.loads((p / MARKER).read_text())["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            return (p / "state.json").stat().st_mtime
        except OSError:
            return 0.0

    return sorted(dirs, key=lambda p: (saved_at(p), p.name), reverse=True)


def _load_file(path: Path, name: str, weights_only: bool) -> Any:
    try:
        return torch.load(path / name, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise CheckpointError(path, name, "is missing") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure: truncated or corrupt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            path, name, f"does not load (truncated or corrupt: {first})"
        ) from None


def read(path: str | Path, rank: int = 0, world: int = 1) -> Loaded:
    """Check and read one checkpoint for `rank`; CheckpointError if it is not complete.

    Refuses (ValueError, not a fall-back: an older checkpoint of the same run would be refused
    alike) a checkpoint of another version or world size (the data split would differ)."""
    path = Path(path)
    marker = None
    if (path / MARKER).exists():
        try:
            marker = json.loads((path / MARKER).read_text())
            sizes = dict(marker["files"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(path, MARKER, "does not parse") from None
        for name, size in sizes.items():
            try:
                actual = (path / name).stat().st_size
            except OSError:
                raise CheckpointError(path, name, "is missing") from None
            if actual != size:
                raise CheckpointError(path, name, f"has {actual:,} bytes, the marker says {size:,}")
    try:
        state = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "state.json", "is missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(path, "state.json", f"does not parse ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("data"), list):
        raise CheckpointError(path, "state.json", "is not a checkpoint state")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')}, expected {VERSION}")
    if state.get("world") != world or len(state["data"]) != world:
        raise ValueError(
            f"{path} was saved by {state.get('world')} ranks, this run has {world}: the data split "
            "would change, so the stream position cannot be restored"
        )
    model_sd = _load_file(path, "trainable.pt", weights_only=True)
    optim_sd = _load_file(path, "optim.pt", weights_only=False)
    sched_sd = _load_file(path, "scheduler.pt", weights_only=False)
    rngs = _load_file(path, "rng.pt", weights_only=False)
    if not isinstance(rngs, list) or len(rngs) != world:
        raise CheckpointError(path, "rng.pt", f"holds no generator states for {world} ranks")
    return Loaded(path, state, model_sd, optim_sd, sched_sd, rngs[rank])


def choose(root: str | Path, rank: int = 0, world: int = 1) -> Choice:
    """The newest complete checkpoint under `root`, read for `rank`, and every newer one skipped
    with why; Choice.loaded is None when there is none (`candidates` for the order)."""
    choice = Choice(None)
    for path in candidates(root):
        try:
            choice.loaded = read(path, rank, world)
            return choice
        except CheckpointError as e:
            choice.skipped.append((path.name, f"{e.file} {e.why}"))
    return choice


def apply(
    loaded: Loaded,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Collective: restore weights, optimiser and scheduler; return state.json with `data` reduced to
    this rank's entry and `rng` holding this rank's generator states, which the caller restores with
    `set_rng_state` last, once everything that draws at start-up (DataLoader seeds) is built."""
    rank = dist.get_rank() if _dist() else 0
    opts = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=False)
    missing = set_state_dict(
        model,
        optimizer,
        model_state_dict=loaded.model,
        optim_state_dict=loaded.optim,
        options=opts,
    )
    if missing is not None and getattr(missing, "unexpected_keys", None):
        raise ValueError(f"{loaded.path}: unexpected weights {missing.unexpected_keys[:5]}")
    scheduler.load_state_dict(loaded.scheduler)
    state = dict(loaded.state)
    state["rng"] = loaded.rng
    state["data"] = state["data"][rank]
    return state


def load(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """`read` then `apply` one given checkpoint (CheckpointError if it is not complete)."""
    rank = dist.get_rank() if _dist() else 0
    world = dist.get_world_size() if _dist() else 1
    loaded = read(path, rank, world)
    return apply(loaded, model=model, optimizer=optimizer, scheduler=scheduler)
