"""The grounded demo world: pictures of counted, coloured shapes, and captions that name them.

A model can only predict "two red triangles" from the picture, so the caption tokens measure whether a
trained Flamingo looks at the image its text is attached to (issue 13, `m3w eval`). Each scene varies
what a lookup of raw pixels would latch on to: object sizes and positions, a tinted, noisy ground,
faint distractor strokes, the JPEG quality. Colour and ground are the easiest to read, then shape,
then count.

`scene_record` gives the attributes as the few-shot file of `m3w eval` expects them
(`{"colour": "red", "shape": "triangle", "count": "two"}`), so a demo can score its own generations.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

# well apart in hue or lightness, so JPEG and the tower's 64-pixel input keep them apart; backgrounds
# are pale tints (all channels ≥ 200), never one of these
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (245, 130, 15),
    "yellow": (235, 210, 20),
    "green": (35, 160, 50),
    "cyan": (20, 185, 205),
    "blue": (30, 55, 205),
    "purple": (125, 35, 165),
    "pink": (240, 100, 185),
    "brown": (120, 70, 25),
    "black": (20, 20, 20),
}
# pale grounds, named with words that are no object colour (a caption's first colour word is the
# objects'): the grounds make most of a picture's pixels, so they are named too
GROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (222, 222, 222),
    "cream": (248, 238, 205),
    "mint": (205, 242, 218),
    "sky": (208, 226, 250),
    "sand": (236, 220, 180),
    "lilac": (230, 212, 244),
}
SHAPES = ("circle", "square", "triangle", "star")
COUNTS = ("one", "two", "three", "four")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}


@dataclass(frozen=True, slots=True)
class Scene:
    """What a picture shows: `count` objects of one colour and one shape."""

    colour: str
    shape: str
    count: int
    ground: str = "grey"

    @property
    def attributes(self) -> dict[str, str]:
        """The words a caption must get right, keyed by attribute (the few-shot file's form)."""
        return {"colour": self.colour, "shape": self.shape, "count": COUNTS[self.count - 1]}

    def phrase(self) -> str:
        """'one red circle', 'three blue stars'."""
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        return f"{COUNTS[self.count - 1]} {self.colour} {noun}"


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        rng.choice(list(COLOURS)),
        rng.choice(SHAPES),
        rng.randint(1, len(COUNTS)),
        rng.choice(list(GROUNDS)),
    )


def caption(scene: Scene, figure: int) -> str:
    """One sentence per picture, every word after the figure number read off the picture. With
    960 scenes a caption seldom repeats within a site (a paragraph repeated 3 times in one domain
    is boilerplate to the build's job-wide rule)."""
    return f"Figure {figure} shows {scene.phrase()} on a {scene.ground} ground."


def draw_scene(scene: Scene, rng: random.Random, size: int = 128) -> bytes:
    """A JPEG of the scene: objects that never overlap, on a noisy pale background."""
    from PIL import Image, ImageDraw

    base = _jitter(GROUNDS[scene.ground], rng, 6)
    image = Image.effect_noise((size, size), rng.uniform(8, 20)).convert("RGB")
    tint = Image.new("RGB", (size, size), base)
    image = Image.blend(tint, image, 0.12)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):  # faint strokes: not objects, not uniform either
        grey = rng.randint(150, 195)
        points = [(rng.randrange(size), rng.randrange(size)) for _ in range(2)]
        draw.line(points, fill=(grey, grey, grey), width=1)
    for box in _place(rng, scene.count, size):
        _draw_shape(draw, scene.shape, box, _jitter(COLOURS[scene.colour], rng))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=rng.randint(80, 92))
    return out.getvalue()


def _jitter(colour: tuple[int, int, int], rng: random.Random, by: int = 12) -> tuple[int, ...]:
    return tuple(min(255, max(0, c + rng.randint(-by, by))) for c in colour)


def _place(rng: random.Random, count: int, size: int) -> list[tuple[int, int, int, int]]:
    """`count` non-overlapping square boxes (rejection sampling with a shrinking side)."""
    side_max = size // (2 if count == 1 else 3)
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:
        boxes.clear()
        for _ in range(200):
            side = rng.randint(max(18, side_max * 3 // 5), side_max)
            x, y = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
            box = (x, y, x + side, y + side)
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    break
        side_max = max(18, side_max - 4)
    return boxes


def _apart(a: tuple[int, ...], b: tuple[int, ...], gap: int = 4) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        inset = (x1 - x0) // 8
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:  # a five-pointed star
        cx, cy, outer = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else outer * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
