"""`m3w eval` (issue 13 §3): image ablations and few-shot accuracy of a trained Flamingo.

In process, with tiny random models whose gates are set by hand: the ablations change the loss of
the text that sees an image and, where no-image text cannot see one (every image `following`), not
the loss of that text; the true-image loss is the trainer's own loss on the same batch; few-shot
scores attributes against chance. From the command line (slow: a real `m3w train` run first): the
JSON contract, the ways to name a checkpoint, and one-line errors with exit 2.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from m3w_builder.errors import InputError
from pipelines.demo import synthetic, tiny
from pipelines.train import eval as m3w_eval
from pipelines.train import loop as train
from pipelines.train.data import make_loader, pad_images

pytest.importorskip("model.flamingo")

REPO = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
CONTRACT = (
    "loss_true_images",
    "loss_shuffled_images",
    "loss_no_images",
    "loss_flipped_attachment",
    "loss_unattached_text",
)
SCENES = [  # (colour, shape, count) of the few-shot file
    ("red", "circle", "one"),
    ("blue", "square", "two"),
    ("green", "triangle", "one"),
    ("red", "square", "two"),
    ("blue", "circle", "one"),
    ("green", "square", "two"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.train_tokenizer([synthetic.synthetic_document(i).text() for i in range(64)], 400)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heldout")
    synthetic.write_synthetic_shards(out, shards=2, docs_per_shard=8, seed=7)
    return out


def write_fewshot(folder: Path, attributes: bool = True) -> Path:
    """fewshot.jsonl beside its Pillow-drawn images (paths relative to the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (colour, shape, count) in enumerate(SCENES):
        (folder / f"{i}.jpg").write_bytes(synthetic.draw_shape(colour, shape, seed=i))
        row = {"image": f"{i}.jpg", "caption": f"{count} {colour} {shape}"}
        if attributes:
            row["attributes"] = {"colour": colour, "shape": shape, "count": count}
        lines.append(json.dumps(row))
    (folder / "fewshot.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "fewshot.jsonl"


def open_gates(model, value: float = 2.0) -> None:
    """Make the images matter: tanh(2) = 0.96 on every xattn and dense gate."""
    with torch.no_grad():
        for layer in model.flamingo_layers:
            layer.xattn.attn_gate.fill_(value)
            layer.xattn.ff_gate.fill_(value)


def parts(tokenizer, gates: float | None = None) -> train.Parts:
    model, processor = tiny.tiny_flamingo(tokenizer, seed=0)
    if gates is not None:
        open_gates(model, gates)
    return train.Parts(model, tokenizer, processor)


# ---------------------------------------------------------------- the shuffled-image condition
def test_derangement_gives_every_image_one_of_another_window():
    rng = random.Random(0)
    for _ in range(200):
        owners = [rng.randrange(6) for _ in range(rng.randrange(2, 30))]
        donors = m3w_eval.derangement(owners, random.Random(1))
        if not m3w_eval.derangeable(owners):
            assert donors is None
            continue
        assert sorted(donors) == list(range(len(owners)))  # a permutation: each image used once
        assert all(owners[d] != owners[j] for j, d in enumerate(donors))
    assert m3w_eval.derangement([0, 0, 0, 1], random.Random(0)) is None  # one window holds 3 of 4
    assert m3w_eval.derangement([], random.Random(0)) == []
    same = [m3w_eval.derangement([0, 1, 1, 2, 3], random.Random(5)) for _ in range(2)]
    assert same[0] == same[1]  # seeded


def _batch(rows_with_images: list[int], rows: int = 2) -> dict:
    valid = torch.zeros(rows, 5, dtype=torch.bool)
    for r in rows_with_images:
        valid[r, 0] = True
    return {"input_ids": torch.zeros(rows, 4, dtype=torch.long), "image_valid": valid}


def test_a_last_group_too_small_to_derange_joins_the_one_before():
    # groups of 2 batches; the 5th batch has one window with images: alone it cannot be deranged
    batches = [_batch([0, 1]) for _ in range(4)] + [_batch([0])]
    groups = list(m3w_eval.shuffle_groups(batches, size=2))
    assert [len(g) for g in groups] == [2, 3]
    owners = [o for b in groups[1] for o in b["_owners"]]
    assert owners == [4, 5, 6, 7, 8] and m3w_eval.derangeable(owners)
    # a group closes only once its images can be deranged
    groups = list(m3w_eval.shuffle_groups([_batch([0]), _batch([0]), _batch([1])], size=1))
    assert [len(g) for g in groups] == [3]


# ---------------------------------------------------------------- the ablations, in process
def test_true_image_loss_is_the_trainers_loss_and_closed_gates_ignore_images(tokenizer, heldout):
    p = parts(tokenizer)  # gates at 0: exactly the frozen LM, whatever the images
    assert p.model.training
    result = m3w_eval.evaluate(p, str(heldout), batch_size=4, seq_len=48, max_batches=1)
    assert p.model.training  # evaluated in eval mode, then put back
    losses = [result[k] for k in CONTRACT[:4]]
    assert max(losses) - min(losses) < 1e-6, losses
    # the same first batch through the trainer's path: the mean over all text is its loss
    cfg = m3w_eval.eval_data_config(
        str(heldout), None, batch_size=4, seq_len=48, max_images=None, attach=None, seed=0,
        workers=0,
    )  # fmt: skip
    batch = next(iter(make_loader(cfg, tokenizer, p.image_processor, epochs=1)))
    inputs = {k: batch[k] for k in train.BATCH_KEYS}
    inputs["pixel_values"] = pad_images(batch["images"], batch["image_valid"])
    p.model.eval()
    with torch.no_grad():
        loss = p.model(**inputs).loss.item()
    assert result["loss_all_text"]["true_images"] == pytest.approx(loss, abs=1e-5)
    assert result["tokens_attached"] > 0 and result["tokens_unattached"] > 0
    assert result["batches"] == 1 and result["windows"] == 4


@pytest.mark.slow
def test_ablations_change_attached_text_only(tokenizer, heldout):
    p = parts(tokenizer, gates=2.0)
    p.model.eval()
    # every image `following`: text before the first image of a window sees no image, directly
    # or through self-attention, so (b) and (c) cannot change its loss; (d) attaches it to one
    result = m3w_eval.evaluate(
        p, str(heldout), batch_size=4, seq_len=48, max_batches=3, attach="following", seed=1
    )
    true = result["loss_true_images"]
    for key in ("loss_shuffled_images", "loss_no_images", "loss_flipped_attachment"):
        assert abs(result[key] - true) > 1e-4, (key, result)
    unattached = result["loss_unattached"]
    assert unattached["true_images"] == result["loss_unattached_text"]
    assert unattached["shuffled_images"] == pytest.approx(unattached["true_images"], abs=1e-5)
    assert unattached["no_images"] == pytest.approx(unattached["true_images"], abs=1e-5)
    assert abs(unattached["flipped_attachment"] - unattached["true_images"]) > 1e-4
    assert result["drawn_donors"] == 0 and result["images"] > 0
    assert not p.model.training  # left as it was
    again = m3w_eval.evaluate(
        p, str(heldout), batch_size=4, seq_len=48, max_batches=3, attach="following", seed=1
    )
    assert again["loss_shuffled_images"] == result["loss_shuffled_images"]  # seeded


# ---------------------------------------------------------------- few-shot
def test_predict_reads_the_first_value_named():
    words = m3w_eval.words
    shapes = [["circle"], ["triangle"], ["box"]]
    assert m3w_eval.predict(words("Two red triangles."), shapes) == "triangle"
    assert m3w_eval.predict(words("three boxes, a circle"), shapes) == "box"
    assert m3w_eval.predict(words("nothing here"), shapes) is None
    assert m3w_eval.predict(words("a trianglex"), shapes) is None  # whole words only
    colours = [["blue"], ["light", "blue"], ["red"]]
    assert m3w_eval.predict(words("a light blue and red"), colours) == "light blue"
    assert m3w_eval.predict(words("red then blue"), colours) == "red"


@pytest.mark.slow
def test_fewshot_scores_attributes_and_skips_what_cannot_run(tokenizer, heldout, tmp_path):
    p = parts(tokenizer, gates=1.0)
    fewshot = write_fewshot(tmp_path / "fs")
    result = m3w_eval.evaluate(
        p, str(heldout), fewshot=fewshot, shots=(0, 2, 8), batch_size=4, seq_len=48,
        max_batches=1, max_new_tokens=4,
    )  # fmt: skip
    assert set(result["fewshot_accuracy"]) == {"0", "2"}
    assert "6" in result["fewshot_skipped"]["8"]  # 8 shots need 9 lines, the file has 6
    for k in ("0", "2"):
        assert 0.0 <= result["fewshot_accuracy"][k] <= 1.0
        per = result["fewshot_attribute_accuracy"][k]
        assert set(per) == {"colour", "shape", "count"}
        assert result["fewshot_accuracy"][k] == pytest.approx(sum(per.values()) / 3)
    assert result["fewshot_attribute_chance"] == pytest.approx(
        {"colour": 1 / 3, "shape": 1 / 3, "count": 1 / 2}
    )
    assert result["fewshot_chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    assert result["fewshot_queries"] == 6
    # without attributes the caption itself is scored: 6 distinct captions
    plain = write_fewshot(tmp_path / "plain", attributes=False)
    result = m3w_eval.evaluate(
        p, str(heldout), fewshot=plain, shots=(0,), batch_size=4, seq_len=48, max_batches=1,
        max_new_tokens=2,
    )  # fmt: skip
    assert set(result["fewshot_attribute_accuracy"]["0"]) == {"caption"}
    assert result["fewshot_chance"] == pytest.approx(1 / 6)


@pytest.mark.parametrize(
    "line, needle",
    [
        ("not json", "line 2: not JSON"),
        ('["a list"]', "line 2: not a JSON object"),
        ('{"caption": "a red circle"}', 'line 2: no "image"'),
        ('{"image": "0.jpg"}', 'line 2: no "caption"'),
        ('{"image": "missing.jpg", "caption": "x"}', "line 2: image missing.jpg"),
        ('{"image": "fewshot.jsonl", "caption": "x"}', "line 2: image fewshot.jsonl"),
        ('{"image": "0.jpg", "caption": "x", "attributes": ["red"]}', 'line 2: "attributes"'),
        ('{"image": "0.jpg", "caption": "x", "attributes": {"colour": ""}}', '"colour" has no'),
    ],
)
def test_a_bad_fewshot_line_is_an_error_naming_it(tmp_path, line, needle):
    good = write_fewshot(tmp_path).read_text().splitlines()[0]
    path = tmp_path / "fewshot.jsonl"
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(InputError, match="line 2") as e:
        m3w_eval.read_fewshot(path)
    assert needle in str(e.value) and str(path) in str(e.value)


# ---------------------------------------------------------------- from the command line
def test_every_flag_has_help_and_a_shown_default():
    import argparse

    parser = argparse.ArgumentParser()
    m3w_eval.register(parser.add_subparsers())
    p = parser._subparsers._group_actions[0].choices["eval"]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"m3w eval {action.option_strings}: no help"
        shown = p.formatter_class(prog="m3w")._get_help_string(action)
        if action.default not in (None, False):
            assert "default" in shown.lower(), f"m3w eval {action.option_strings}: {shown}"


def m3w(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env={**os.environ, **ENV},
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, heldout) -> Path:
    """A 2-step `m3w train` run on other shards: tmp/{models, train, run, fs/fewshot.jsonl}."""
    root = tmp_path_factory.mktemp("eval-cli")
    lm, vision = tiny.save_tiny_models(root / "models", tokenizer)
    synthetic.write_synthetic_shards(root / "train", shards=2, docs_per_shard=8, seed=1)
    base = {
        "model": {"lm": str(lm), "vision": str(vision), "flamingo": tiny.TINY_FLAMINGO},
        "data": {"batch_size": 2, "seq_len": 32, "num_workers": 0, "shuffle_buffer": 0},
        "run": {"device": "cpu", "progress": False},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    result = m3w(root, "train", "--config", "base.yaml", "--shards", "train", "--out", "run",
                 "--steps", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    write_fewshot(root / "fs")
    return root


@pytest.mark.slow
def test_cli_json_has_every_contract_key_and_writes_tensorboard(trained, heldout):
    shards = str(heldout / "{000000..000001}.tar")
    result = m3w(
        trained, "eval", "--checkpoint", "run/checkpoints/latest", "--shards", shards,
        "--fewshot", "fs/fewshot.jsonl", "--shots", "0,2", "--batch-size", "4",
        "--max-new-tokens", "4", "--json", "--tb", "evaltb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    for key in CONTRACT:
        assert math.isfinite(out[key]), (key, out[key])
    assert set(out["fewshot_accuracy"]) == {"0", "2"}
    assert all(0 <= a <= 1 for a in out["fewshot_accuracy"].values())
    assert math.isfinite(out["fewshot_chance"])
    assert out["step"] == 2 and out["checkpoint"].endswith("step-00000002")
    assert out["seq_len"] == 32  # the run's own window length
    assert out["batches"] == 4 and out["windows"] == 16  # every held-out window, batches of 4
    assert list((trained / "evaltb").glob("events.out.tfevents.*"))
    # the run folder means its newest complete checkpoint; the table is the default output
    table = m3w(trained, "eval", "--checkpoint", "run", "--shards", shards, "--batch-size", "4")
    assert table.returncode == 0, table.stderr[-3000:]
    assert "step-00000002 (step 2)" in table.stdout and "shuffled images" in table.stdout
    true_line = next(line for line in table.stdout.splitlines() if "true images" in line)
    assert f"{out['loss_true_images']:.4f}" in true_line


@pytest.mark.slow
def test_every_kind_of_checkpoint_gives_the_same_losses(trained, heldout, tmp_path):
    def losses(model) -> list[float]:
        r = m3w_eval.evaluate(model, str(heldout), batch_size=4, max_batches=2, device="cpu")
        return [r[k] for k in CONTRACT]

    step = losses(trained / "run" / "checkpoints" / "step-00000002")
    assert losses(trained / "run" / "final") == pytest.approx(step, abs=1e-6)
    # a run that was handed its model in memory (m3w demo) records no model in its config:
    # the FlamingoConfig of its final/ names it
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    ckpt = run / "checkpoints" / "step-00000002"
    state = json.loads((ckpt / "state.json").read_text())
    state["config"]["model"].update(lm=None, vision=None, flamingo={})
    (ckpt / "state.json").write_text(json.dumps(state))
    marker = json.loads((ckpt / "complete.json").read_text())
    marker["files"]["state.json"] = (ckpt / "state.json").stat().st_size
    (ckpt / "complete.json").write_text(json.dumps(marker))
    assert losses(run) == pytest.approx(step, abs=1e-6)
    (run / "final" / "flamingo_config.json").unlink()
    with pytest.raises(InputError, match="give --lm and --vision"):
        m3w_eval.load_checkpoint(run)
    # --lm/--vision name the models, but the run's tiny Flamingo settings are lost with final/
    models = trained / "models"
    with pytest.raises(InputError, match="do not fit the model built from its config"):
        m3w_eval.load_checkpoint(run, lm=str(models / "lm"), vision=str(models / "vision"))
    # an incomplete newest checkpoint is skipped for the one before it
    newer = run / "checkpoints" / "step-00000003"
    shutil.copytree(ckpt, newer)
    (newer / "trainable.pt").write_bytes(b"truncated")
    assert m3w_eval.find_checkpoint(run).path == ckpt


def _bad_line(root: Path) -> str:
    path = root / "fs" / "bad.jsonl"
    path.write_text((root / "fs" / "fewshot.jsonl").read_text() + "{oops\n")
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needles",
    [
        (["--checkpoint", "nowhere"], ["--checkpoint nowhere", "no such file"]),
        (["--checkpoint", "models"], ["--checkpoint models", "holds no checkpoint"]),
        (["--checkpoint", "base.yaml"], ["is a file"]),
        (["--shards", "nothing-*.tar"], ["nothing-*.tar", "matches no shard"]),
        (["--fewshot", "BAD"], ["bad.jsonl", "line 7", "not JSON"]),
        (["--max-images", "9"], ["--max-images 9", "at most 5"]),  # after the model loads
    ],
)
def test_cli_mistakes_are_one_line_errors(trained, heldout, args, needles):
    args = [_bad_line(trained) if a == "BAD" else a for a in args]
    flags = {"--checkpoint": "run", "--shards": str(heldout)}
    base = [x for k, v in flags.items() if k not in args for x in (k, v)]
    result = m3w(trained, "eval", *base, *args)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip()
    if "--max-images" not in args:  # before any model loads: nothing else on stderr
        assert len(err.splitlines()) == 1, err
    err = err.splitlines()[-1]
    assert err.startswith("m3w eval: error: "), err
    for needle in needles:
        assert needle in err, err
