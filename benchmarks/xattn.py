"""Masked cross-attention: the per-image block kernel vs the dense OpenFlamingo-style formulation.

Both run the same ``model.xattn.MaskedCrossAttention`` module (LayerNorm, q/kv/out projections,
explicit zeroing of rows that see no image); only the kernel differs:
- dense (baseline, measured in the same run): scores of every text token against all N·64 visual
  tokens, masked to the token's image(s) — a [B, H, T, N·64] tensor, as OpenFlamingo's
  MaskedCrossAttention does (src/helpers.py L196-229);
- fast: (token, image) pairs grouped per image into blocks, each block attending to its image's 64
  latents only (SDPA), scattered back; log-sum-exp merge where a token sees several images.

Masks come from ``model.masks.attachment_mask`` over a window of T tokens holding N images at random
positions (an ``<EOC>`` before each), attached per document (p_next = 1/2, DESIGN §4) unless
``--attach per-image``. Each configuration is timed forward + backward (median of ``--reps`` after one
warm-up) and the outputs and input gradients of the two kernels are compared. Memory: on CUDA the
peak allocated during forward + backward above the inputs; on CPU, where torch keeps no allocator
statistics, the bytes the autograd graph saves for backward (distinct storages) plus the output.

Usage: python benchmarks/xattn.py [--device cpu|cuda] [--dtype fp32|bf16] [--T 256 1024 2048]
       [--N 5 16 32] [--dim 2048] [--reps 3] [--attach per-document|per-image] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.masks import attachment_mask  # noqa: E402
from model.xattn import (  # noqa: E402
    MaskedCrossAttention,
    dense_masked_attention,
    fast_masked_attention,
)

IMG, EOC, TEXT = 3, 4, 5
LATENTS = 64


def make_mask(
    batch: int, seq: int, n_img: int, per_image: bool, gen: torch.Generator
) -> torch.Tensor:
    ids = torch.full((batch, seq), TEXT)
    for row in range(batch):
        pos = torch.randperm(seq - 2, generator=gen)[:n_img].sort().values + 1
        ids[row, pos], ids[row, pos - 1] = IMG, EOC
    pre = torch.rand(batch, n_img, generator=gen) < 0.5
    if not per_image:
        pre = pre[:, :1].expand(batch, n_img)
    valid = torch.ones(batch, n_img, dtype=torch.bool)
    return attachment_mask(ids, pre, valid, IMG, EOC)


def saved_bytes(fn) -> tuple[torch.Tensor, int]:
    """Run fn() and count the distinct storages autograd saves for backward, plus the output."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values()) + out.numel() * out.element_size()


def run_once(fn, inputs, device) -> tuple[float, int, torch.Tensor, list[torch.Tensor]]:
    """Forward + backward of fn(); returns seconds, bytes, output and the inputs' gradients."""
    for t in inputs:
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    # on CPU the process's CPU time: the dev machine's cores are shared, so wall time measures the
    # neighbours as much as the kernel (run with --threads 1 for a clean count)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    out, saved = saved_bytes(fn)
    out.float().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = clock() - start
    mem = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else saved
    return elapsed, mem, out.detach(), [t.grad.clone() for t in inputs]


def compare(args, device, fns: dict, inputs: list[torch.Tensor]) -> dict:
    row, results = {}, {}
    for name, fn in fns.items():
        run_once(fn, inputs, device)  # warm-up
        runs = [run_once(fn, inputs, device) for _ in range(args.reps)]
        results[name] = runs[-1]
        row[f"{name}_ms"] = statistics.median(r[0] for r in runs) * 1e3
        row[f"{name}_mb"] = max(r[1] for r in runs) / 2**20
    (_, _, out_d, g_d), (_, _, out_f, g_f) = results["dense"], results["fast"]
    errs = [(out_d, out_f), *zip(g_d, g_f)]
    row["max_rel_err"] = max(
        float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
        for a, b in errs
    )
    return row


def bench(args, seq: int, n_img: int, gen: torch.Generator) -> list[dict]:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dims = dict(dim=args.dim, dim_visual=args.dim_visual, heads=args.heads, dim_head=args.dim_head)
    torch.manual_seed(0)
    fast = MaskedCrossAttention(**dims, impl="fast")
    dense = MaskedCrossAttention(**dims, impl="dense")
    dense.load_state_dict(fast.state_dict())
    fast, dense = (m.to(device=device, dtype=dtype) for m in (fast, dense))
    x = torch.randn(args.batch, seq, args.dim, generator=gen).to(device, dtype).requires_grad_()
    media = torch.randn(args.batch, n_img, LATENTS, args.dim_visual, generator=gen)
    media = media.to(device, dtype).requires_grad_()
    mask = make_mask(args.batch, seq, n_img, args.attach == "per-image", gen).to(device)
    base = {"T": seq, "N": n_img, "max_seen": int(mask.sum(-1).max())}
    module_row = compare(
        args,
        device,
        {"dense": lambda: dense(x, media, mask), "fast": lambda: fast(x, media, mask)},
        [x, media],
    )
    h, d = args.heads, args.dim_head
    q = torch.randn(args.batch, seq, h, d, generator=gen).to(device, dtype).requires_grad_()
    k, v = (
        torch.randn(args.batch, n_img, LATENTS, h, d, generator=gen)
        .to(device, dtype)
        .requires_grad_()
        for _ in range(2)
    )
    kernel_row = compare(
        args,
        device,
        {
            "dense": lambda: dense_masked_attention(q, k, v, mask),
            "fast": lambda: fast_masked_attention(q, k, v, mask),
        },
        [q, k, v],
    )
    return [{**base, "scope": "module", **module_row}, {**base, "scope": "kernel", **kernel_row}]


def table(rows: list[dict]) -> str:
    head = (
        "| T | N | scope | max imgs/token | dense ms | fast ms | speed-up | dense MB | fast MB "
        "| mem ratio | max rel err |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['T']} | {r['N']} | {r['scope']} | {r['max_seen']} | {r['dense_ms']:.1f} | "
            f"{r['fast_ms']:.1f} | {r['dense_ms'] / r['fast_ms']:.2f}× | {r['dense_mb']:.1f} | "
            f"{r['fast_mb']:.1f} | {r['dense_mb'] / r['fast_mb']:.2f}× | {r['max_rel_err']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--dtype", default=None, choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA"
    )
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--N", type=int, nargs="+", default=[5, 16, 32])
    ap.add_argument("--dim", type=int, default=2048, help="LM width D")
    ap.add_argument(
        "--dim-visual", type=int, default=1024, help="visual token width (CLIP ViT-L/14)"
    )
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim-head", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attach", default="per-document", choices=["per-document", "per-image"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for seq in args.T:
        for n_img in args.N:
            if n_img * 2 >= seq:
                continue
            rows += bench(args, seq, n_img, gen)
            for r in rows[-2:]:
                print(
                    f"T={seq} N={n_img} {r['scope']}: dense {r['dense_ms']:.1f} ms, "
                    f"fast {r['fast_ms']:.1f} ms",
                    file=sys.stderr,
                )
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    header = (
        f"### {args.device} {args.dtype}, D={args.dim}, Dv={args.dim_visual}, heads={args.heads}×"
        f"{args.dim_head}, B={args.batch}, {LATENTS} latents/image, {args.attach} attachment\n\n"
        f"{dev}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; median of {args.reps} after 1 warm-up; "
        f"time = {'wall' if args.device == 'cuda' else 'process CPU'} ms of forward + backward; "
        f"memory = {'peak allocated' if args.device == 'cuda' else 'saved for backward + output'}\n"
    )
    text = header + "\n" + table(rows) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
