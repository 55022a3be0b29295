"""pipelines/train/loop.py: real tiny transformers models, real tar shards, real torchrun/gloo processes."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.demo import synthetic, tiny
from pipelines.train import flops
from pipelines.train import loop as train
from pipelines.train.config import TrainConfig, apply_override
from pipelines.train.data import DataConfig

pytest.importorskip("model.flamingo")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    docs = [synthetic.synthetic_document(i).text() for i in range(64)]
    return tiny.train_tokenizer(docs, vocab_size=400)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    synthetic.write_synthetic_shards(out, shards=4, docs_per_shard=12, seed=5)
    return out


def _cfg(shards: Path, out: Path, **run) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": [
                {
                    "shards": str(shards),
                    "batch_size": 4,
                    "seq_len": 48,
                    "num_workers": 0,
                    "shuffle_buffer": 0,
                }
            ],
            "optim": {"lr": 3e-3, "warmup_steps": min(3, run.get("steps", 10) - 1)},
            "run": {
                "out": str(out),
                "steps": 10,
                "checkpoint_every": 100,
                "progress": False,
                **run,
            },
        }
    )


def _parts(tokenizer) -> train.Parts:
    model, processor = tiny.tiny_flamingo(tokenizer, seed=0)
    return train.Parts(model, tokenizer, processor)


# ---------------------------------------------------------------- config and schedule
def test_lr_schedule_warmup_then_constant_or_cosine():
    cfg = TrainConfig(optim=train.TrainConfig().optim)
    cfg.optim.warmup_steps, cfg.run.steps = 10, 110
    f = train.lr_lambda(cfg)
    assert [f(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(50) == 1.0 and f(109) == 1.0
    cfg.optim.schedule = "cosine"
    f = train.lr_lambda(cfg)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1)


def test_yaml_flags_and_overrides(tmp_path):
    raw = {
        "model": {"lm": "gpt2", "vision": "openai/clip-vit-base-patch32"},
        "data": [{"name": "m3w", "shards": "a/{0..3}.tar"}, {"name": "pairs", "shards": "b.tar"}],
        "optim": {"schedule": "cosine"},
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    parser = __import__("argparse").ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(path), "--steps", "7", "--seq-len", "64", "--set", "data.1.weight=0.2"]
    )
    cfg = train.config_from_args(args)
    assert cfg.run.steps == 7 and cfg.optim.schedule == "cosine"
    assert [d.seq_len for d in cfg.data] == [64, 64]
    assert [d.weight for d in cfg.data] == [1.0, 0.2]
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"optim": {"lr": 1, "nonsense": 2}})
    with pytest.raises(ValueError):
        apply_override(cfg, "run.nonsense=1")
    with pytest.raises(ValueError):
        DataConfig(attach="sideways")


def test_flops_estimate_counts_roles(tokenizer):
    parts = _parts(tokenizer)
    counts = flops.flop_counts(parts.model)
    assert counts["lm"] > 0 and counts["vision"] > 0 and counts["resampler"] > 0
    assert counts["xattn"] > 0
    trainable = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    assert counts["resampler"] + counts["xattn"] == trainable
    f = flops.step_flops(counts, tokens=100, images=2, patches=17, latents=8)
    assert (
        f
        == 100 * (4 * counts["lm"] + 6 * counts["xattn"])
        + 2 * 17 * 2 * counts["vision"]
        + 2 * 25 * 6 * counts["resampler"]
    )


# ---------------------------------------------------------------- training
@pytest.mark.slow
def test_cpu_training_loss_falls_and_writes_outputs(tokenizer, shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "run", steps=30)
    summary = train.train(cfg, _parts(tokenizer))
    losses = summary["losses"]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    head, tail = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert tail < head - 0.3, (head, tail)
    out = tmp_path / "run"
    assert (out / "final" / "flamingo_config.json").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000030"
    assert json.loads((out / "summary-train.json").read_text())["steps"] == 30
    assert 0.0 <= summary["data_wait_fraction"] <= 1.0 and summary["tokens_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("workers,buffer", [(0, 0), (2, 8)])
def test_resume_after_sigterm_reproduces_losses(tokenizer, shards, tmp_path, workers, buffer):
    """Interrupted at step 4 by a real SIGTERM, resumed: steps 5..10 match the uninterrupted run.

    Tolerance 1e-5 absolute: same CPU, same kernels, same data order, so in practice the losses are
    bit-identical; the tolerance only absorbs summation-order noise if torch picks another kernel.
    """

    def cfg(out: Path, **run) -> TrainConfig:
        c = _cfg(shards, out, **run)
        c.data[0].num_workers, c.data[0].shuffle_buffer = workers, buffer
        return c

    full = train.train(cfg(tmp_path / "full"), _parts(tokenizer))["losses"]

    def kill_at_4(step: int, _stats) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train.train(cfg(tmp_path / "cut"), _parts(tokenizer), on_step=kill_at_4)
    assert first["interrupted"] and first["steps"] == 4
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    second = train.train(cfg(tmp_path / "cut", resume=True), _parts(tokenizer))
    assert second["steps"] == 10 and second["steps_this_run"] == 6
    resumed = first["losses"] + second["losses"]
    assert resumed == pytest.approx(full, abs=1e-5)


@pytest.mark.slow
def test_eval_every_logs_held_out_ablations_without_changing_the_training(
    tokenizer, shards, tmp_path
):
    """`--eval-every`: m3w eval's image ablations on held-out shards every N steps and at the
    last, in summary-train.json and TensorBoard; the training itself (losses, batches) is the
    same as without it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    held_out = tmp_path / "held_out"
    synthetic.write_synthetic_shards(held_out, shards=2, docs_per_shard=6, seed=11)
    plain = train.train(_cfg(shards, tmp_path / "plain", steps=5), _parts(tokenizer))
    cfg = _cfg(shards, tmp_path / "eval", steps=5, eval_every=2, eval_shards=str(held_out))
    cfg.run.eval_batches = 2
    summary = train.train(cfg, _parts(tokenizer))
    assert summary["losses"] == plain["losses"]
    assert [h["step"] for h in summary["held_out"]] == [2, 4, 5]
    for record in summary["held_out"]:
        for condition in ("true_images", "shuffled_images", "no_images", "flipped_attachment"):
            assert math.isfinite(record[f"eval/loss_{condition}"]), record
    assert summary["held_out_off_because"] is None
    tb = EventAccumulator(str(tmp_path / "eval" / "tb"))
    tb.Reload()
    steps = [e.step for e in tb.Scalars("eval/loss_true_images")]
    assert steps == [2, 4, 5]


