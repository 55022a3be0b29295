"""TrainConfig: one typed tree for `m3w train`, loadable from YAML and overridable from flags.

Sections: `model` (which LM/vision tower and the Flamingo hyper-parameters), `data` (a list: one
DataConfig per dataset of the mixture, pipelines/data.py), `optim` and `run`. Defaults cite Flamingo
(Alayrac et al. 2022, appendix B.1.2 "Training details") unless they say otherwise.

YAML example (two datasets, Flamingo's accumulate-over-all-datasets mixture):

    model: {lm: Qwen/Qwen2.5-0.5B, vision: openai/clip-vit-large-patch14, cross_attn_every_n_layers: 4}
    data:
      - {name: m3w, shards: "s3://bucket/m3w/{000000..000999}.tar", weight: 1.0, batch_size: 8}
      - {name: pairs, shards: "s3://bucket/pairs/{000000..000199}.tar", weight: 0.2, batch_size: 32,
         seq_len: 32, max_images: 1}
    optim: {lr: 1.0e-4, warmup_steps: 5000}
    run: {steps: 100000, out: runs/flamingo, checkpoint_every: 1000}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.data import DataConfig


@dataclass
class ModelSection:
    lm: str | None = None  # HF id or local path of a causal LM (frozen)
    vision: str | None = None  # HF id or local path of a vision model (frozen tower)
    tokenizer: str | None = None  # defaults to the LM's
    cross_attn_every_n_layers: int = 1  # Flamingo-3B: every layer; -9B: 4; -80B: 7
    # Any other FlamingoConfig field (num_latents, resampler_depth, xattn_heads, ...), passed through.
    flamingo: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    lr: float = 1e-4  # Flamingo: AdamW, peak lr 1e-4
    weight_decay: float = 0.1  # Flamingo: 0.1, none on the Perceiver Resampler (model.param_groups)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 5000  # Flamingo: linear warmup over 5k steps, then constant
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # Flamingo: global norm 1.0, once per optimiser step
    accum: int = 1  # micro-batches per dataset per optimiser step

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class RunSection:
    out: str = "runs/m3w"
    steps: int = 1000
    seed: int = 0
    checkpoint_every: int = 500  # also at the end and on SIGTERM/SIGINT
    keep_checkpoints: int = 2
    log_every: int = 10
    # True: continue from the newest complete checkpoint, an error if there is none; "auto":
    # continue if there is one, else start at step 0; False: start at step 0
    resume: bool | str = False
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU | bf16 | fp32
    strategy: str = "ddp"  # ddp | fsdp (for LMs that do not fit one GPU)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False
    peak_tflops: float | None = None  # for MFU; auto-detected for H100/H200/A100 when None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.resume not in (True, False, "auto"):
            raise ValueError(f"run.resume must be true, false or auto, got {self.resume!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"run.strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"run.precision must be auto, bf16 or fp32, got {self.precision!r}")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: list[DataConfig] = field(default_factory=list)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        names = [d.name for d in self.data]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        unknown = set(raw) - {"model", "data", "optim", "run"}
        if unknown:
            raise ValueError(f"unknown TrainConfig sections: {sorted(unknown)}")
        data = raw.get("data") or []
        if isinstance(data, dict):  # a single dataset may be written as a mapping
            data = [data]
        return cls(
            model=_build(ModelSection, raw.get("model") or {}),
            data=[_build(DataConfig, d) for d in data],
            optim=_build(OptimSection, raw.get("optim") or {}),
            run=_build(RunSection, raw.get("run") or {}),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def _build(kind: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    return kind(**values)


def apply_override(cfg: TrainConfig, assignment: str) -> None:
    """`section.field=value` (value parsed as YAML), e.g. `optim.lr=3e-4`, `data.0.batch_size=16`."""
    path, _, value = assignment.partition("=")
    if not _:
        raise ValueError(f"override must look like section.field=value, got {assignment!r}")
    parts = path.strip().split(".")
    target: Any = cfg
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else getattr(target, part)
    if not hasattr(target, parts[-1]):
        raise ValueError(f"unknown config field {path!r}")
    setattr(target, parts[-1], yaml.safe_load(value))
    if hasattr(target, "__post_init__"):
        target.__post_init__()
