"""Tiny random-init parts for `m3w demo` and the tests: no hub, no network, seconds on a CPU.

- `train_tokenizer`: a byte-level BPE (GPT-2's scheme) trained offline with `tokenizers` on the text at
  hand, with `<image>` and `<|endofchunk|>` already special tokens.
- `tiny_lm` / `tiny_vision` / `tiny_image_processor`: a GPT-2-style causal LM and a CLIP-style vision
  tower built from small configs, plus the matching `CLIPImageProcessor`.
- `pretrain_lm`, `save_tiny_models`, `tiny_flamingo`: the demo's pretrained-then-frozen LM and the
  tests' whole tiny model. Synthetic shards to train on are pipelines/demo/synthetic.py's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.train.data import EOC_TOKEN, IMAGE_TOKEN

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer.

    Byte-level so that any text encodes (no unknown token), like GPT-2's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, EOC_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN, EOC_TOKEN],
    )


def tiny_lm(
    vocab_size: int, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 512
) -> Any:
    """A GPT-2-style causal LM from a config (random init)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def tiny_vision(
    *, image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, layers: int = 2
) -> Any:
    """A CLIP-style ViT vision tower from a config (random init)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    return CLIPVisionModel(cfg)


def tiny_image_processor(image_size: int = 32) -> Any:
    """CLIP preprocessing (resize shortest edge, centre crop, normalise) at `image_size`.

    The PIL backend is named directly: the default CLIP processor in transformers 5 wants torchvision.
    """
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def tiny_flamingo(
    tokenizer: Any, *, image_size: int = 32, max_images: int = 5, lm_layers: int = 2, seed: int = 0
) -> tuple[Any, Any]:
    """A tiny random-init Flamingo (GPT-2-style LM + CLIP-style tower) and its image processor."""
    import torch

    from model.flamingo import Flamingo, FlamingoConfig

    torch.manual_seed(seed)
    lm = tiny_lm(len(tokenizer), n_layer=lm_layers)
    vision = tiny_vision(image_size=image_size)
    cfg = FlamingoConfig(**TINY_FLAMINGO, max_images=max_images)
    model = Flamingo.from_models(lm, vision, tokenizer, cfg)
    return model, tiny_image_processor(image_size)


def save_tiny_models(
    directory: str | Path,
    tokenizer: Any,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    lm_layers: int = 2,
    seed: int = 0,
    pretrain_on: list[str] | None = None,
    pretrain_steps: int = 400,
    vision_pretrain_steps: int = 0,
) -> tuple[Path, Path]:
    """Save a tiny LM (with `tokenizer`) and vision tower (with its image processor) as local model
    directories, so `m3w train --lm DIR/lm --vision DIR/vision` loads them exactly as it loads hub
    ids. With `pretrain_on` (documents' text) the LM is first trained on it (`pretrain_lm`), else it
    stays random; with `vision_pretrain_steps` the tower is first trained contrastively on freshly
    drawn scenes of the demo world (pipelines/demo/tower.py), else it stays random. The scores go
    to DIR/pretrain.json. Returns (lm_dir, vision_dir)."""
    import torch

    torch.manual_seed(seed)
    directory = Path(directory)
    lm_dir, vision_dir = directory / "lm", directory / "vision"
    lm = tiny_lm(len(tokenizer), n_layer=lm_layers)
    scores: dict[str, dict[str, float]] = {}
    if pretrain_on:
        scores["lm"] = pretrain_lm(lm, tokenizer, pretrain_on, steps=pretrain_steps, seed=seed)
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    vision = tiny_vision(image_size=image_size, patch_size=patch_size)
    processor = tiny_image_processor(image_size)
    if vision_pretrain_steps:
        from pipelines.demo.tower import pretrain_tower

        scores["vision"] = pretrain_tower(vision, processor, steps=vision_pretrain_steps, seed=seed)
    vision.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)
    if scores:
        (directory / "pretrain.json").write_text(json.dumps(scores))
    return lm_dir, vision_dir


def pretrain_lm(
    lm: Any,
    tokenizer: Any,
    documents: list[str],
    *,
    steps: int = 400,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train a causal LM on plain text, in place: Flamingo freezes a *pretrained* LM, so the demo's
    tiny LM first learns the language of the built shards (their text alone, no image tokens).

    The documents are one token stream, each closed by EOS; batches are random windows of
    `seq_len` tokens. AdamW with a linear warm-up over the first tenth, then cosine decay. Returns the
    mean loss of the first and the last 10% of steps.
    """
    import torch

    ids: list[int] = []
    for text in documents:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    stream = torch.tensor(ids, dtype=torch.long)
    if len(stream) <= seq_len:
        raise ValueError(f"{len(stream)} tokens of text cannot fill a {seq_len}-token window")
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    lm.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = lm(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    lm.eval()
    tenth = max(1, steps // 10)
    return {"first_loss": sum(losses[:tenth]) / tenth, "last_loss": sum(losses[-tenth:]) / tenth}


# FlamingoConfig fields that keep a tiny model tiny (for `model.flamingo` in a TrainConfig)
TINY_FLAMINGO = {
    "num_latents": 8,
    "resampler_depth": 1,
    "resampler_heads": 2,
    "resampler_dim_head": 16,
    "xattn_heads": 2,
    "xattn_dim_head": 16,
    "ff_mult": 2,
}
