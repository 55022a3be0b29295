"""`m3w train` from the command line (issue "Fit the ecosystem" §2-§5): a user's mistake is one line
and exit 2, before any model loads; a signal stops the run at a checkpoint with exit 128+signal and
says how to continue; shards missing from a brace pattern are one warning; the default warm-up
leaves warm-up; `--report-to wandb` writes a W&B run (offline). Real subprocesses, tiny real models.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.demo import synthetic, tiny
from pipelines.train import loop as train
from pipelines.train.config import TrainConfig

pytest.importorskip("model.flamingo")

REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """tmp/{models/lm, models/vision, shards/00000{0..3}.tar, base.yaml}."""
    root = tmp_path_factory.mktemp("train-cli")
    tokenizer = tiny.train_tokenizer(
        [synthetic.synthetic_document(i).text() for i in range(64)], 400
    )
    lm, vision = tiny.save_tiny_models(root / "models", tokenizer)
    synthetic.write_synthetic_shards(root / "shards", shards=4, docs_per_shard=8, seed=1)
    base = {
        "model": {"lm": str(lm), "vision": str(vision), "flamingo": tiny.TINY_FLAMINGO},
        "data": {"batch_size": 2, "seq_len": 32, "num_workers": 0, "shuffle_buffer": 0},
        "run": {"device": "cpu", "progress": False},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    (root / "afile").write_text("x")
    return root


def m3w_train(root: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", *args],
        capture_output=True, text=True, cwd=root, timeout=timeout, env={**os.environ, **ENV},
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _shards(root: Path) -> str:
    return str(root / "shards" / "{000000..000003}.tar")


@pytest.mark.parametrize(
    "args, needles",
    [
        # a shard pattern matching nothing
        (["--shards", "nothing-*.tar"], ["nothing-*.tar", "matches no shard"]),
        (["--shards", "gone/{000000..000003}.tar"], ["none of its 4 shard(s) exists"]),
        # a local --lm that does not exist (was: "Repo id must be in the form ...")
        (["--lm", "/nonexistent/models/lm"], ["--lm /nonexistent/models/lm", "no such folder"]),
        (["--lm", "./runs/lm"], ["--lm ./runs/lm", "no such folder"]),
        (["--lm", "models"], ["--lm models", "no config.json"]),
        (["--lm", "afile"], ["--lm afile", "is a file"]),
        # a Hub id that cannot be fetched (offline): one line naming the flag
        (["--lm", "someone/no-such-model"], ["--lm someone/no-such-model", "cannot load"]),
        # typos in --set
        (["--set", "data.num_worker=0"], ["data.num_worker", "did you mean 'num_workers'"]),
        (["--set", "optim.warmup=3"], ["optim.warmup", "did you mean 'warmup_steps'"]),
        (["--set", "opt.lr=1"], ["--set opt.lr", "did you mean 'optim'"]),
        (["--set", "data.7.batch_size=1"], ["there are 1 datasets"]),
        # --out is a file
        (["--out", "afile"], ["--out afile", "is a file"]),
        # a warm-up the run never leaves
        (["--warmup", "50", "--steps", "10"], ["warm-up of 50 steps", "--steps"]),
        (["--report-to", "tensorbord"], ["unknown tracker 'tensorbord'"]),
        # held-out evaluation without held-out shards, or with shards that are not there
        (["--eval-every", "5"], ["--eval-every needs --eval-shards"]),
        (
            ["--eval-every", "5", "--eval-shards", "held/{000000..000001}.tar"],
            ["--eval-shards", "none of its 2 shard(s) exists"],
        ),
        (["--eval-every", "-1"], ["run.eval_every must be 0 (never) or more, got -1"]),
    ],
)
@pytest.mark.slow
def test_train_mistakes_are_one_line_errors(setup, args, needles):
    flags = {"--shards": [_shards(setup)], "--out": ["run"], "--steps": ["2"]}
    given = {a for a in args if a.startswith("--")}
    base = [x for k, v in flags.items() if k not in given for x in (k, *v)]
    one_line_error(m3w_train(setup, "--config", "base.yaml", *base, *args), *needles)


@pytest.mark.slow
def test_train_without_lm_and_a_yaml_typo(setup, tmp_path):
    one_line_error(
        m3w_train(setup, "--shards", _shards(setup), "--vision", "models/vision"), "no --lm"
    )
    raw = yaml.safe_load((setup / "base.yaml").read_text())
    raw["data"]["num_worker"] = 0
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(raw))
    err = one_line_error(m3w_train(setup, "--config", str(tmp_path / "typo.yaml")))
    assert "typo.yaml" in err and "unknown field data.num_worker" in err
    assert "did you mean 'num_workers'" in err


@pytest.mark.slow
def test_partly_missing_brace_shards_warn_once_and_train_on_the_rest(setup, tmp_path):
    pattern = str(setup / "shards" / "{000000..000005}.tar")  # 000004, 000005 do not exist
    result = m3w_train(
        setup, "--config", "base.yaml", "--shards", pattern, "--out", str(tmp_path / "run"),
        "--steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "do not exist" in line]
    assert len(warnings) == 1 and "2 of 6 shards" in warnings[0], result.stderr
    assert "000004.tar" in warnings[0] and "cannot open shard" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary-train.json").read_text())
    assert summary["steps"] == 2 and not summary["data_counts"].get("data.shard_open")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_130_and_resume_finishes(setup, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", "base.yaml"]
    cmd += ["--shards", _shards(setup), "--out", str(out), "--checkpoint-every", "1"]
    proc = subprocess.Popen(
        [*cmd, "--steps", "1000"], cwd=setup, env={**os.environ, **ENV},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert latest.exists(), proc.communicate(timeout=10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "interrupted by SIGINT" in x)
    summary = json.loads((out / "summary-train.json").read_text())
    stopped = summary["steps"]
    assert summary["interrupted"] and summary["stopped_by"] == "SIGINT" and 1 <= stopped < 1000
    assert f"at step {stopped} of 1000" in line and "--resume" in line
    assert latest.read_text().strip() == f"step-{stopped:08d}"
    done = subprocess.run(
        [*cmd, "--steps", str(stopped + 2), "--resume"], cwd=setup, env={**os.environ, **ENV},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary-train.json").read_text())
    assert summary["steps"] == stopped + 2 and summary["steps_this_run"] == 2


def test_default_warmup_is_a_fraction_of_the_steps_and_a_resume_keeps_it():
    cfg = TrainConfig()
    assert cfg.optim.warmup_steps is None
    cfg.run.steps = 1000
    assert cfg.resolved_warmup() == 100  # was 5000: a 1000-step run never left warm-up
    cfg.run.steps = 500_000
    assert cfg.resolved_warmup() == 5000  # Flamingo's warm-up for a long run
    factor = train.lr_lambda(cfg)
    assert factor(4999) == 1.0 and factor(100) < 1.0
    cfg.optim.warmup_steps = 1000  # explicit and shorter than the run: kept
    cfg.check()
    assert cfg.resolved_warmup() == 1000


@pytest.mark.slow
def test_report_to_wandb_offline_writes_a_run_and_a_resume_continues_it(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    tokenizer = tiny.train_tokenizer(
        [synthetic.synthetic_document(i).text() for i in range(64)], 400
    )
    synthetic.write_synthetic_shards(tmp_path / "shards", shards=2, docs_per_shard=8, seed=1)
    out = tmp_path / "run"

    def run(steps: int, resume: bool) -> dict:
        cfg = TrainConfig.from_dict(
            {
                "data": {"shards": str(tmp_path / "shards"), "batch_size": 2, "seq_len": 32,
                         "num_workers": 0, "shuffle_buffer": 0},
                "run": {"out": str(out), "steps": steps, "progress": False, "log_every": 1,
                        "report_to": "tensorboard,wandb", "resume": resume, "device": "cpu"},
            }
        )  # fmt: skip
        model, processor = tiny.tiny_flamingo(tokenizer, seed=0)
        return train.train(cfg, train.Parts(model, tokenizer, processor))

    run(2, resume=False)
    run_id = (out / "wandb-run-id").read_text().strip()
    runs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((out / "wandb").iterdir())
    assert list((out / "tb").glob("events.out.tfevents.*"))  # tensorboard still written
    history = _wandb_history(wandb, next(runs[0].glob("*.wandb")))
    assert [h["_step"] for h in history if "loss" in h] == [1, 2]
    assert all("lr" in h and "grad_norm" in h for h in history if "loss" in h)
    run(3, resume=True)
    assert (out / "wandb-run-id").read_text().strip() == run_id  # the same W&B run continues
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def _wandb_history(wandb, path: Path) -> list[dict]:
    """The logged rows of an offline .wandb file: W&B's LevelDB-log framing (a 7-byte header, then
    32 KiB blocks of records: crc32 4, length 2, type 1 (full/first/middle/last), payload),
    each payload one wandb_internal_pb2.Record, parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            payloads.append(pending)
            pending = b""
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return rows