@pytest.mark.slow
def test_missing_held_out_shards_are_one_warning_per_run(tokenizer, shards, tmp_path, caplog):
    """A brace pattern over held-out shards of which some are missing warns once, when the run
    starts, not again at every evaluation (regression: each evaluation re-globbed and warned)."""
    held_out = tmp_path / "held_out"
    synthetic.write_synthetic_shards(held_out, shards=2, docs_per_shard=6, seed=11)
    pattern = str(held_out / "{000000..000003}.tar")  # 000002 and 000003 do not exist
    cfg = _cfg(shards, tmp_path / "run", steps=4, eval_every=1, eval_shards=pattern)
    cfg.run.eval_batches = 1
    with caplog.at_level(logging.WARNING):
        summary = train.train(cfg, _parts(tokenizer))
    assert [h["step"] for h in summary["held_out"]] == [1, 2, 3, 4]
    warnings = [r.getMessage() for r in caplog.records if "do not exist" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("--eval-shards"), warnings


@pytest.mark.slow
def test_held_out_shards_without_pictures_stop_the_evaluations_not_the_training(
    tokenizer, shards, tmp_path
):
    """A held-out set in which no text token sees an image cannot be scored: one error line,
    and the run trains to the end without further evaluations."""
    from m3w_builder.document import Document, TextNode

    text_only = tmp_path / "text_only"
    docs = [
        Document(url=f"http://t.test/{i}", nodes=[TextNode(f"plain text {i} " * 8)])
        for i in range(4)
    ]
    list(synthetic.write_shards(text_only, docs, shards=1, docs_per_shard=4))
    cfg = _cfg(shards, tmp_path / "run", steps=4, eval_every=2, eval_shards=str(text_only))
    summary = train.train(cfg, _parts(tokenizer))
    assert summary["steps"] == 4 and summary["held_out"] == []
    assert "sees an image" in summary["held_out_off_because"]


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message(tokenizer, shards, tmp_path):
    parts = _parts(tokenizer)
    with torch.no_grad():
        parts.model.resampler.latents.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss .* step 0"):
        train.train(_cfg(shards, tmp_path / "nan", steps=2), parts)


@pytest.mark.slow
def test_mixture_accumulates_every_dataset_each_step(tokenizer, shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "mix", steps=3)
    second = DataConfig(**{**cfg.data[0].__dict__, "name": "pairs", "weight": 0.5, "seq_len": 16})
    cfg.data.append(second)
    summary = train.train(cfg, _parts(tokenizer))
    assert summary["data_batches"] == {"m3w": 3, "pairs": 3}  # one batch of each per step


# ---------------------------------------------------------------- DDP with torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes_with_torchrun(strategy, tokenizer, shards, tmp_path):
    """DDP, and FSDP2 (`fully_shard`, which runs on CPU with gloo): both ranks train, checkpoint
    with full tensors and export final weights that `Flamingo.load` reads."""
    lm, vision = tiny.save_tiny_models(tmp_path / "models", tokenizer)
    held_out = tmp_path / "held_out"
    synthetic.write_synthetic_shards(held_out, shards=1, docs_per_shard=6, seed=9)
    config = {
        "model": {"lm": str(lm), "vision": str(vision), "flamingo": tiny.TINY_FLAMINGO},
        "data": [{"shards": str(shards), "batch_size": 2, "seq_len": 48, "num_workers": 1}],
        "optim": {"lr": 1e-3, "warmup_steps": 2, "accum": 2},
        "run": {
            "out": str(tmp_path / "ddp"),
            "steps": 3,
            "progress": False,
            "device": "cpu",
            "strategy": strategy,
            # every rank scores the same held-out batches: FSDP's gathers must not hang
            "eval_every": 2,
            "eval_shards": str(held_out),
            "eval_batches": 2,
        },
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    cmd += ["-m", "pipelines.train", "--config", str(tmp_path / "ddp.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(
        (tmp_path / "ddp" / "checkpoints" / "step-00000003" / "state.json").read_text()
    )
    assert state["world"] == 2
    # each rank consumed 3 steps × 2 micro-batches from its own half of the shards
    for rank_state in state["data"]:
        assert rank_state["m3w"]["batches"] == 6
    summary = json.loads((tmp_path / "ddp" / "summary-train.json").read_text())
    assert summary["steps"] == 3 and all(math.isfinite(x) for x in summary["losses"])
    assert [h["step"] for h in summary["held_out"]] == [2, 3]  # every 2 steps, and the last
    assert all(math.isfinite(h["eval/loss_true_images"]) for h in summary["held_out"])
    from model.flamingo import Flamingo

    final = Flamingo.load(tmp_path / "ddp" / "final")  # full tensors, also when FSDP sharded them
    gates = final.gates()
    assert gates and all(math.isfinite(g) for g in gates.values())
    assert any(g != 0 for g in gates.values())  # three steps moved the gates off their zero init


def test_multinode_example_config_parses():
    cfg = TrainConfig.from_yaml(REPO / "docker" / "torchrun-multinode.yaml")
    assert [d.name for d in cfg.data] == ["m3w", "pairs"] and cfg.data[0].resampled
    # resampled epochs must end, or a resume replays the whole run so far
    assert all(d.epoch_length for d in cfg.data if d.resampled)
    assert cfg.model.cross_attn_every_n_layers == 4 and cfg.run.strategy == "ddp"


def test_checkpoint_pruning_never_deletes_the_one_just_saved(tmp_path):
    """Regression: pruning kept the highest step names, so a fresh run writing into an old `--out`
    had its new (lower-step) checkpoint deleted at once and `latest` pointed at nothing."""
    from pipelines.train import checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def save(step: int) -> None:
        checkpoint.save(
            tmp_path,
            step=step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            data_state={},
            config={},
            keep=2,
        )

    def names() -> list[str]:
        return sorted(p.name for p in tmp_path.glob("step-*"))

    for step in (10, 20, 30):
        save(step)
    assert names() == ["step-00000020", "step-00000030"]
    save(5)  # a new run in the same folder, started without --resume
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000005"
    assert names() == ["step-00000005", "step-00000020", "step-00000030"]
    save(6)
    save(7)
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000007"
    assert names() == ["step-00000006", "step-00000007", "step-00000020", "step-00000030"]
