"""`m3w train`: the streaming Flamingo trainer (torchrun-compatible DDP or FSDP).

`train()` stays short (titan trainer.py L1010-1071): build the parts, restore the checkpoint, then loop
over `train_step`, logging and saving. `train_step` follows nanoGPT's phases (train.py L255-333): lr,
forward/backward with accumulation over every dataset of the mixture, clip once, step, log.

Mixtures follow Flamingo (Alayrac et al. 2022, §3.3 and appendix B.1.2): every optimiser step
accumulates gradients over a batch from *every* dataset, each loss scaled by its weight λ_m (this beat
round-robin sampling, 70.7 vs 62.9 in their ablation). Under DDP the gradient all-reduce runs once, on
the last micro-batch (`no_sync` before it).

Launch: `m3w train ...` on one process, or `torchrun --nproc-per-node 8 -m pipelines.train ...` (RANK,
WORLD_SIZE, LOCAL_RANK from the environment; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from m3w_builder.errors import ConfigError, OutputError, UserError
from m3w_builder.settings import Flag, add_flags, apply_mapping, flag_values
from pipelines.train import checkpoint
from pipelines.train.checks import (
    check_before_loading,
    check_eval_shards,
    check_model_configs,
    load_or_explain,
)
from pipelines.train.config import SECTION_TYPES, TrainConfig, apply_override
from pipelines.train.data import DataConfig, WorkerPosition, make_loader, pad_images
from pipelines.train.flops import flop_counts, peak_flops, step_flops
from pipelines.train.heldout import HeldOutEval, headline
from pipelines.train.report import Logger

log = logging.getLogger(__name__)

BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "image_valid",
    "preceding",
    "media_mask",
)


# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


# --------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Parts:
    """What the trainer needs from the model side; `m3w demo` and tests pass tiny ones directly."""

    model: torch.nn.Module
    tokenizer: Any
    image_processor: Any


def build_parts(cfg: TrainConfig) -> Parts:
    """Load the frozen LM and vision tower by id (or local path) and wrap them as a Flamingo."""
    from model.flamingo import Flamingo, FlamingoConfig

    if not cfg.model.lm or not cfg.model.vision:
        raise ConfigError("model.lm and model.vision are required (HF ids or local paths)")
    try:
        fcfg = FlamingoConfig(
            lm=cfg.model.lm,
            vision=cfg.model.vision,
            cross_attn_every_n_layers=cfg.model.cross_attn_every_n_layers,
            **cfg.model.flamingo,
        )
    except TypeError as e:  # a typo under model.flamingo
        raise ConfigError(f"model.flamingo: {e}") from None
    check_model_configs(cfg)
    tokenizer = None
    if cfg.model.tokenizer:
        from transformers import AutoTokenizer

        ref = cfg.model.tokenizer
        tokenizer = load_or_explain("--tokenizer", ref, lambda: AutoTokenizer.from_pretrained(ref))
    model, tokenizer = load_or_explain(
        "--lm/--vision",
        f"{cfg.model.lm} {cfg.model.vision}",
        lambda: Flamingo.from_pretrained(fcfg, tokenizer=tokenizer),
    )
    return Parts(model, tokenizer, load_image_processor(cfg.model.vision))


def load_image_processor(vision: str) -> Any:
    """The vision tower's own preprocessing (AutoImageProcessor), PIL backend when torchvision is
    absent (transformers 5's default CLIP processor wants torchvision, which we do not install)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(vision)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: weight decay 0.1, none on the resampler (Flamingo)."""
    groups = unwrap_model(model).param_groups(cfg.optim.weight_decay)
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused or None
    )


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to lr, then constant (Flamingo) or cosine down to min_lr_ratio·lr at the end.

    The warm-up length is read at each call (TrainConfig.resolved_warmup): a resumed run sets it
    from its checkpoint after the scheduler exists."""
    total, floor = cfg.run.steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        warm = cfg.resolved_warmup()
        if step < warm:
            return (step + 1) / warm
        if cfg.optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def unwrap_model(model: torch.nn.Module) -> Any:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, d: Dist) -> torch.nn.Module:
    """Device, gradient checkpointing, DDP or FSDP, then optional torch.compile."""
    model.to(d.device)
    if cfg.run.grad_checkpointing:
        model.gradient_checkpointing_enable()
    if d.world > 1 and cfg.run.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.local_rank] if d.device.type == "cuda" else None
        model = DDP(model, device_ids=ids, find_unused_parameters=False)
    elif d.world > 1:
        model = _fsdp(model, cfg, d)
    if cfg.run.compile:
        model = torch.compile(model)
    return model


def _fsdp(model: torch.nn.Module, cfg: TrainConfig, d: Dist) -> torch.nn.Module:
    """FSDP2 (`fully_shard`): one unit per decoder layer (each with its xattn block), then the rest
    (embeddings, head, vision tower, resampler) in the root unit. Per-parameter sharding lets frozen
    and trainable weights share a unit; bf16 compute with fp32 gradient reduction on GPU. FSDP2 also
    runs on CPU with gloo, which is how the tests exercise it (FSDP1 refuses a CPU-only host)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if d.device.type == "cuda" and cfg.run.precision != "fp32":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in _decoder_layers(unwrap_model(model)):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _decoder_layers(flamingo: Any) -> torch.nn.ModuleList:
    """The LM's decoder layer list: the ModuleList that holds the model's xattn-wrapped layers."""
    wrapped = {id(m) for m in flamingo.flamingo_layers}
    for module in flamingo.lm.modules():
        if isinstance(module, torch.nn.ModuleList) and any(id(m) in wrapped for m in module):
            return module
    raise ValueError("cannot find the decoder layers that hold the xattn blocks")


