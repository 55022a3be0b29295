"""Contrastive pretraining of the demo's tiny vision tower on freshly drawn captioned scenes.

Flamingo freezes a vision encoder that was *pretrained* contrastively on image-text pairs (an NFNet
trained CLIP-style, Alayrac et al. 2022 §2.1), not a random one. A random tiny tower carries colour in
the mean of its patch features (a linear probe reads it at ~0.94) but hardly shape or count (~0.5 and
~0.45): the demo's Flamingo then learnt colour from the captions and, for shape and count, memorised
its few hundred training pictures instead of reading them (teacher-forced shape accuracy 0.53 on
training captions, 0.26 held out), and few-shot captioning stayed at 2.5x chance.

So before the Flamingo parts are trained the demo pretrains its tower CLIP-style, as the LM is
pretrained on text (issue 13 §2): each step draws new scenes of the demo world
(pipelines/demo/grounded.py) with their own randomness, never a picture of the site, and matches each
picture with its caption against the others of the batch (a symmetric InfoNCE loss, a learnt
temperature). The caption side is a bag of learnt word embeddings (the phrase and the ground, the
tiny text tower; dropped afterwards), the picture side the mean of the hidden state the Flamingo reads
(`vision_layer` -1) through a small projection (dropped too). Half of each batch comes as pairs that
differ only in shape or in count, so colour and ground alone cannot match them (hard negatives).
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import time
from typing import Any

from pipelines.demo.grounded import (
    COLOURS,
    COUNTS,
    GROUNDS,
    PLURALS,
    SHAPES,
    Scene,
    draw_scene,
    random_scene,
)

# the caption words a scene can have: "two red triangles" + its ground
_VOCAB = {w: i for i, w in enumerate([*COUNTS, *COLOURS, *SHAPES, *PLURALS.values(), *GROUNDS])}


def caption_words(scene: Scene) -> list[int]:
    """The scene's caption as word ids: count, colour, noun (plural after one), ground."""
    return [_VOCAB[w] for w in [*scene.phrase().split(), scene.ground]]


def hard_negative(scene: Scene, rng: random.Random) -> Scene:
    """The same colour and ground with another shape, or another count."""
    if rng.random() < 0.5:
        return dataclasses.replace(scene, shape=rng.choice([s for s in SHAPES if s != scene.shape]))
    others = [c for c in range(1, len(COUNTS) + 1) if c != scene.count]
    return dataclasses.replace(scene, count=rng.choice(others))


def draw_batch(rng: random.Random, size: int) -> list[Scene]:
    """`size` fresh scenes, about half of them in hard-negative pairs."""
    scenes: list[Scene] = []
    while len(scenes) < size:
        scene = random_scene(rng)
        scenes += [scene, hard_negative(scene, rng)] if rng.random() < 0.5 else [scene]
    return scenes[:size]


def pretrain_tower(
    vision: Any,
    processor: Any,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train a CLIP-style vision tower in place on `steps` batches of freshly drawn scenes (see the
    module docstring). AdamW, a linear warm-up over the first tenth, then cosine decay. Returns the
    mean contrastive loss of the first and the last 10% of steps (chance: ln(batch_size)), and the
    seconds it took."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    started = time.perf_counter()
    rng = random.Random(f"tower/{seed}")
    width = vision.config.hidden_size
    image_head = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width))
    text_tower = torch.nn.EmbeddingBag(len(_VOCAB), width, mode="sum")
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
    params = [*vision.parameters(), *image_head.parameters(), *text_tower.parameters(), log_scale]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )

    def pixels(scenes: list[Scene]) -> Any:
        pictures = []
        for scene in scenes:
            data = draw_scene(scene, random.Random(rng.getrandbits(64)))
            with Image.open(io.BytesIO(data)) as im:  # the JPEG, as the site serves it
                pictures.append(im.convert("RGB"))
        return processor(images=pictures, return_tensors="pt")["pixel_values"]

    vision.train()
    losses: list[float] = []
    for _ in range(steps):
        scenes = draw_batch(rng, batch_size)
        hidden = vision(pixel_values=pixels(scenes), output_hidden_states=True).hidden_states[-1]
        images = F.normalize(image_head(hidden.mean(dim=1)), dim=-1)
        texts = F.normalize(text_tower(torch.tensor([caption_words(s) for s in scenes])), dim=-1)
        logits = images @ texts.T * log_scale.exp().clamp(max=100.0)
        # a scene drawn twice in one batch is not a negative of itself
        same = torch.tensor([[a == b for b in scenes] for a in scenes])
        logits = logits.masked_fill(same & ~torch.eye(len(scenes), dtype=torch.bool), -1e4)
        target = torch.arange(len(scenes))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    vision.eval()
    tenth = max(1, steps // 10)
    return {
        "first_loss": sum(losses[:tenth]) / tenth,
        "last_loss": sum(losses[-tenth:]) / tenth,
        "seconds": time.perf_counter() - started,
    }
