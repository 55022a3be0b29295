"""Where `m3w train` reports its scalars: a tqdm bar, and the trackers of `--report-to`.

TensorBoard (OUT/tb) is the default, as in OpenFlamingo; Weights & Biases is the `wandb` extra and
honours its own environment (WANDB_MODE=offline, WANDB_PROJECT, WANDB_API_KEY...), as the HF Trainer
does. A resumed run continues the same W&B run: its id is kept in OUT/wandb-run-id. Only rank 0
reports; every rank keeps the step records for the summary.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from m3w_builder.errors import ConfigError
from pipelines.train.config import TrainConfig

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self, interrupted: bool) -> None: ...


class TensorBoardTracker:
    def __init__(self, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self, interrupted: bool) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per OUT folder: `resume="allow"` with the id saved beside the checkpoints."""

    def __init__(self, cfg: TrainConfig) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "--report-to wandb needs the wandb package: pip install 'm3w[wandb]'"
            ) from None
        out = Path(cfg.run.out)
        id_file = out / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", cfg.run.wandb_project),
            name=out.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(out),
            config=cfg.to_dict(),
        )
        id_file.write_text(run_id + "\n")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self, interrupted: bool) -> None:
        self.run.finish(exit_code=1 if interrupted else 0)


def open_trackers(cfg: TrainConfig) -> list[Tracker]:
    """The trackers named by run.report_to, opened in order (OUT is created first)."""
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    trackers: list[Tracker] = []
    for name in cfg.run.reporters:
        trackers.append(TensorBoardTracker(out) if name == "tensorboard" else WandbTracker(cfg))
    return trackers


class Logger:
    """The step records (every rank) and, on rank 0, the progress bar and the trackers."""

    def __init__(self, cfg: TrainConfig, main: bool, start: int) -> None:
        self.cfg = cfg
        self.main = main
        self.history: list[dict[str, float]] = []
        self.trackers: list[Tracker] = []
        self.bar: Any = None
        if not main:
            return
        self.trackers = open_trackers(cfg)
        if cfg.run.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.run.steps, initial=start, desc="train", unit="step")

    def log(self, step: int, loss: float, lr: float, scalars: dict[str, float]) -> None:
        record = {"step": step, **scalars}
        self.history.append(record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        if step % self.cfg.run.log_every == 0 or step == 1:
            values = {k: v for k, v in record.items() if k != "step"}
            for tracker in self.trackers:
                tracker.log(values, step)

    def log_extra(self, step: int, scalars: dict[str, float], line: str) -> None:
        """Scalars measured at `step` besides the step's own (the held-out evaluation): to the
        trackers at once, whatever `log_every`, and `line` to the terminal on rank 0."""
        for tracker in self.trackers:
            tracker.log(scalars, step)
        if self.bar is not None:
            self.bar.write(line)
        elif self.main:
            log.info(line)

    def close(self, interrupted: bool = False) -> None:
        if self.bar is not None:
            self.bar.close()
        for tracker in self.trackers:
            tracker.close(interrupted)