# --------------------------------------------------------------------------------------------
# Data streams of the mixture
# --------------------------------------------------------------------------------------------
class Streams:
    """One infinite batch iterator per dataset, remembering each dataset's consumed position."""

    def __init__(self, cfg: TrainConfig, parts: Parts, d: Dist, state: dict[str, Any]) -> None:
        self.datasets: list[DataConfig] = cfg.data
        self.parts, self.d = parts, d
        self.positions: dict[str, dict[int, WorkerPosition]] = {}
        self.batches: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._iters: dict[str, Iterator[dict[str, Any]]] = {}
        for ds in self.datasets:
            saved = state.get(ds.name, {})
            self.positions[ds.name] = {
                int(w): WorkerPosition(**p) for w, p in saved.get("positions", {}).items()
            }
            self.batches[ds.name] = int(saved.get("batches", 0))
            self._iters[ds.name] = self._open(ds)

    def _open(self, ds: DataConfig) -> Iterator[dict[str, Any]]:
        loader = make_loader(
            ds,
            self.parts.tokenizer,
            self.parts.image_processor,
            rank=self.d.rank,
            world=self.d.world,
            positions=self.positions[ds.name],
            rotate=self.batches[ds.name] % max(1, ds.num_workers),
        )
        return iter(loader)

    def next(self, name: str) -> dict[str, Any]:
        batch = next(self._iters[name], None)
        if batch is None:
            raise RuntimeError(
                f"dataset {name!r} produced no batch: no readable shard on this rank"
            )
        pos = dict(batch.pop("_position"))
        worker = pos.pop("worker")
        self.positions[name][worker] = WorkerPosition(**pos)
        self.batches[name] += 1
        for code, n in batch.pop("_counts").items():
            self.counts[code] = self.counts.get(code, 0) + n
        batch.pop("_dataset", None)
        return batch

    def state(self) -> dict[str, Any]:
        return {
            name: {
                "batches": self.batches[name],
                "positions": {str(w): p.to_json() for w, p in self.positions[name].items()},
            }
            for name in self.positions
        }


# --------------------------------------------------------------------------------------------
# One optimiser step
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class StepStats:
    loss: float
    losses: dict[str, float]
    grad_norm: float
    lr: float
    tokens: int
    samples: int
    images: int
    data_s: float
    step_s: float


