"""Trainer throughput: tokens/s, samples/s, data-wait fraction and MFU, and whether the loader keeps up.

Realistic config: a ~1.1B-parameter Llama-style causal LM (TinyLlama-1.1B's shape: 22 layers, d=2048)
and a ViT-L/14 vision tower at 224 px (CLIP ViT-L/14's shape), both random-init from configs, xattn
every 4th layer (OpenFlamingo-3B/9B style), 64 latents, 6 resampler layers, L=256, N=5, bf16.

    python benchmarks/train_throughput.py                   # CPU: the loader alone vs the GPU's need
    python benchmarks/train_throughput.py --device cuda     # GPU: real steps, loader vs in-memory batches

CPU mode measures the loader alone (samples/s with 1 and 2 DataLoader workers over generated shards
of realistic documents, CLIP 224 px preprocessing, a BPE tokenizer) and compares it with what one H100
step consumes, estimated from FLOPs (pipelines/train/flops.py step_flops) at 35% MFU of 989 dense bf16 TFLOP/s.
The baseline in the same run is a raw tar read (webdataset, no decode): the ceiling of any loader.

CUDA mode runs real training steps twice: once fed by the streaming loader, once from batches already
in GPU memory (the baseline: no data cost at all). The gap is the data-wait; MFU uses step_flops.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m3w_builder.document import Document, ImageNode, TextNode  # noqa: E402
from m3w_builder.shards import ShardWriter  # noqa: E402
from pipelines.demo import synthetic, tiny
from pipelines.train import data, flops
from pipelines.train import loop as train  # noqa: E402

H100_BF16_TFLOPS = 989.0
TARGET_MFU = 0.35
WORDS = (synthetic.WORDS * 3) + "image photo garden river station bread history morning".split()


# --------------------------------------------------------------------------------------------
# realistic synthetic documents
# --------------------------------------------------------------------------------------------
def _photo(rng: random.Random, w: int, h: int) -> bytes:
    """A JPEG with enough structure to weigh what a web photo weighs (tens of kB)."""
    im = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = rng.randint(0, w), rng.randint(0, h)
        r = rng.randint(5, max(6, w // 6))
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    noise = Image.effect_noise((w, h), 40).convert("RGB")
    im = Image.blend(im, noise, 0.25)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def realistic_document(i: int, rng: random.Random) -> Document:
    """M3W-like: ~1,000 words in 8-12 paragraphs, 1-5 images of 256-640 px."""
    doc = Document(url=f"http://bench.test/{i}")
    n_images = rng.randint(1, 5)
    paragraphs = rng.randint(8, 12)
    at = sorted(rng.sample(range(paragraphs), n_images))
    for p in range(paragraphs):
        if p in at:
            w, h = rng.randint(256, 640), rng.randint(256, 640)
            doc.nodes.append(
                ImageNode(src=f"/{i}/{p}.jpg", width=w, height=h, data=_photo(rng, w, h), ext="jpg",
                          attach=rng.choice(["following", "preceding"]))
            )  # fmt: skip
        doc.nodes.append(TextNode(" ".join(rng.choices(WORDS, k=rng.randint(60, 120)))))
    return doc


def write_shards(root: Path, shards: int, docs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for s in range(shards):
        with ShardWriter(root / f"{s:06d}.tar") as w:
            for i in range(docs):
                w.write(realistic_document(s * docs + i, rng))
            w.close()


# --------------------------------------------------------------------------------------------
# model shapes and FLOPs
# --------------------------------------------------------------------------------------------
def lm_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14,
    )  # fmt: skip


def build_flamingo(tokenizer, device: str):
    """The realistic Flamingo; on the meta device (no memory) when only its shape is needed."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    from model.flamingo import Flamingo, FlamingoConfig

    fcfg = FlamingoConfig(cross_attn_every_n_layers=4, max_images=5)
    with torch.device(device):
        lm = LlamaForCausalLM(lm_config())
        vision = CLIPVisionModel(vision_config())
        return Flamingo.from_models(lm, vision, tokenizer, fcfg)


