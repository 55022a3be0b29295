"""`m3w demo`: the whole path on a fresh clone, on CPU, offline, in a few minutes.

1. generate a small website (pages with text and Pillow-drawn images, plus known junk) and serve it
   on 127.0.0.1 (pipelines/sample_site.py);
2. `m3w build` it with a local Ray, exactly as a crawl's URL list is built;
3. print `m3w inspect stats` of the shards;
4. train a tiny Flamingo on them: a byte-level BPE tokenizer trained here on the built text, a
   random-init GPT-2-style LM and CLIP-style vision tower saved as local model folders and loaded by
   the trainer like hub ids (or real `--lm/--vision` ids for users with hub access);
5. generate a continuation for one interleaved prompt (an image from the shards plus its first words).

`--out DIR` keeps everything (site, shards, models, checkpoints, TensorBoard logs) and `summary.json`
with the build counts, first/last training loss, steps, wall time and the generated text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.cli_help import DefaultsFormatter

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build, inspect and train a tiny model end to end on CPU",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", help="keep everything here (default: a temporary folder, removed)")
    p.add_argument("--pages", type=int, default=24, help="pages of the generated site (>10)")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--batch-size", type=int, default=8, help="documents per training batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training window")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    p.add_argument("--lm", help="a real causal LM id/path instead of the tiny random one")
    p.add_argument("--vision", help="a real vision model id/path instead of the tiny random one")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--seed", type=int, default=0, help="seed of the site, the build and training")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.out:
        summary = run_demo(Path(args.out), args)
    else:
        with tempfile.TemporaryDirectory(prefix="m3w-demo-") as tmp:
            summary = run_demo(Path(tmp), args)
    print(
        f"\nloss {summary['first_loss']:.3f} → {summary['last_loss']:.3f} in {summary['steps']} "
        f"steps; {summary['wall_s']:.0f} s in all"
    )
    print(f"prompt:     {summary['prompt']!r}\ngeneration: {summary['generated']!r}")
    if args.out:
        print(f"everything is in {args.out} (summary.json, build/, run/tb for TensorBoard)")
    return 0


def run_demo(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report = build_site_shards(out, args)
    print_stats(out / "build")
    parts, tokenizer_note = model_parts(out, args)
    train_summary = train_tiny(out, args, parts)
    prompt, generated = generate_example(out / "build", parts)
    summary = {
        "build": {k: report.get(k) for k in ("pages", "documents", "images", "shards", "counts")},
        "tokenizer": tokenizer_note,
        "first_loss": train_summary["first_loss"],
        "last_loss": train_summary["last_loss"],
        "steps": train_summary["steps"],
        "train_wall_s": train_summary["wall_s"],
        "tokens_per_s": train_summary["tokens_per_s"],
        "prompt": prompt,
        "generated": generated,
        "wall_s": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


# --------------------------------------------------------------------------------------------
# 1-3: site → build → stats
# --------------------------------------------------------------------------------------------
def build_site_shards(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from m3w_builder.config import BuildConfig
    from pipelines.build import JobOptions, run_build, summary_table
    from pipelines.sample_site import make_site, serve_site, write_url_list

    site = out / "site"
    info = make_site(site, pages=args.pages, seed=args.seed)
    print(f"[1/5] generated {len(info.pages)} pages with {info.good_images} images under {site}")
    config = BuildConfig.for_profile("m3w")
    config.fetch.allow_private_hosts = True  # the demo site is served on 127.0.0.1
    config.shards.docs_per_shard = 8
    config.seed = args.seed
    with serve_site(site) as base_url:
        urls = write_url_list(site, base_url, site / "urls.txt")
        print(f"[2/5] m3w build {urls} (served at {base_url}) on a local Ray")
        options = JobOptions(
            out=str(out / "build"), num_cpus=args.num_cpus, progress=False, loopback_only=True
        )
        report = run_build([str(urls)], config, options)
    print(summary_table(report))
    return report


def print_stats(job: Path) -> None:
    from pipelines.inspect_read import resolve_target
    from pipelines.inspect_stats import compute_stats, format_table

    print("[3/5] m3w inspect stats")
    print(format_table(compute_stats(resolve_target(job))))


# --------------------------------------------------------------------------------------------
# 4: model and training
# --------------------------------------------------------------------------------------------
def shard_texts(job: Path) -> list[str]:
    from m3w_builder.shards import iter_shard

    texts: list[str] = []
    for shard in sorted((job / "shards").glob("*.tar")):
        for sample in iter_shard(shard):
            texts.extend(t for t in sample.record.get("texts", []) if t)
    return texts


def model_parts(out: Path, args: argparse.Namespace) -> tuple[Any, str]:
    """Tiny random models saved as local folders (tokenizer trained on the built text), or the
    user's `--lm/--vision` ids; loaded through the trainer's own `build_parts`."""
    from pipelines import tiny
    from pipelines.train import build_parts
    from pipelines.trainconfig import TrainConfig

    cfg = TrainConfig()
    if args.lm or args.vision:
        if not (args.lm and args.vision):
            raise SystemExit("m3w demo: give both --lm and --vision, or neither")
        cfg.model.lm, cfg.model.vision = args.lm, args.vision
        cfg.model.cross_attn_every_n_layers = 4
        note = f"{args.lm}'s own"
    else:
        texts = shard_texts(out / "build")
        if not texts:
            raise SystemExit("m3w demo: the build produced no text to train a tokenizer on")
        tokenizer = tiny.train_tokenizer(texts, vocab_size=1024)
        lm, vision = tiny.save_tiny_models(out / "models", tokenizer, seed=args.seed)
        cfg.model.lm, cfg.model.vision = str(lm), str(vision)
        cfg.model.flamingo = dict(tiny.TINY_FLAMINGO)
        note = f"byte-level BPE, {len(tokenizer)} tokens, trained on {len(texts)} built paragraphs"
    print(f"[4/5] model: lm={cfg.model.lm} vision={cfg.model.vision} tokenizer: {note}")
    return build_parts(cfg), note


def train_tiny(out: Path, args: argparse.Namespace, parts: Any) -> dict[str, Any]:
    from pipelines.train import print_summary, train
    from pipelines.trainconfig import TrainConfig

    cfg = TrainConfig.from_dict(
        {
            "model": {"flamingo": {}},
            "data": [
                {
                    "name": "m3w",
                    "shards": str(out / "build" / "shards"),
                    "batch_size": args.batch_size,
                    "seq_len": args.seq_len,
                    "max_images": 5,
                    "num_workers": 1,
                    "shuffle_buffer": 64,
                    "seed": args.seed,
                }
            ],
            "optim": {"lr": args.lr, "warmup_steps": max(1, args.steps // 10)},
            "run": {
                "out": str(out / "run"),
                "steps": args.steps,
                "checkpoint_every": max(1, args.steps // 2),
                "log_every": 5,
                "device": "cpu",
                "seed": args.seed,
            },
        }
    )
    summary = train(cfg, parts)
    print_summary(summary)
    return summary


# --------------------------------------------------------------------------------------------
# 5: generation
# --------------------------------------------------------------------------------------------
def generate_example(
    job: Path, parts: Any, words: int = 6, new_tokens: int = 24
) -> tuple[str, str]:
    """Prompt `<image> first words of the text after it` with the first image of the first document
    that has one followed by text; greedy continuation."""
    import io

    import torch
    from PIL import Image

    from m3w_builder.shards import iter_shard
    from model.flamingo import EOC_TOKEN
    from pipelines.data import IMAGE_TOKEN

    model, tokenizer = parts.model, parts.tokenizer
    for shard in sorted((job / "shards").glob("*.tar")):
        for sample in iter_shard(shard):
            texts, images = sample.record["texts"], sample.record["images"]
            for i, image in enumerate(images[:-1]):
                if image is None or texts[i + 1] is None or image["member"] not in sample.members:
                    continue
                start = " ".join(texts[i + 1].split()[:words])
                prompt = f"{IMAGE_TOKEN} {start}"
                pil = Image.open(io.BytesIO(sample.members[image["member"]])).convert("RGB")
                pixels = parts.image_processor(images=[pil], return_tensors="pt")["pixel_values"]
                bos = tokenizer.bos_token_id
                bos = tokenizer.eos_token_id if bos is None else bos
                body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([[bos, *body]])
                model.eval()
                out = model.generate(
                    ids,
                    pixels[None],  # [B=1, N=1, C, H, W]
                    torch.ones(1, 1, dtype=torch.bool),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    # a chunk ends at <|endofchunk|>: stop there, as few-shot Flamingo prompting does
                    eos_token_id=[
                        t
                        for t in (
                            tokenizer.convert_tokens_to_ids(EOC_TOKEN),
                            tokenizer.eos_token_id,
                        )
                        if t is not None
                    ],
                )
                text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)
                print(f"[5/5] generate: {prompt!r} → {text!r}")
                return prompt, text
    return "", ""
