"""`m3w demo` end to end through the real CLI: generated site on 127.0.0.1, Ray build, inspect,
tiny Flamingo training, generation (a small --pages/--steps variant of the README command)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("model.flamingo")
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "pipelines.cli", "demo", "--out", str(out)]
    cmd += ["--pages", "12", "--steps", "12", "--batch-size", "4", "--seq-len", "64"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["build"]["documents"] >= 5 and summary["build"]["images"] >= 5
    assert summary["steps"] == 12
    assert math.isfinite(summary["first_loss"]) and summary["last_loss"] < summary["first_loss"]
    assert summary["prompt"].startswith("<image>") and summary["generated"]
    # greedy decoding stops at the first end of chunk (regression: it used to run on, repeating it)
    assert summary["generated"].count("<|endofchunk|>") <= 1
    # everything it made is kept: shards, inspect-able job, checkpoint, TensorBoard, models
    assert list((out / "build" / "shards").glob("*.tar"))
    assert (out / "run" / "checkpoints" / "latest").is_file()
    assert list((out / "run" / "tb").glob("events.out.tfevents.*"))
    assert (out / "models" / "lm" / "config.json").is_file()
    assert "m3w inspect stats" in proc.stdout and "generation:" in proc.stdout
