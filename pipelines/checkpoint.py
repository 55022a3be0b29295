"""Training checkpoints: everything a restart needs, written atomically (DESIGN §7, STYLE (b) train.py).

A checkpoint is a directory `OUT/checkpoints/step-00001000/` holding
- `trainable.pt`: the trainable weights only (resampler, xattn blocks, new token rows): the frozen LM and
  vision tower come back from their model ids, so a checkpoint of a 7B-LM Flamingo stays small;
- `optim.pt`: AdamW state, and `scheduler.pt`;
- `state.json`: version, step, config and, per rank, each dataset's stream position (shards consumed
  and samples into the next shard, per DataLoader worker; pipelines/data.WorkerPosition);
- `rng.pt`: per rank, the Python, NumPy, torch CPU and CUDA generator states.
It is written under `step-N.tmp/` and renamed when complete, then `latest` (a one-line file) is replaced
atomically: a run killed mid-save leaves the previous checkpoint intact. Model and optimiser states go
through `torch.distributed.checkpoint.state_dict` with full (unsharded) tensors, so the same code
serves plain, DDP and FSDP models (titan's trainer, STYLE (b)).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
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

log = logging.getLogger(__name__)

VERSION = 1


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
) -> Path:
    """Collective: every rank calls it. Rank 0 writes; returns the final directory."""
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
        torch.save(model_sd, tmp / "trainable.pt")
        torch.save(optim_sd, tmp / "optim.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        state = {"version": VERSION, "step": step, "world": len(data_states), "data": data_states}
        state["config"] = config
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", final.name + "\n")
        _prune(root, keep, final)
        log.info("saved checkpoint %s", final)
    if _dist():
        dist.barrier()
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: int, current: Path) -> None:
    """Keep `current` (the one `latest` names) and the `keep - 1` checkpoints just before it.

    Only lower steps are pruned: a run started without `--resume` in an old `--out` writes steps
    below that run's checkpoints, and pruning by step alone deleted the new checkpoint at once,
    leaving `latest` pointing at nothing (a later `--resume` then silently started from step 0).
    Higher steps belong to that earlier run and are left alone."""
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    older = [p for p in done if p.name < current.name]
    later = [p for p in done if p.name > current.name]
    if later:
        log.warning(
            "%s holds checkpoints of a later step from another run: %s", root, later[-1].name
        )
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: str | Path) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Collective: restore weights, optimiser and scheduler; return state.json with `data` reduced to
    this rank's entry and `rng` holding this rank's generator states, which the caller restores with
    `set_rng_state` last, once everything that draws at start-up (DataLoader seeds) is built. Refuses a checkpoint saved with another world size (the data
    split would differ) or another version."""
    path = Path(path)
    rank = dist.get_rank() if _dist() else 0
    world = dist.get_world_size() if _dist() else 1
    state = json.loads((path / "state.json").read_text())
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')}, expected {VERSION}")
    if state["world"] != world:
        raise ValueError(
            f"{path} was saved by {state['world']} ranks, this run has {world}: the data split would "
            "change, so the stream position cannot be restored"
        )
    model_sd = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    optim_sd = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    opts = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=False)
    missing = set_state_dict(
        model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=opts
    )
    if missing is not None and getattr(missing, "unexpected_keys", None):
        raise ValueError(f"{path}: unexpected weights {missing.unexpected_keys[:5]}")
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state["rng"] = torch.load(path / "rng.pt", weights_only=False)[rank]
    state["data"] = state["data"][rank]
    return state