def flops_per_sample(counts: dict[str, int], images_per_sample: float, seq_len: int) -> float:
    """Training FLOPs of one window: its tokens plus its (mean number of) images."""
    patches = (224 // 14) ** 2 + 1  # ViT-L/14 at 224 px: 256 patches + CLS
    text = flops.step_flops(counts, tokens=seq_len, images=0, patches=patches, latents=64)
    image = flops.step_flops(counts, tokens=0, images=1, patches=patches, latents=64)
    return text + images_per_sample * image


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def raw_read_rate(shard_dir: Path, seconds: float) -> float:
    """Samples/s of webdataset's tar reader alone, one process (the ceiling of any loader)."""
    urls = data.expand_shards(str(shard_dir))
    counts = data.Counts()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for url in urls:
            for _ in data.read_shard(url, counts):
                n += 1
    return n / (time.perf_counter() - t0)


def loader_rate(cfg: data.DataConfig, tokenizer, processor, batches: int) -> tuple[float, float]:
    """(samples/s, mean valid images per sample) of the full loader with cfg.num_workers workers."""
    loader = data.make_loader(cfg, tokenizer, processor)
    it = iter(loader)
    for _ in range(max(2, cfg.num_workers * 2)):  # warm-up: worker start, first shards
        next(it)
    n = imgs = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += len(b["input_ids"])
        imgs += int(b["image_valid"].sum())
    rate = n / (time.perf_counter() - t0)
    del it
    return rate, imgs / max(1, n)


def cpu_report(args, shard_dir: Path, tokenizer, processor) -> list[str]:
    model = build_flamingo(tokenizer, "meta")
    counts = flops.flop_counts(train.unwrap_model(model))
    base = data.DataConfig(shards=str(shard_dir), batch_size=args.batch_size, shuffle_buffer=64)
    rows = []
    raw = raw_read_rate(shard_dir, seconds=5)
    imgs = 0.0
    for workers in args.workers:
        cfg = data.DataConfig(**{**base.__dict__, "num_workers": workers})
        rate, imgs = loader_rate(cfg, tokenizer, processor, args.batches)
        rows.append((workers, rate, rate / max(1, workers)))
    fps = flops_per_sample(counts, imgs, base.seq_len)
    need = H100_BF16_TFLOPS * 1e12 * TARGET_MFU / fps
    out = [
        f"model: LM {counts['lm'] / 1e9:.2f}B frozen + ViT-L/14 {counts['vision'] / 1e6:.0f}M "
        f"frozen + {(counts['xattn'] + counts['resampler']) / 1e6:.0f}M trainable "
        f"(xattn every 4th layer, resampler 6×64)",
        f"FLOPs per sample (L=256, {imgs:.2f} images/window): {fps / 1e12:.2f} TFLOP",
        f"one H100 at {TARGET_MFU:.0%} MFU of {H100_BF16_TFLOPS:.0f} TFLOP/s consumes "
        f"**{need:.1f} samples/s**",
        "",
        "| loader | workers | samples/s | samples/s per worker | vs H100 need |",
        "|---|---|---|---|---|",
        f"| raw tar read (baseline, no decode) | 1 | {raw:.1f} | {raw:.1f} | {raw / need:.1f}× |",
    ]
    for workers, rate, per in rows:
        label = "full pipeline" if workers else "full pipeline (in-process)"
        out.append(f"| {label} | {workers} | {rate:.1f} | {per:.1f} | {rate / need:.2f}× |")
    per_worker = max(r[2] for r in rows)
    out.append("")
    out.append(
        f"workers needed per H100 to keep data wait ≈ 0: {need / per_worker:.1f} "
        f"(at {per_worker:.1f} samples/s per worker)"
    )
    return out


def cuda_report(args, shard_dir: Path, tokenizer, processor) -> list[str]:
    from pipelines.train.config import TrainConfig

    model = build_flamingo(tokenizer, "cpu").to(torch.bfloat16)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    cfg = TrainConfig.from_dict(
        {
            "data": [{"shards": str(shard_dir), "batch_size": args.batch_size,
                      "num_workers": max(args.workers), "shuffle_buffer": 64}],
            "optim": {"warmup_steps": 10},
            "run": {"steps": args.steps, "out": tempfile.mkdtemp(), "device": "cuda",
                    "checkpoint_every": 10**9, "progress": False, "tensorboard": False,
                    "grad_checkpointing": args.grad_checkpointing, "compile": args.compile},
        }
    )  # fmt: skip
    parts = train.Parts(model, tokenizer, processor)
    summary = train.train(cfg, parts)
    # baseline: the same steps on one batch already on the GPU (no data cost at all)
    d = train.Dist(device=torch.device("cuda"))
    wrapped = parts.model
    opt = train.make_optimizer(wrapped, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, train.lr_lambda(cfg))
    loader = data.make_loader(cfg.data[0], tokenizer, processor)
    batch = next(iter(loader))
    for k in ("_position", "_counts", "_dataset"):
        batch.pop(k, None)
    batch = train.to_device(batch, d.device)

    class Fixed:
        counts: dict = {}

        def next(self, name):
            return batch

    counts = flops.flop_counts(train.unwrap_model(wrapped))
    peak = H100_BF16_TFLOPS * 1e12
    times, toks = [], 0
    for step in range(args.steps):
        torch.cuda.synchronize()
        s = train.train_step(wrapped, opt, sched, Fixed(), cfg, d, step)  # type: ignore[arg-type]
        torch.cuda.synchronize()
        if step >= 3:
            times.append(s.step_s)
            toks = s.tokens
            imgs = s.images
    step_s = statistics.median(times)
    step_total = flops.step_flops(counts, toks, imgs, 257, 64)
    return [
        f"device: {torch.cuda.get_device_name()}",
        "",
        "| feed | tokens/s | samples/s | data wait | MFU |",
        "|---|---|---|---|---|",
        f"| streaming loader ({max(args.workers)} workers) | {summary['tokens_per_s']:.0f} | "
        f"{summary['samples_per_s']:.1f} | {summary['data_wait_fraction']:.1%} | "
        f"{(summary['mfu'] or 0):.1%} |",
        f"| in-GPU batch (baseline) | {toks / step_s:.0f} | {args.batch_size / step_s:.1f} | 0 | "
        f"{step_total / step_s / peak:.1%} |",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--docs", type=int, default=40, help="documents per shard")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=20, help="measured batches per loader config")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=30, help="CUDA mode: training steps")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = Path(tmp)
        t0 = time.perf_counter()
        write_shards(shard_dir, args.shards, args.docs)
        rng = random.Random(1)
        texts = [" ".join(rng.choices(WORDS, k=200)) for _ in range(200)]
        tokenizer = tiny.train_tokenizer(texts, vocab_size=4000)
        processor = tiny.tiny_image_processor(224)
        print(f"generated {args.shards}×{args.docs} documents in {time.perf_counter() - t0:.1f} s")
        if args.device == "cuda":
            lines = cuda_report(args, shard_dir, tokenizer, processor)
        else:
            lines = cpu_report(args, shard_dir, tokenizer, processor)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
