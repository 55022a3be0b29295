"""What `m3w train` checks before it loads anything: a user's mistake is one line naming the flag and
the value, seconds after the command starts, not a traceback after minutes of model loading.

- the LM and vision tower are named, and a name that is a path (`./runs/lm`, `/models/x`) is an
  existing model folder; a Hugging Face id is left to the loader (`load_or_explain` words its error);
- every dataset's shard spec names at least one existing shard; shards that are missing from a
  brace pattern are one warning each run (not one per worker and epoch), and are not read;
- with `--eval-every`, `--eval-shards` names at least one existing shard;
- `--out` is a folder (or does not exist yet);
- the configuration's cross-section rules (TrainConfig.check: a warm-up as long as the run,
  `--eval-every` without `--eval-shards`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from m3w_builder.errors import ConfigError, InputError, OutputError
from pipelines.train.config import TrainConfig
from pipelines.train.data import ShardsError, find_shards

T = TypeVar("T")

# A Hugging Face Hub id: `name` or `namespace/name` (huggingface_hub's validate_repo_id rules).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
MODEL_FLAGS = {"lm": "--lm", "vision": "--vision", "tokenizer": "--tokenizer"}


def check_before_loading(cfg: TrainConfig, main: bool = True) -> None:
    """Every check that needs neither the models nor the data; raises a UserError."""
    cfg.check()
    missing = [MODEL_FLAGS[k] for k in ("lm", "vision") if not getattr(cfg.model, k)]
    if missing:
        raise ConfigError(
            f"no {' or '.join(missing)}: name the frozen models, as Hugging Face ids or local "
            "folders (or model.lm / model.vision in --config)"
        )
    for key, flag in MODEL_FLAGS.items():
        ref = getattr(cfg.model, key)
        if ref:
            check_model_ref(flag, ref)
    if not cfg.data:
        raise ConfigError("no dataset: give --shards or a data: list in --config")
    for ds in cfg.data:
        shards = find_shards(ds.shards)
        if main:
            shards.warn_missing(f"--shards {ds.shards}", "training")
    check_eval_shards(cfg, main)
    out = Path(cfg.run.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is a file; give a folder for checkpoints and logs")


def check_eval_shards(cfg: TrainConfig, main: bool = True) -> None:
    """With `--eval-every`, the held-out shards must exist now, not fail an hour into the run."""
    if not cfg.run.eval_every:
        return
    try:
        shards = find_shards(cfg.run.eval_shards or "")
    except ShardsError as e:
        raise ShardsError(f"--eval-shards {e}") from None
    if main:
        shards.warn_missing(f"--eval-shards {cfg.run.eval_shards}", "evaluating")


def looks_like_path(ref: str) -> bool:
    """True when `ref` can only be a local path: it starts like one or is no valid Hub id."""
    return ref.startswith(("/", ".", "~")) or not HUB_ID.match(ref) or "--" in ref or ".." in ref


def check_model_ref(flag: str, ref: str) -> None:
    """A local model reference must be a folder holding a `config.json` (a tokenizer: any folder)."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"{flag} {ref}: is a file; give the model's folder or a Hugging Face id"
            )
        if flag != "--tokenizer" and not (path / "config.json").is_file():
            raise InputError(
                f"{flag} {ref}: this folder holds no config.json, so it is no saved model "
                "(save_pretrained writes one)"
            )
        return
    if looks_like_path(ref):
        raise InputError(f"{flag} {ref}: no such folder (nor a Hugging Face id)")


def load_or_explain(flag: str, ref: str, load: Callable[[], T]) -> T:
    """Run a transformers loader; its OSError/ValueError about `ref` (not on the Hub, no network,
    no weights in the folder) becomes one line naming the flag."""
    try:
        return load()
    except (OSError, ValueError) as e:
        first = next(
            (line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__
        )
        where = "local folder" if Path(ref).expanduser().exists() else "Hugging Face id"
        raise InputError(f"{flag} {ref}: cannot load this {where}: {first}") from e


def check_model_configs(cfg: TrainConfig) -> None:
    """Read each model's config.json (cheap, before the weights): a Hub id that cannot be fetched
    or a folder with a broken config is one line naming its flag, not the loader's traceback."""
    from transformers import AutoConfig

    for key in ("lm", "vision"):
        ref = getattr(cfg.model, key)
        load_or_explain(MODEL_FLAGS[key], ref, lambda ref=ref: AutoConfig.from_pretrained(ref))
