"""Held-out evaluation while training (`m3w train --eval-every N --eval-shards PATTERN`).

The training loss says little about whether the model reads the pictures: the frozen LM alone
lowers it, and a model can memorise its training pictures instead of reading them. Every N steps
(and at the last) this runs `m3w eval`'s image ablations (true, shuffled, no and flipped images;
pipelines/train/eval.py) on at most `--eval-batches` batches of shards the run does not train on,
and logs them as `eval/...` scalars beside the training curves, so the gap between true and
shuffled pictures can be watched as it opens. Few-shot generation is left to `m3w eval`: it costs
minutes, not seconds.

Every rank scores the same batches (the stream is not split by rank), so FSDP's collective forwards
stay in step; rank 0 logs. The evaluation runs on a forked RNG: a run with `--eval-every` trains
exactly as one without (same batches, same dropout draws). A held-out set that cannot be scored
(no text token sees an image, nothing decodes) is one error line, and the run trains on without
further evaluations rather than losing hours of training to a diagnostic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from m3w_builder.errors import UserError
from pipelines.train.config import TrainConfig
from pipelines.train.data import find_shards

log = logging.getLogger(__name__)


@dataclass
class HeldOutEval:
    """The periodic evaluation of one run: when it is due, and what it measured so far."""

    cfg: TrainConfig
    parts: Any  # pipelines.train.loop.Parts (the unwrapped model: see the module docstring)
    history: list[dict[str, float]] = field(default_factory=list)
    off_because: str | None = None
    shards: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        # resolved once: each evaluation reads these, without globbing and warning again
        if self.cfg.run.eval_every:
            self.shards = find_shards(self.cfg.run.eval_shards or "").present

    def due(self, step: int) -> bool:
        every = self.cfg.run.eval_every
        if not every or self.off_because is not None:
            return False
        return step % every == 0 or step == self.cfg.run.steps

    def run(self, step: int) -> dict[str, float] | None:
        """The `eval/...` scalars at `step`, or None when the held-out set cannot be scored."""
        from pipelines.train.eval import evaluate, tensorboard_scalars

        cfg = self.cfg
        try:
            with torch.random.fork_rng(devices=[]):  # the DataLoader draws its seed here
                result = evaluate(
                    self.parts,
                    self.shards,
                    batch_size=cfg.data[0].batch_size,
                    max_batches=cfg.run.eval_batches,
                    shots=(),
                    seed=cfg.run.seed,
                    config=cfg,
                )
        except UserError as e:
            self.off_because = str(e)
            log.error("held-out evaluation at step %d: %s; no more of them in this run", step, e)
            return None
        scalars = tensorboard_scalars(result)
        self.history.append({"step": step, **scalars})
        return scalars


def headline(step: int, scalars: dict[str, float]) -> str:
    """One line for the terminal: the attached text's loss under each condition."""
    from pipelines.train.eval import CONDITIONS

    parts = [f"{c.split('_')[0]} {scalars[f'eval/loss_{c}']:.3f}" for c in CONDITIONS]
    return f"held-out caption loss at step {step}: " + ", ".join(parts)
