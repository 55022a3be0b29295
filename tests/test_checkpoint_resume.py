"""Resume never silently starts over (issue 14 §4, DESIGN §7).

`--resume` picks the newest *complete* checkpoint whatever `latest` says; a newer one with a file
missing or truncated is one error line naming the file, then the previous complete one is used;
with no usable checkpoint `--resume` is an error and `--resume auto` starts at step 0; pruning never
deletes the checkpoint the run resumed from. Unit tests on a tiny module, then the real trainer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from m3w_builder.errors import UserError
from pipelines.demo import synthetic, tiny
from pipelines.train import checkpoint
from pipelines.train import loop as train
from pipelines.train.config import TrainConfig

pytest.importorskip("model.flamingo")

FILES = ("trainable.pt", "optim.pt", "rng.pt", "state.json", "scheduler.pt")


def _save(root: Path, step: int, model=None, keep: int = 5) -> Path:
    model = model or torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # an optimiser state with tensors in it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return checkpoint.save(
        root,
        step=step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_state={"m3w": {}},
        config={},
        keep=keep,
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_marker_is_written_last_and_lists_every_file(tmp_path):
    final = _save(tmp_path, 3)
    marker = json.loads((final / checkpoint.MARKER).read_text())
    assert marker["step"] == 3 and sorted(marker["files"]) == sorted(FILES)
    assert all(marker["files"][n] == (final / n).stat().st_size for n in FILES)
    newest = max(final.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == checkpoint.MARKER


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_is_named_and_the_previous_checkpoint_is_chosen(tmp_path, name):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    _truncate(tmp_path / "step-00000030" / name)
    choice = checkpoint.choose(tmp_path)
    assert choice.path == tmp_path / "step-00000020"
    [(skipped, why)] = choice.skipped
    assert skipped == "step-00000030" and why.startswith(name)


def test_a_truncated_file_is_caught_by_loading_even_without_a_marker(tmp_path):
    """A checkpoint written before markers existed counts when every file loads."""
    for step in (10, 20):
        _save(tmp_path, step)
    for step in (10, 20):
        (tmp_path / f"step-{step:08d}" / checkpoint.MARKER).unlink()
    assert checkpoint.choose(tmp_path).path == tmp_path / "step-00000020"
    _truncate(tmp_path / "step-00000020" / "optim.pt")
    choice = checkpoint.choose(tmp_path)
    assert choice.path == tmp_path / "step-00000010"
    assert "optim.pt does not load" in choice.skipped[0][1]


def test_latest_missing_or_garbage_and_a_folder_without_state_json(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    (tmp_path / "latest").write_bytes(b"\x00\xffgarbage")
    assert checkpoint.choose(tmp_path).path == tmp_path / "step-00000030"
    (tmp_path / "latest").unlink()
    assert checkpoint.choose(tmp_path).path == tmp_path / "step-00000030"
    (tmp_path / "step-00000030" / "state.json").unlink()
    choice = checkpoint.choose(tmp_path)
    assert choice.path == tmp_path / "step-00000020"
    assert choice.skipped == [("step-00000030", "state.json is missing")]


def test_newest_means_last_saved_not_highest_step(tmp_path):
    """A fresh run written into an old --out is newer than that run's higher steps."""
    for step in (20, 30):
        _save(tmp_path, step)
    _save(tmp_path, 5)
    assert checkpoint.choose(tmp_path).path == tmp_path / "step-00000005"


def test_pruning_keeps_the_checkpoint_the_run_resumed_from(tmp_path):
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    _save(tmp_path, 10)
    resumed = tmp_path / "step-00000010"
    for step in (20, 30, 40):
        checkpoint.save(
            tmp_path, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
            data_state={}, config={}, keep=2, protect=[resumed],
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000010",
        "step-00000030",
        "step-00000040",
    ]


def test_the_resume_flag_takes_no_value_or_auto():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert parser.parse_args(["--resume"]).resume is True
    assert parser.parse_args(["--resume", "auto"]).resume == "auto"
    assert parser.parse_args([]).resume is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--resume", "maybe"])
    with pytest.raises(ValueError, match="run.resume"):
        TrainConfig.from_dict({"run": {"resume": "sometimes"}})


# ---------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def tokenizer():
    docs = [synthetic.synthetic_document(i).text() for i in range(64)]
    return tiny.train_tokenizer(docs, vocab_size=400)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    synthetic.write_synthetic_shards(out, shards=2, docs_per_shard=12, seed=5)
    return out


def _cfg(shards: Path, out: Path, **run) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": [{"shards": str(shards), "batch_size": 4, "seq_len": 48, "num_workers": 0,
                      "shuffle_buffer": 0}],
            "optim": {"lr": 3e-3, "warmup_steps": min(3, run.get("steps", 8) - 1)},
            "run": {"out": str(out), "steps": 8, "checkpoint_every": 2, "progress": False,
                    "tensorboard": False, **run},
        }
    )  # fmt: skip


def _parts(tokenizer) -> train.Parts:
    model, processor = tiny.tiny_flamingo(tokenizer, seed=0)
    return train.Parts(model, tokenizer, processor)


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_checkpoint_and_keeps_it_going(
    tokenizer, shards, tmp_path, caplog
):
    """Run 6 steps (checkpoints at 4 and 6 kept), truncate step 6's optim.pt and garble `latest`:
    `--resume` to step 8 continues from step 4 (one error line naming optim.pt), reproduces the
    uninterrupted run's losses, and pruning keeps step 4."""
    full = train.train(_cfg(shards, tmp_path / "full"), _parts(tokenizer))["losses"]
    out = tmp_path / "cut"
    first = train.train(_cfg(shards, out, steps=6), _parts(tokenizer))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004", "step-00000006"]
    _truncate(ckpts / "step-00000006" / "optim.pt")
    (ckpts / "latest").write_text("garbage\n")
    with caplog.at_level(logging.ERROR, logger="pipelines.train.loop"):
        second = train.train(_cfg(shards, out, resume=True), _parts(tokenizer))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "step-00000006" in errors[0] and "optim.pt" in errors[0]
    assert second["resumed_from"] == "step-00000004"
    assert second["steps"] == 8 and second["steps_this_run"] == 4
    assert first["losses"][:4] + second["losses"] == pytest.approx(full, abs=1e-5)
    names = sorted(p.name for p in ckpts.glob("step-*"))
    assert names == ["step-00000004", "step-00000006", "step-00000008"]  # step 4 protected


@pytest.mark.slow
def test_resume_without_a_usable_checkpoint_is_an_error_and_auto_starts_over(
    tokenizer, shards, tmp_path
):
    out = tmp_path / "empty"
    with pytest.raises(UserError, match="no usable checkpoint"):
        train.train(_cfg(shards, out, resume=True, steps=2), _parts(tokenizer))
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("step-*"))
    summary = train.train(_cfg(shards, out, resume="auto", steps=2), _parts(tokenizer))
    assert summary["steps_this_run"] == 2 and summary["resumed_from"] is None
    os.remove(out / "checkpoints" / "step-00000002" / "state.json")
    with pytest.raises(UserError, match="1 unusable"):
        train.train(_cfg(shards, out, resume=True, steps=4), _parts(tokenizer))
