"""`m3w demo`: the whole path on a fresh clone, on CPU, offline, in a few minutes.

1. generate a small grounded website and serve it on 127.0.0.1 (pipelines/demo/sample_site.py): pictures
   of counted, coloured shapes whose captions ("... shows two red triangles.") stand on the side the
   build will attach each picture to, ordinary prose elsewhere, and the usual junk for the filters;
2. `m3w build` it with a local Ray, exactly as a crawl's URL list is built;
3. print `m3w inspect stats` of the shards, and hold out the last shards for evaluation;
4. train a tiny Flamingo on the others: a byte-level BPE tokenizer trained here on the built text, a
   GPT-2-style LM first trained on that text alone (Flamingo freezes a *pretrained* LM), a CLIP-style
   vision tower first trained contrastively on freshly drawn captioned scenes (pipelines/demo/tower.py),
   saved as local model folders and loaded by the trainer like hub ids (or
   real `--lm/--vision` ids for users with hub access); both stay frozen;
5. `m3w eval` on the held-out shards: caption loss with the true, shuffled, no and flipped images,
   and few-shot captioning of held-out pictures (`fewshot.jsonl`);
6. generate a continuation for one held-out picture.

`--out DIR` keeps everything (site, shards, models, checkpoints, TensorBoard logs) and `summary.json`
with the build counts, first/last training loss, steps, wall time, the evaluation under `"eval"` and
the generated text. `--images shuffled` trains the control run: every image swapped for one of
another document, so the captions cannot be learnt from the pictures and the gaps must vanish.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m3w_builder.errors import ConfigError, RunFailed, UserError
from pipelines.cli_help import DefaultsFormatter

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build, inspect and train a tiny model end to end on CPU",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--out", help="keep everything here (default: a temporary folder, removed)")
    p.add_argument("--pages", type=int, default=150, help="pages of the generated site (>10)")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument(
        "--heldout", type=float, default=0.2, help="share of the shards held out for m3w eval"
    )
    p.add_argument(
        "--lm-pretrain-steps",
        type=int,
        default=400,
        help="steps of text-only training of the tiny LM",
    )
    p.add_argument(
        "--vision-pretrain-steps",
        type=int,
        default=DEMO_VISION_PRETRAIN_STEPS,
        help="steps of contrastive training of the tiny vision tower on freshly drawn "
        "scenes (0: a random tower)",
    )
    p.add_argument(
        "--images",
        choices=("true", "shuffled"),
        default="true",
        help="shuffled: the control run, images swapped across documents while training",
    )
    p.add_argument("--no-eval", action="store_true", help="skip m3w eval of the held-out shards")
    p.add_argument("--batch-size", type=int, default=8, help="documents per training batch")
    p.add_argument("--seq-len", type=int, default=192, help="tokens per training window")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    p.add_argument("--lm", help="a real causal LM id/path instead of the tiny random one")
    p.add_argument("--vision", help="a real vision model id/path instead of the tiny random one")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--seed", type=int, default=0, help="seed of the site, the build and training")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_args(args)
    if args.out:
        summary = run_demo(Path(args.out), args)
    else:
        with tempfile.TemporaryDirectory(prefix="m3w-demo-") as tmp:
            summary = run_demo(Path(tmp), args)
    print(
        f"\nloss {summary['first_loss']:.3f} → {summary['last_loss']:.3f} in {summary['steps']} "
        f"steps; {summary['wall_s']:.0f} s in all"
    )
    if summary.get("eval"):
        print(eval_headline(summary["eval"]))
    print(f"prompt:     {summary['prompt']!r}\ngeneration: {summary['generated']!r}")
    if args.out:
        print(f"everything is in {args.out} (summary.json, build/, run/tb for TensorBoard)")
    return 0


# the smallest value each numeric flag takes (the site needs more than 10 pages for a held-out split)
_MINIMUM = {
    "pages": 11,
    "steps": 1,
    "lm_pretrain_steps": 0,
    "vision_pretrain_steps": 0,
    "batch_size": 1,
    "seq_len": 16,
    "num_cpus": 1,
}


def check_args(args: argparse.Namespace) -> None:
    """A flag out of range is a one-line error before anything starts."""
    for name, least in _MINIMUM.items():
        if getattr(args, name) < least:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be at least {least}, got {getattr(args, name)}")
    if not 0 < args.heldout < 1:
        raise ConfigError(
            f"--heldout is a share of the shards, between 0 and 1, got {args.heldout}"
        )
    if not args.lr > 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")


def run_demo(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _share_the_cores()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report, site = build_site_shards(out, args)
    print_stats(out / "build")
    train_shards, heldout = split_shards(out / "build", args.heldout)
    parts, tokenizer_note, pretrain, model_config = model_parts(out, args, train_shards)
    train_summary = train_tiny(out, args, parts, model_config, train_shards)
    evaluation = None
    if not args.no_eval:
        fewshot = write_fewshot_file(out, site, heldout)
        evaluation = evaluate_heldout(out, args, parts, heldout, fewshot)
    prompt, generated = generate_example(heldout, parts)
    summary = {
        "build": {k: report.get(k) for k in ("pages", "documents", "images", "shards", "counts")},
        "tokenizer": tokenizer_note,
        "lm_pretrain": (pretrain or {}).get("lm"),
        "vision_pretrain": (pretrain or {}).get("vision"),
        "images": args.images,
        "train_shards": len(train_shards),
        "heldout_shards": len(heldout),
        "first_loss": train_summary["first_loss"],
        "last_loss": train_summary["last_loss"],
        "steps": train_summary["steps"],
        "train_wall_s": train_summary["wall_s"],
        "tokens_per_s": train_summary["tokens_per_s"],
        "eval": evaluation,
        "prompt": prompt,
        "generated": generated,
        "wall_s": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


@contextlib.contextmanager
def _all_cores() -> Iterator[None]:
    """Every core for torch while nothing else runs (the models' pretraining), then back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _share_the_cores() -> None:
    """One core for the data worker, the rest for torch: two busy intra-op threads beside a
    decoding worker on a 2-core machine made a training step 15× slower (spin-waiting threads)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------------------------
# 1-3: site → build → stats → split
# --------------------------------------------------------------------------------------------
def build_site_shards(out: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """The grounded site is written once the server runs: its captions depend on the page URLs."""
    from m3w_builder.config import BuildConfig
    from pipelines.build.job import JobOptions, run_build, summary_table
    from pipelines.demo.sample_site import make_site, serve_site, write_url_list

    site = out / "site"
    config = BuildConfig.for_profile("m3w")
    config.fetch.allow_private_hosts = True  # the demo site is served on 127.0.0.1
    # small sites get small shards, so a held-out split of whole shards still has a few documents
    config.shards.docs_per_shard = max(2, min(8, args.pages // 12))
    config.seed = args.seed
    if config.attach.mode != "per-document":
        raise RuntimeError("the grounded site places captions by the per-document draw")
    site.mkdir(parents=True, exist_ok=True)
    with serve_site(site) as base_url:
        info = make_site(
            site,
            pages=args.pages,
            seed=args.seed,
            grounded=True,
            base_url=base_url,
            attach_seed=config.seed,
            p_next=config.attach.p_next,
        )
        print(
            f"[1/6] generated {len(info.pages)} pages with {info.good_images} images under {site}"
        )
        urls = write_url_list(site, base_url, site / "urls.txt")
        print(f"[2/6] m3w build {urls} (served at {base_url}) on a local Ray")
        options = JobOptions(
            out=str(out / "build"), num_cpus=args.num_cpus, progress=False, loopback_only=True
        )
        report = run_build([str(urls)], config, options)
    print(summary_table(report))
    return report, info


def print_stats(job: Path) -> None:
    from pipelines.inspect.read import resolve_target
    from pipelines.inspect.stats import compute_stats, format_table

    print("[3/6] m3w inspect stats")
    print(format_table(compute_stats(resolve_target(job))))


MIN_HELDOUT_DOCS = 4  # the shuffled-image ablation swaps pictures between held-out documents


def split_shards(job: Path, heldout: float) -> tuple[list[Path], list[Path]]:
    """The last shards, holding at least the `heldout` share of the documents (and at least
    MIN_HELDOUT_DOCS), for evaluation; the others (at least one) for training."""
    listed = [json.loads(line) for line in (job / "manifest.jsonl").read_text().splitlines()]
    listed.sort(key=lambda entry: entry["name"])  # the build's manifest: shard names and doc counts
    shards = [job / entry["name"] for entry in listed]
    docs = [entry["docs"] for entry in listed]
    want = max(MIN_HELDOUT_DOCS, round(sum(docs) * heldout))
    n_out = 0
    while n_out < len(shards) - 1 and sum(docs[len(shards) - n_out :]) < want:
        n_out += 1
    if n_out == 0 or sum(docs[len(shards) - n_out :]) < MIN_HELDOUT_DOCS:
        raise UserError(
            f"m3w demo: the build kept {sum(docs)} documents in {len(shards)} shard(s), too few "
            f"to train on some and hold out {MIN_HELDOUT_DOCS}: give more --pages"
        )
    print(f"      {len(shards) - n_out} shards for training, {n_out} held out for m3w eval")
    return shards[:-n_out], shards[-n_out:]


# --------------------------------------------------------------------------------------------
# 4: model and training
# --------------------------------------------------------------------------------------------
def shard_documents(shards: list[Path]) -> list[str]:
    """Each document's text as the trainer lays it out (`pipelines.train.data.flow_texts`), without the
    image and end-of-chunk tokens: the text a text-only LM is pretrained on."""
    from m3w_builder.shards import iter_shard
    from pipelines.train.data import ImageRef, flow_texts

    documents: list[str] = []
    for shard in shards:
        for sample in iter_shard(shard):
            record = sample.record
            nodes = [
                text if text is not None else ImageRef(None, False)
                for text, image in zip(record.get("texts", []), record.get("images", []))
                if text or image is not None
            ]
            if any(isinstance(n, str) for n in nodes):
                documents.append("".join(flow_texts(nodes)))
    return documents


def model_parts(
    out: Path, args: argparse.Namespace, train_shards: list[Path]
) -> tuple[Any, str, dict[str, float] | None, dict[str, Any]]:
    """Tiny models saved as local folders (tokenizer trained on the training shards' text, the LM
    pretrained on it), or the user's `--lm/--vision` ids; loaded through the trainer's `build_parts`."""
    from pipelines.demo import tiny
    from pipelines.train.config import TrainConfig
    from pipelines.train.loop import build_parts

    cfg = TrainConfig()
    pretrain = None
    if args.lm or args.vision:
        if not (args.lm and args.vision):
            raise ConfigError("give both --lm and --vision, or neither")
        cfg.model.lm, cfg.model.vision = args.lm, args.vision
        cfg.model.cross_attn_every_n_layers = 4
        note = f"{args.lm}'s own"
    else:
        documents = shard_documents(train_shards)
        if not documents:
            raise RunFailed("the build produced no text to train a tokenizer on")
        tokenizer = tiny.train_tokenizer(documents, vocab_size=1024)
        print(f"[4/6] pretraining the tiny LM on {len(documents)} documents' text, then the tower")
        with _all_cores():  # no data worker runs beside the pretraining
            lm, vision = tiny.save_tiny_models(
                out / "models",
                tokenizer,
                image_size=DEMO_IMAGE_SIZE,
                patch_size=DEMO_PATCH_SIZE,
                seed=args.seed,
                pretrain_on=documents,
                pretrain_steps=args.lm_pretrain_steps,
                vision_pretrain_steps=args.vision_pretrain_steps,
            )
        pretrain = json.loads((out / "models" / "pretrain.json").read_text())
        print(
            f"      LM text loss {pretrain['lm']['first_loss']:.3f} → "
            f"{pretrain['lm']['last_loss']:.3f}; it is frozen from here on"
        )
        if "vision" in pretrain:
            tower = pretrain["vision"]
            print(
                f"      vision tower: {args.vision_pretrain_steps} contrastive steps on freshly "
                f"drawn scenes, loss {tower['first_loss']:.3f} → {tower['last_loss']:.3f} "
                f"({tower['seconds']:.0f} s); frozen from here on"
            )
        cfg.model.lm, cfg.model.vision = str(lm), str(vision)
        cfg.model.flamingo = {**tiny.TINY_FLAMINGO, **DEMO_FLAMINGO}
        note = f"byte-level BPE, {len(tokenizer)} tokens, trained on {len(documents)} documents"
    print(f"      model: lm={cfg.model.lm} vision={cfg.model.vision} tokenizer: {note}")
    return build_parts(cfg), note, pretrain, dataclasses.asdict(cfg.model)


DEMO_IMAGE_SIZE = 64  # the tiny tower's input: counting four shapes needs more than 32 pixels
DEMO_PATCH_SIZE = 8  # 64 patches: the pretrained tower reads shapes and counts from them
# contrastive steps of the tower (pipelines/demo/tower.py): ~30 s on 2 cores; a linear probe of its
# mean features reads shape 0.55 / count 0.55 after 300 (0.52 / 0.45 for a random 4-px-patch tower)
DEMO_VISION_PRETRAIN_STEPS = 600
DEMO_MAX_IMAGES = 9  # image slots per window: m3w eval's 8-shot prompts hold 9 pictures
# a little more resampler than the tests' tiny one: counting objects needs more than 8 latents
DEMO_FLAMINGO = {"max_images": DEMO_MAX_IMAGES, "num_latents": 16, "resampler_depth": 2}


def train_tiny(
    out: Path,
    args: argparse.Namespace,
    parts: Any,
    model_config: dict[str, Any],
    train_shards: list[Path],
) -> dict[str, Any]:
    from pipelines.train.config import TrainConfig
    from pipelines.train.loop import print_summary, train

    cfg = TrainConfig.from_dict(
        {
            # the model it trains, so `m3w eval --checkpoint RUN` rebuilds it from the checkpoint
            "model": model_config,
            "data": [
                {
                    "name": "m3w",
                    "shards": "::".join(str(p) for p in train_shards),
                    "batch_size": args.batch_size,
                    "seq_len": args.seq_len,
                    "max_images": DEMO_MAX_IMAGES,
                    "num_workers": 1,
                    "shuffle_buffer": 64,
                    "seed": args.seed,
                    "images": args.images,
                }
            ],
            # warm-up, then cosine decay: the loss and the held-out scores level off by ~600 steps
            # (1500 constant-LR steps read no more of the pictures and took 2.5x the time)
            "optim": {
                "lr": args.lr,
                "warmup_steps": max(1, args.steps // 10),
                "schedule": "cosine",
            },
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
    print(f"      training the Flamingo parts ({args.images} images) for {args.steps} steps")
    summary = train(cfg, parts)
    print_summary(summary)
    return summary


# --------------------------------------------------------------------------------------------
# 5: evaluation
# --------------------------------------------------------------------------------------------
def write_fewshot_file(out: Path, site: Any, heldout: list[Path]) -> Path:
    """`m3w eval`'s few-shot file from the held-out documents' pictures: image, caption, attributes."""
    from urllib.parse import urlsplit

    from m3w_builder.shards import iter_shard

    lines = []
    for shard in heldout:
        for sample in iter_shard(shard):
            for image in sample.record.get("images", []):
                scene = image and site.scenes.get(urlsplit(image.get("src", "")).path)
                if scene:
                    path = Path(site.root) / urlsplit(image["src"]).path.lstrip("/")
                    lines.append(
                        {
                            "image": str(path.resolve()),
                            "caption": scene["caption"],
                            "attributes": scene["attributes"],
                        }
                    )
    dest = out / "fewshot.jsonl"
    dest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return dest


def evaluate_heldout(
    out: Path, args: argparse.Namespace, parts: Any, heldout: list[Path], fewshot: Path
) -> dict[str, Any]:
    from pipelines.train.eval import evaluate, format_table

    print(f"[5/6] m3w eval on {len(heldout)} held-out shards, few-shot from {fewshot}")
    result = evaluate(
        parts,
        [str(p) for p in heldout],
        fewshot=str(fewshot),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_images=DEMO_MAX_IMAGES,  # the training windows' layout, not DataConfig's default 5
        seed=args.seed,
    )
    print(format_table(result))
    return result


def eval_headline(result: dict[str, Any]) -> str:
    acc = result.get("fewshot_accuracy") or {}
    shots = ", ".join(f"{k}-shot {v:.2f}" for k, v in acc.items())
    return (
        f"caption loss: true images {result['loss_true_images']:.3f}, shuffled "
        f"{result['loss_shuffled_images']:.3f}, none {result['loss_no_images']:.3f}, flipped "
        f"{result['loss_flipped_attachment']:.3f}; few-shot accuracy {shots or '-'} "
        f"(chance {result.get('fewshot_chance') or 0:.2f})"
    )


# --------------------------------------------------------------------------------------------
# 5: generation
# --------------------------------------------------------------------------------------------
def generate_example(
    shards: list[Path], parts: Any, words: int = 6, new_tokens: int = 24
) -> tuple[str, str]:
    """Prompt `<image> first words of the text after it` with the first image of the first document
    that has one followed by text; greedy continuation."""
    import io

    import torch
    from PIL import Image

    from m3w_builder.shards import iter_shard
    from model.flamingo import EOC_TOKEN
    from pipelines.train.data import IMAGE_TOKEN

    model, tokenizer = parts.model, parts.tokenizer
    for shard in shards:
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
                print(f"[6/6] generate: {prompt!r} → {text!r}")
                return prompt, text
    return "", ""
