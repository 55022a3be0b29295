"""FLOPs and MFU of a training step: what `m3w train` logs as `mfu` and the throughput benchmark
compares against (DESIGN §6). Estimates from parameter counts by role, not a profiler, so they cost
nothing per step and read the same on any device."""

from __future__ import annotations

import torch

from pipelines.train.config import TrainConfig

# Dense bf16 peak TFLOP/s per GPU (vendor datasheets, no sparsity), matched by the CUDA device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flop_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts by role, for the FLOPs estimate: frozen LM, frozen vision, trainable."""
    inner = model  # unwrapped by the caller (DDP/FSDP/compile: loop.unwrap_model)
    lm = getattr(inner, "lm", None)
    vision = getattr(inner, "vision", None)
    lm_ids = {id(p) for p in lm.parameters()} if lm is not None else set()  # xattn too
    vis_ids = {id(p) for p in vision.parameters()} if vision is not None else set()
    counts = {"lm": 0, "vision": 0, "resampler": 0, "xattn": 0}
    # every LM matrix costs a matmul per token, the (tied) embedding too: it is the output head
    for name, p in inner.named_parameters():
        if p.requires_grad:
            counts["resampler" if "resampler" in name else "xattn"] += p.numel()
        elif id(p) in vis_ids:
            counts["vision"] += p.numel()
        elif id(p) in lm_ids:
            counts["lm"] += p.numel()
    return counts


def step_flops(
    counts: dict[str, int], tokens: int, images: int, patches: int, latents: int
) -> float:
    """Training FLOPs of one step (Kaplan et al. 2020's 2N per token forward, 4N backward).

    The frozen LM still back-propagates activations to the xattn layers below it (2N+2N, no weight
    gradients); trainable xattn weights pay the full 6N per text token; the frozen vision tower runs
    forward only (2N per patch); the resampler pays 6N per (patch + latent) of every image.
    """
    lm = tokens * (4 * counts["lm"] + 6 * counts["xattn"])
    vision = images * patches * 2 * counts["vision"]
    resampler = images * (patches + latents) * 6 * counts["resampler"]
    return float(lm + vision + resampler)


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.run.peak_tflops:
        return cfg.run.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