def autocast_for(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a loader batch to the device and pad its packed images into pixel_values there."""
    out = {
        k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS if batch.get(k) is not None
    }
    images = batch["images"].to(device, non_blocking=True)
    out["pixel_values"] = pad_images(images, out["image_valid"])
    return out


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    streams: Streams,
    cfg: TrainConfig,
    d: Dist,
    step: int,
) -> StepStats:
    t0 = time.perf_counter()
    data_s = 0.0
    tokens = samples = images = 0
    losses: dict[str, float] = {}
    # forward/backward: accumulate over every dataset (Flamingo eq. 2), all-reduce on the last one
    micro = [(ds, a) for ds in cfg.data for a in range(cfg.optim.accum)]
    for i, (ds, _) in enumerate(micro):
        t_data = time.perf_counter()
        batch = to_device(streams.next(ds.name), d.device)
        data_s += time.perf_counter() - t_data
        sync = i == len(micro) - 1 or d.world == 1
        with _no_sync(model, sync), autocast_for(cfg, d.device):
            out = model(**batch)
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at step {step} on dataset {ds.name!r} "
                f"(lr {scheduler.get_last_lr()[0]:.3g}): stopping; resume from the last checkpoint "
                "with a lower lr or check the data"
            )
        with _no_sync(model, sync):
            (loss * ds.weight / cfg.optim.accum).backward()
        losses[ds.name] = losses.get(ds.name, 0.0) + loss.item() / cfg.optim.accum
        tokens += int(batch["attention_mask"].sum())
        samples += int(batch["input_ids"].shape[0])
        images += int(batch["image_valid"].sum())
    # clip once per optimiser step, then step and advance the schedule
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of sharded (DTensor) gradients
        grad_norm = grad_norm.full_tensor()
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    total = sum(ds.weight * losses[ds.name] for ds in cfg.data)
    return StepStats(
        loss=total,
        losses=losses,
        grad_norm=float(grad_norm),
        lr=lr,
        tokens=tokens,
        samples=samples,
        images=images,
        data_s=data_s,
        step_s=time.perf_counter() - t0,
    )


def _no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last micro-batch."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
class StopFlag:
    """SIGTERM/SIGINT set the flag; the loop saves a checkpoint and exits at the next step boundary.
    Under DDP the flag is all-reduced so every rank stops at the same step."""

    def __init__(self) -> None:
        self.raised = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised and signum == signal.SIGINT:  # a second Ctrl-C: stop now, no checkpoint
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint after this step, then stopping", name)
        self.raised, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, d: Dist) -> bool:
        if d.world == 1:
            return self.raised
        t = torch.tensor([1.0 if self.raised else 0.0], device=d.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def train(
    cfg: TrainConfig,
    parts: Parts | None = None,
    on_step: Callable[[int, StepStats], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to OUT/summary-train.json.

    A user's mistake (train_checks) raises a UserError before any model is loaded."""
    d = init_distributed(cfg.run.device)
    if parts is None:
        check_before_loading(cfg, main=d.main)
    else:  # tests and the demo hand in their models: only the data and --out need checking
        cfg.check()
        check_eval_shards(cfg, main=d.main)
        if not cfg.data:
            raise ConfigError("no dataset: give --shards or a data: list in --config")
    torch.manual_seed(cfg.run.seed + d.rank)
    parts = parts or build_parts(cfg)
    model = wrap_model(parts.model, cfg, d)
    optimizer = make_optimizer(model, cfg)
    explicit_warmup = cfg.optim.warmup_steps is not None
    cfg.optim.warmup_steps = cfg.resolved_warmup()  # saved with each checkpoint's config
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    root = Path(cfg.run.out) / "checkpoints"
    state: dict[str, Any] = {"step": 0, "data": {}}
    found = _resume(root, cfg, d) if cfg.run.resume else None
    if found is not None:
        state = checkpoint.apply(found, model=model, optimizer=optimizer, scheduler=scheduler)
        saved = (state.get("config") or {}).get("optim", {}).get("warmup_steps")
        if not explicit_warmup and isinstance(saved, int):  # a longer --steps keeps its warm-up
            cfg.optim.warmup_steps = saved
        log.warning("resumed from %s at step %d", found.path, state["step"])
    resumed_from = found.path if found is not None else None
    del found  # the loaded tensors: applied, no longer needed
    streams = Streams(cfg, parts, d, state["data"])
    if "rng" in state:  # after the DataLoader iterators drew their seeds, as in the first run
        checkpoint.set_rng_state(state["rng"])
    counts = flop_counts(unwrap_model(model))
    patches, latents = _vision_shape(parts), int(cfg.model.flamingo.get("num_latents", 64))
    peak = peak_flops(cfg, d.device)
    logger = Logger(cfg, d.main, state["step"])
    held_out = HeldOutEval(cfg, parts)
    step, stopped, t_start, first_loss = state["step"], False, time.perf_counter(), None
    last_saved = step
    model.train()
    with StopFlag() as flag:
        while step < cfg.run.steps:
            s = train_step(model, optimizer, scheduler, streams, cfg, d, step)
            step += 1
            first_loss = s.loss if first_loss is None else first_loss
            flops = step_flops(counts, s.tokens, s.images, patches, latents) * d.world
            scalars = {
                "lr": s.lr,
                "grad_norm": s.grad_norm,
                "tokens_per_s": s.tokens * d.world / s.step_s,
                "samples_per_s": s.samples * d.world / s.step_s,
                "data_wait_fraction": s.data_s / s.step_s,
                **{f"gate/{k}": v for k, v in _gates(model).items()},
            }
            if peak:
                scalars["mfu"] = flops / s.step_s / (peak * d.world)
            losses = {"loss": s.loss, **{f"loss/{k}": v for k, v in s.losses.items()}}
            logger.log(step, s.loss, s.lr, {**losses, **scalars})
            if on_step is not None:
                on_step(step, s)
            if held_out.due(step):
                measured = held_out.run(step)
                if measured is not None:
                    logger.log_extra(step, measured, headline(step, measured))
            stopped = flag.agreed(d)
            if stopped or step % cfg.run.checkpoint_every == 0 or step == cfg.run.steps:
                _save(root, step, model, optimizer, scheduler, streams, cfg, resumed_from)
                last_saved = step
            if stopped:
                break
    logger.close(interrupted=stopped)
    summary = _summary(cfg, logger.history, streams, step, stopped, time.perf_counter() - t_start)
    summary["stopped_by"] = signal.Signals(flag.signum).name if flag.signum else None
    summary["first_loss_this_run"] = first_loss
    summary["checkpoint_step"] = last_saved
    summary["resumed_from"] = resumed_from.name if resumed_from is not None else None
    if cfg.run.eval_every:
        summary["held_out"] = held_out.history
        summary["held_out_off_because"] = held_out.off_because
    export_trainable(model, Path(cfg.run.out) / "final", d)
    if d.main:
        Path(cfg.run.out, "summary-train.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save(root, step, model, optimizer, scheduler, streams, cfg, resumed_from=None) -> None:
    checkpoint.save(
        root,
        step=step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_state=streams.state(),
        config=cfg.to_dict(),
        keep=cfg.run.keep_checkpoints,
        protect=[resumed_from] if resumed_from is not None else [],
    )


def _resume(root: Path, cfg: TrainConfig, d: Dist) -> checkpoint.Loaded | None:
    """The newest complete checkpoint (pipelines/train/checkpoint.py), read for this rank, or None to
    start at step 0, which only `--resume auto` allows: `--resume` without a usable checkpoint is
    an error, never a silent restart (that restart then pruned the good checkpoints it overwrote).

    Each newer checkpoint that was skipped is one error line naming its file. Under torchrun rank 0
    chooses and every rank reads the same one."""
    choice = checkpoint.Choice(None)
    if d.main:
        choice = checkpoint.choose(root, d.rank, d.world)
    if d.world > 1:
        box = [choice.path.name if choice.path else None, choice.skipped]
        dist.broadcast_object_list(box, src=0)
        if not d.main and box[0] is not None:
            choice = checkpoint.Choice(checkpoint.read(root / box[0], d.rank, d.world), box[1])
        choice.skipped = box[1]
    if d.main:
        for name, why in choice.skipped:
            log.error("checkpoint %s/%s is unusable: %s; trying an older one", root, name, why)
    if choice.loaded is not None:
        if d.main and choice.skipped:
            newer = ", ".join(name for name, _ in choice.skipped)
            log.warning("resuming from %s: the newer %s were skipped (above)", choice.path, newer)
        return choice.loaded
    if cfg.run.resume == "auto":
        log.warning("--resume auto: no usable checkpoint in %s, starting at step 0", root)
        return None
    found = f" ({len(choice.skipped)} unusable, see above)" if choice.skipped else ""
    raise UserError(
        f"--resume: no usable checkpoint in {root}{found}; "
        "use --resume auto to start at step 0 when there is none"
    )


def export_trainable(model: torch.nn.Module, directory: Path, d: Dist) -> None:
    """Collective: the final weights in `Flamingo.save_trainable`'s format (loadable with
    `Flamingo.load`). Under FSDP the sharded parameters are gathered to full tensors first."""
    inner = unwrap_model(model)
    if not any(hasattr(p, "full_tensor") for p in inner.parameters()):
        if d.main:
            inner.save_trainable(directory)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    full = get_model_state_dict(model, options=opts)
    if d.main:
        inner.save_trainable(directory, full)


def _gates(model: torch.nn.Module) -> dict[str, float]:
    inner = unwrap_model(model)
    return inner.gates() if hasattr(inner, "gates") else {}


def _vision_shape(parts: Parts) -> int:
    """Patch tokens per image (ViT: (size/patch)² + CLS), 0 when the tower does not say."""
    vision = getattr(unwrap_model(parts.model), "vision", None)
    cfg = getattr(vision, "config", None)
    cfg = getattr(cfg, "vision_config", cfg)
    size, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    if not size or not patch:
        return 0
    return (size // patch) ** 2 + 1


def _summary(cfg, history, streams, step, stopped, wall) -> dict[str, Any]:
    losses = [h["loss"] for h in history]
    tail = history[-min(len(history), 20) :]

    def mean(key: str) -> float | None:
        vals = [h[key] for h in tail if key in h]
        return sum(vals) / len(vals) if vals else None

    return {
        "steps": step,
        "steps_this_run": len(history),
        "interrupted": stopped,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
        "wall_s": wall,
        "tokens_per_s": mean("tokens_per_s"),
        "samples_per_s": mean("samples_per_s"),
        "data_wait_fraction": mean("data_wait_fraction"),
        "mfu": mean("mfu"),
        "data_counts": streams.counts,
        "data_batches": streams.batches,
    }


def print_summary(summary: dict[str, Any]) -> None:
    rows = [
        ("steps", summary["steps"]),
        ("first loss", summary["first_loss"]),
        ("last loss", summary["last_loss"]),
        ("wall s", summary["wall_s"]),
        ("tokens/s", summary["tokens_per_s"]),
        ("samples/s", summary["samples_per_s"]),
        ("data wait", summary["data_wait_fraction"]),
        ("MFU", summary["mfu"]),
    ]
    for name, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {name:<12} {text}")
    for code, n in sorted(summary["data_counts"].items()):
        print(f"  {code:<24} {n}")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """YAML first, then flags, then `--set a.b=c` overrides."""
    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    if args.shards:  # the YAML's dataset settings stay: one dataset is the template for each
        if len(cfg.data) == len(args.shards):
            for ds, spec in zip(cfg.data, args.shards, strict=True):
                ds.shards = spec
        else:
            template = cfg.data[0] if len(cfg.data) == 1 else DataConfig()
            cfg.data = [dataclasses.replace(template, shards=s) for s in args.shards]
            if len(args.shards) > 1:
                for i, ds in enumerate(cfg.data):
                    ds.name = f"d{i}"
    for flag, value in flag_values(args, TRAIN_FLAGS):
        section, _, name = flag.dest.partition(".")
        for target in cfg.data if section == "data" else [getattr(cfg, section)]:
            apply_mapping(target, {name: value}, flag.name, f"{section}.")
            if section == "data":
                target.__post_init__()
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    for section in (cfg.optim, cfg.run):
        section.__post_init__()
    return cfg


def _resume_flag(value: str) -> str:
    if value != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', not {value!r}")
    return value


# Flags that set one TrainConfig field each (data.* ones every dataset of the mixture): declared
# once, typed by the field (m3w_builder.settings); `--set` reaches every other field.
TRAIN_FLAGS = (
    Flag("--lm", "model.lm", "HF id or path of the causal LM"),
    Flag("--vision", "model.vision", "HF id or path of the vision model"),
    Flag("--tokenizer", "model.tokenizer", "tokenizer id/path (default: the LM's)"),
    Flag("--cross-attn-every", "model.cross_attn_every_n_layers", "a gated block every N layers"),
    Flag("--batch-size", "data.batch_size"),
    Flag("--seq-len", "data.seq_len"),
    Flag("--max-images", "data.max_images"),
    Flag("--attach", "data.attach", choices=("shard", "resample", "following", "preceding")),
    Flag("--workers", "data.num_workers", "DataLoader workers per dataset"),
    Flag("--shuffle-buffer", "data.shuffle_buffer"),
    Flag("--resampled", "data.resampled"),
    Flag("--lr", "optim.lr"),
    Flag(
        "--warmup",
        "optim.warmup_steps",
        "linear warmup steps (default: 10%% of --steps, at most 5000; must be below --steps)",
    ),
    Flag("--schedule", "optim.schedule", choices=("constant", "cosine")),
    Flag("--accum", "optim.accum", "micro-batches per dataset per step"),
    Flag("--out", "run.out"),
    Flag("--steps", "run.steps"),
    Flag("--seed", "run.seed"),
    Flag("--checkpoint-every", "run.checkpoint_every"),
    Flag("--log-every", "run.log_every"),
    Flag(
        "--eval-every",
        "run.eval_every",
        "every N steps and at the last, m3w eval's image ablations on --eval-shards, logged as "
        "eval/... scalars (default: 0, never)",
    ),
    Flag(
        "--eval-shards",
        "run.eval_shards",
        "held-out shards for --eval-every: a pattern, folder or job the run does not train on",
        metavar="PATTERN",
    ),
    Flag("--eval-batches", "run.eval_batches", "batches per --eval-every evaluation (default: 8)"),
    Flag(
        "--resume",
        "run.resume",
        "continue from the newest complete checkpoint (an error if there is none); "
        "`--resume auto`: continue if there is one, else start at step 0",
        metavar="auto",
        type=_resume_flag,
        optional_value=True,
    ),
    Flag("--device", "run.device", choices=("auto", "cpu", "cuda")),
    Flag("--precision", "run.precision", choices=("auto", "bf16", "fp32")),
    Flag("--strategy", "run.strategy", choices=("ddp", "fsdp")),
    Flag("--compile", "run.compile"),
    Flag("--grad-checkpointing", "run.grad_checkpointing"),
    Flag(
        "--report-to",
        "run.report_to",
        "comma-separated experiment trackers: tensorboard, wandb (the wandb extra), "
        "or none (default: tensorboard)",
        metavar="TRACKERS",
    ),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML TrainConfig (model/data/optim/run sections)")
    p.add_argument("--shards", nargs="*", help="shard pattern(s); several make an equal mixture")
    add_flags(p, TRAIN_FLAGS, SECTION_TYPES)
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. optim.lr=3e-4, data.num_workers=4 (every dataset), "
        "data.1.weight=0.2",
    )


_DISK_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})


def run(args: argparse.Namespace) -> int:
    """The CLI entry: 0 when the run reached --steps; 128+signal (130 for Ctrl-C, 143 for SIGTERM)
    when a signal stopped it, after its checkpoint was saved, saying how to continue."""
    cfg = config_from_args(args)
    try:
        summary = train(cfg)
    except OSError as e:  # a read-only or full --out: one line, not a traceback
        if e.errno not in _DISK_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        raise OutputError(f"{e.strerror or e}{where} (--out {cfg.run.out})") from None
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        print(f"m3w train: {cfg.run.out}")
        print_summary(summary)
    if dist.is_initialized():
        dist.destroy_process_group()
    if not summary["interrupted"]:
        return 0
    stopped_by = summary.get("stopped_by") or "SIGTERM"
    if main:
        print(
            f"m3w train: interrupted by {stopped_by} at step {summary['steps']} of "
            f"{cfg.run.steps}; checkpoint saved in {Path(cfg.run.out) / 'checkpoints'}; "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
    return 128 + int(getattr(signal, stopped_by, signal.SIGTERM))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="stream shards into a Flamingo model")
    add_arguments(p)
    p.set_defaults(func=run)
