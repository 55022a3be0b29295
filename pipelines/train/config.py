"""TrainConfig: one typed tree for `m3w train`, loadable from YAML and overridable from flags.

Sections: `model` (which LM/vision tower and the Flamingo hyper-parameters), `data` (a list: one
DataConfig per dataset of the mixture, pipelines/train/data.py), `optim` and `run`. Defaults cite Flamingo
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

from m3w_builder.errors import ConfigError
from m3w_builder.settings import check_value, did_you_mean, field_types, parse_assignment
from pipelines.train.data import DataConfig

FLAMINGO_WARMUP_STEPS = 5000  # Flamingo appendix B.1.2: linear warmup over 5k steps
DEFAULT_WARMUP_FRACTION = 0.1  # of run.steps, when optim.warmup_steps is not given
REPORTERS = ("tensorboard", "wandb")  # run.report_to; "none" for neither


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
    # linear warmup, then constant (Flamingo) or cosine. None: 10% of run.steps, at most Flamingo's
    # 5000, so that a short run leaves warm-up (TrainConfig.resolved_warmup)
    warmup_steps: int | None = None
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # Flamingo: global norm 1.0, once per optimiser step
    accum: int = 1  # micro-batches per dataset per optimiser step

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
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
    # experiment trackers, comma-separated: tensorboard (OUT/tb), wandb (the `wandb` extra; its
    # WANDB_* environment applies, e.g. WANDB_MODE=offline), or none
    report_to: str = "tensorboard"
    tensorboard: bool = True  # False drops tensorboard from report_to (older configs)
    wandb_project: str = "m3w"
    # held-out evaluation while training: `m3w eval`'s image ablations (no few-shot) on at most
    # `eval_batches` batches of `eval_shards`, every `eval_every` steps and at the last (0: never)
    eval_every: int = 0
    eval_shards: str | None = None
    eval_batches: int = 8

    def __post_init__(self) -> None:
        if self.resume not in (True, False, "auto"):
            raise ConfigError(f"run.resume must be true, false or auto, got {self.resume!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"run.strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"run.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.eval_every < 0:
            raise ConfigError(f"run.eval_every must be 0 (never) or more, got {self.eval_every}")
        if self.eval_batches < 1:
            raise ConfigError(f"run.eval_batches must be at least 1, got {self.eval_batches}")
        unknown = [r for r in self.reporters if r not in REPORTERS]
        if unknown:
            raise ConfigError(
                f"run.report_to: unknown tracker {unknown[0]!r}; "
                f"choose from {', '.join(REPORTERS)} or none"
            )

    @property
    def reporters(self) -> list[str]:
        """The trackers to write to, in order, without duplicates."""
        names = [r.strip().lower() for r in str(self.report_to or "").split(",") if r.strip()]
        out = [r for i, r in enumerate(names) if r != "none" and r not in names[:i]]
        return [r for r in out if r != "tensorboard" or self.tensorboard]


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: list[DataConfig] = field(default_factory=list)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        names = [d.name for d in self.data]
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset names must be unique, got {names}")

    def resolved_warmup(self) -> int:
        """optim.warmup_steps, or by default 10% of run.steps (at most Flamingo's 5000)."""
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return min(FLAMINGO_WARMUP_STEPS, int(self.run.steps * DEFAULT_WARMUP_FRACTION))

    def check(self) -> None:
        """Combinations across sections that defeat themselves, refused before anything loads."""
        if self.run.eval_every and not self.run.eval_shards:
            raise ConfigError(
                "--eval-every needs --eval-shards: the held-out shards to evaluate on "
                "(shards the run does not train on)"
            )
        warm = self.optim.warmup_steps
        if warm is not None and self.run.steps > 1 and warm >= self.run.steps:
            raise ConfigError(
                f"warm-up of {warm} steps (--warmup, optim.warmup_steps) is not shorter than the "
                f"run of {self.run.steps} steps (--steps): the learning rate would never reach "
                "--lr; lower it, or leave it unset for 10% of the steps"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"a TrainConfig is a mapping of sections, not {type(raw).__name__}")
        sections = ["model", "data", "optim", "run"]
        for name in raw:
            if name not in sections:
                raise ConfigError(
                    f"unknown TrainConfig section {name!r}{did_you_mean(name, sections)}"
                )
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
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"--config {path}: {e.strerror or e}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"--config {path}: not valid YAML: {first}") from None
        try:
            return cls.from_dict(raw or {})
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {e}") from None


SECTION_TYPES: dict[str, type] = {
    "model": ModelSection,
    "data": DataConfig,
    "optim": OptimSection,
    "run": RunSection,
}


def _field_names(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


def _unknown_field(section: str, kind: type, name: str) -> ConfigError:
    names = _field_names(kind)
    return ConfigError(f"unknown field {section}.{name}{did_you_mean(name, names)}")


def _build(kind: type, values: dict[str, Any]) -> Any:
    section = next(k for k, v in SECTION_TYPES.items() if v is kind)
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping, not {type(values).__name__}")
    hints = field_types(kind)
    for name in values:
        if name not in hints:
            raise _unknown_field(section, kind, name)
    values = {k: check_value(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        return kind(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"section {section!r}: {e}") from None


def apply_override(cfg: TrainConfig, assignment: str) -> None:
    """`section.field=value` (value parsed as YAML), e.g. `optim.lr=3e-4`, `data.0.batch_size=16`,
    or `data.batch_size=16` for every dataset of the mixture. A field that does not exist is an
    error naming the closest one (`data.num_worker` → `num_workers`), never a silent no-op."""
    parts, parsed = parse_assignment(assignment)
    path = ".".join(parts)
    section = parts[0]
    if section not in SECTION_TYPES:
        raise ConfigError(
            f"--set {path}: unknown section{did_you_mean(section, list(SECTION_TYPES))}"
        )
    kind = SECTION_TYPES[section]
    if section == "data":
        if len(parts) == 3 and parts[1].isdigit():
            index = int(parts[1])
            if index >= len(cfg.data):
                raise ConfigError(f"--set {path}: there are {len(cfg.data)} datasets (data.0...)")
            targets, name = [cfg.data[index]], parts[2]
        elif len(parts) == 2:
            targets, name = list(cfg.data), parts[1]
        else:
            raise ConfigError(f"--set {path}: write data.FIELD or data.INDEX.FIELD")
    elif len(parts) == 2:
        targets, name = [getattr(cfg, section)], parts[1]
    elif section == "model" and len(parts) == 3 and parts[1] == "flamingo":
        cfg.model.flamingo[parts[2]] = parsed  # FlamingoConfig checks it at load
        return
    else:
        raise ConfigError(f"--set {path}: write {section}.FIELD")
    if name not in _field_names(kind):
        raise _unknown_field(section, kind, name)
    parsed = check_value(f"--set {path}", parsed, field_types(kind)[name])
    for target in targets:
        setattr(target, name, parsed)
        if hasattr(target, "__post_init__"):
            try:
                target.__post_init__()
            except ConfigError:
                raise
            except (TypeError, ValueError) as e:
                raise ConfigError(f"--set {path}: {e}") from None
