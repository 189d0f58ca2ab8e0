"""The shapes world: seeded, captioned pictures of one coloured shape on a plain background.

lora-kit's embedded default is a text-to-image world small enough to pretrain on a laptop and simple
enough to *measure* (lora_kit.world.score reads shape, colour, background and texture back out of a
picture without any model). Every scene is drawn from a numpy Generator, so a seed fixes the pixels.

Vocabulary of the pretraining world: four shapes, eight colours, four backgrounds, five canvas sizes
of about 64x64 pixels each (so aspect-ratio bucketing matters). Two things exist only when asked for,
because they are the concepts a LoRA is later taught: the shape "star" (a subject) and the "stripes"
fill (a style).

Shapes are drawn at 4x and box-filtered down (Image.reduce), which gives anti-aliased edges that are
still bit-exact for a given seed: no resampling kernel or font is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

BASE_SHAPES = ("circle", "square", "triangle", "diamond")
CONCEPT_SHAPES = ("star",)
SHAPES = BASE_SHAPES + CONCEPT_SHAPES
# Shapes the generator can draw but no shipped model or dataset uses: they exist to test that the scorer
# and the LoRA recipes generalise to concepts nobody tuned them on. Never part of SHAPES, so every
# existing draw from SHAPES (and the shipped datasets) is unchanged.
EXTRA_SHAPES = ("hexagon", "cross", "heart")
ALL_SHAPES = SHAPES + EXTRA_SHAPES

# Saturated, well separated colours: the nearest-colour namer in score.py must never hesitate.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 125, 0),
    "yellow": (245, 215, 20),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "purple": (120, 40, 180),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "light blue": (170, 205, 235),
}
BASE_FILLS = ("solid",)
CONCEPT_FILLS = ("stripes",)
FILLS = BASE_FILLS + CONCEPT_FILLS
# Periodic fills beyond the demo's "/" stripes (same rule as EXTRA_SHAPES): horizontal and vertical
# bands, "\\" stripes, a checkerboard and a square grid of dots, all two-coloured like the stripes.
EXTRA_FILLS = ("hstripes", "vstripes", "backslash", "checker", "dots")
ALL_FILLS = FILLS + EXTRA_FILLS
# The word a caption uses for each fill (describe's fill_word replaces the demo stripes' "striped").
FILL_WORDS = {"stripes": "striped", "hstripes": "horizontally striped", "vstripes": "vertically striped",
              "backslash": "backslash striped", "checker": "checkered", "dots": "dotted"}
# Period in pixels of the extra fills along their axis (checker: two 8 px cells; dots: grid pitch).
FILL_PERIOD = 16
DOT_RADIUS = 5.0
DOTS_MIN_SIZE = 36  # a dotted shape shows at least two dots a side (at 28 px a star held two dots in all)

# (width, height), all multiples of 8 (4x VAE, then one U-Net downsampling) and all close to 64*64
# pixels in area, like SDXL's buckets around 1024*1024.
CANVAS_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (80, 48), (48, 80), (72, 56), (56, 72))

# A fill colour closer than this (RGB distance) to the background is not drawn: the scorer would have
# nothing to segment, and a person could not tell the shape apart either.
MIN_CONTRAST = 100.0
# Stripes run diagonally ("/"), one period every STRIPE_PERIOD pixels of x+y, half shape colour and half
# a tint of it: 16 px on each axis is 4 latent pixels of the 4x VAE, coarse enough to survive it.
STRIPE_PERIOD = 16
# A striped shape is at least this big, so that two stripe periods show even on its inner part (the
# scorer reads texture away from the blurred outline).
STRIPE_MIN_SIZE = 28
SIZE_RANGE = (0.45, 0.8)  # shape extent as a fraction of the canvas' short side
MARGIN = 3  # pixels of background kept around the shape, so its border reads as background
_SS = 4  # supersampling factor of the anti-aliasing


@dataclass(frozen=True)
class Scene:
    """One picture: which shape, where, how big, in which colours. `center` is the bbox centre."""

    shape: str
    color: str
    background: str
    size: int
    center: tuple[int, int]
    width: int
    height: int
    fill: str = "solid"


def stripe_tint(color: str) -> tuple[int, int, int]:
    """The second stripe colour: the shape colour half-way to white (dark colours) or black (light ones).

    A tint rather than a fixed colour keeps the shape's colour name readable and the style independent of
    the background; it is far from every named colour, so the colour namer never mistakes it.
    """
    rgb = np.array(COLORS[color], dtype=np.float64)
    luma = float(rgb @ (0.299, 0.587, 0.114))
    target = 0.0 if luma >= 140 else 255.0
    return tuple(int(round(v)) for v in (rgb + target) / 2)  # type: ignore[return-value]


def fill_colors(color: str, fill: str) -> list[tuple[int, int, int]]:
    return [COLORS[color]] + ([stripe_tint(color)] if fill != "solid" else [])


def rgb_distance(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def is_visible(color: str, background: str, fill: str = "solid") -> bool:
    """Whether every colour the shape is painted in stands out from the background."""
    bg = BACKGROUNDS[background]
    return all(rgb_distance(c, bg) >= MIN_CONTRAST for c in fill_colors(color, fill))


def shape_extent(shape: str, size: int) -> tuple[float, float]:
    """(width, height) in pixels of a shape of nominal `size` (the larger of the two is `size`)."""
    if shape == "triangle":  # equilateral, apex up
        return float(size), size * math.sqrt(3) / 2
    if shape == "diamond":  # a playing-card diamond, taller than wide
        return size * 0.75, float(size)
    if shape == "star":  # regular five-pointed star, point up: 2R sin 72 wide, R (1 + cos 36) tall
        r = size / (2 * math.sin(math.radians(72)))
        return float(size), r * (1 + math.cos(math.radians(36)))
    if shape == "hexagon":  # regular, a vertex up: sqrt(3)/2 as wide as tall
        return size * math.sqrt(3) / 2, float(size)
    if shape == "heart":  # the classic parametric heart, as tall as 0.88 of its width
        return float(size), size * _HEART_ASPECT
    return float(size), float(size)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    shapes: Iterable[str] = BASE_SHAPES,
    colors: Iterable[str] = tuple(COLORS),
    backgrounds: Iterable[str] = tuple(BACKGROUNDS),
    fills: Iterable[str] = BASE_FILLS,
    canvases: Iterable[tuple[int, int]] = CANVAS_SIZES,
    size_range: tuple[float, float] = SIZE_RANGE,
) -> Scene:
    """Draw one scene. The defaults are the pretraining world: no star, no stripes.

    Colour/background/fill triples that would be invisible are redrawn, so a constraint that leaves
    none raises ValueError instead of looping forever.
    """
    shapes, colors, backgrounds = tuple(shapes), tuple(colors), tuple(backgrounds)
    fills, canvases = tuple(fills), tuple(canvases)
    for name, pool, known in (("shape", shapes, ALL_SHAPES), ("color", colors, COLORS), ("background", backgrounds, BACKGROUNDS), ("fill", fills, ALL_FILLS)):
        unknown = [v for v in pool if v not in known]
        if not pool or unknown:
            raise ValueError(f"{name} must be a non-empty choice of {', '.join(known)}; got {list(pool)}")
    if not any(is_visible(c, b, f) for c in colors for b in backgrounds for f in fills):
        raise ValueError("no visible colour/background/fill combination in these constraints")
    shape, fill = _pick(rng, shapes), _pick(rng, fills)
    width, height = _pick(rng, canvases)
    while True:
        color, background = _pick(rng, colors), _pick(rng, backgrounds)
        if is_visible(color, background, fill):
            break
    short = min(width, height)
    lo, hi = (int(round(f * short)) for f in size_range)
    if fill != "solid":  # any texture (the stripes' rule, unchanged for them)
        lo = max(lo, DOTS_MIN_SIZE if fill == "dots" else STRIPE_MIN_SIZE)
    size = int(rng.integers(lo, min(hi, short - 2 * MARGIN) + 1))
    ew, eh = shape_extent(shape, size)
    cx = int(rng.integers(math.ceil(MARGIN + ew / 2), math.floor(width - MARGIN - ew / 2) + 1))
    cy = int(rng.integers(math.ceil(MARGIN + eh / 2), math.floor(height - MARGIN - eh / 2) + 1))
    return Scene(shape, color, background, size, (cx, cy), width, height, fill)


def shape_polygon(scene: Scene, scale: float = 1.0) -> list[tuple[float, float]] | None:
    """Vertices of the shape in pixel coordinates times `scale`; None for the circle."""
    cx, cy = scene.center
    ew, eh = shape_extent(scene.shape, scene.size)
    left, top, right, bottom = cx - ew / 2, cy - eh / 2, cx + ew / 2, cy + eh / 2
    if scene.shape == "circle":
        return None
    if scene.shape == "square":
        pts = [(left, top), (right, top), (right, bottom), (left, bottom)]
    elif scene.shape == "triangle":
        pts = [(cx, top), (right, bottom), (left, bottom)]
    elif scene.shape == "diamond":
        pts = [(cx, top), (right, cy), (cx, bottom), (left, cy)]
    elif scene.shape == "star":
        r_out = ew / (2 * math.sin(math.radians(72)))
        r_in = r_out * math.sin(math.radians(18)) / math.sin(math.radians(54))  # regular pentagram
        ox, oy = cx, top + r_out  # circumcentre: the top point is r_out above it
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = math.radians(-90 + 36 * k)
            pts.append((ox + r * math.cos(a), oy + r * math.sin(a)))
    elif scene.shape == "hexagon":
        r = eh / 2
        pts = [(cx + r * math.cos(math.radians(-90 + 60 * k)), cy + r * math.sin(math.radians(-90 + 60 * k))) for k in range(6)]
    elif scene.shape == "cross":  # a plus sign, arms a third of its size wide
        a, b = ew / 3, ew * 2 / 3
        pts = [(left + a, top), (left + b, top), (left + b, top + a), (right, top + a), (right, top + b), (left + b, top + b),
               (left + b, bottom), (left + a, bottom), (left + a, top + b), (left, top + b), (left, top + a), (left + a, top + a)]
    elif scene.shape == "heart":
        unit = _heart_unit()
        pts = [(left + u * ew, top + v * eh) for u, v in unit]
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return [(x * scale, y * scale) for x, y in pts]


def _heart_curve(n: int = 96) -> list[tuple[float, float]]:
    t = [2 * math.pi * k / n for k in range(n)]
    return [(16 * math.sin(a) ** 3, -(13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a))) for a in t]


def _heart_unit() -> list[tuple[float, float]]:
    """The heart's outline scaled into the unit box (0..1 on both axes), y down."""
    pts = _heart_curve()
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]


_HEART_ASPECT = (lambda p: (max(y for _, y in p) - min(y for _, y in p)) / (max(x for x, _ in p) - min(x for x, _ in p)))(_heart_curve())


def shape_mask(scene: Scene) -> Image.Image:
    """The shape's coverage at _SS times the canvas size (mode L, 0 or 255)."""
    mask = Image.new("L", (scene.width * _SS, scene.height * _SS), 0)
    draw = ImageDraw.Draw(mask)
    poly = shape_polygon(scene, _SS)
    if poly is None:
        cx, cy = scene.center
        r = scene.size / 2
        draw.ellipse([(cx - r) * _SS, (cy - r) * _SS, (cx + r) * _SS - 1, (cy + r) * _SS - 1], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return mask


def _paint(scene: Scene, w: int, h: int) -> Image.Image:
    """The shape's paint over the whole (supersampled) canvas: flat colour, or diagonal stripes."""
    color = np.array(COLORS[scene.color], dtype=np.uint8)
    if scene.fill == "solid":
        return Image.new("RGB", (w, h), tuple(int(v) for v in color))
    ys, xs = np.mgrid[0:h, 0:w]
    # x + y measured in canvas pixels, so the stripes do not depend on the supersampling factor
    band = ((xs + ys) // _SS) % STRIPE_PERIOD < STRIPE_PERIOD // 2 if scene.fill == "stripes" else _pattern(scene.fill, xs, ys)
    tint = np.array(stripe_tint(scene.color), dtype=np.uint8)
    return Image.fromarray(np.where(band[..., None], color, tint).astype(np.uint8), "RGB")


def _pattern(fill: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Where an extra fill shows the shape colour (elsewhere its tint), on supersampled coordinates."""
    p, half = FILL_PERIOD * _SS, FILL_PERIOD * _SS // 2
    if fill == "hstripes":
        return ys % p < half
    if fill == "vstripes":
        return xs % p < half
    if fill == "backslash":  # "\\": constant x - y, the same period along x as the "/" stripes
        return ((xs - ys) // _SS) % STRIPE_PERIOD < STRIPE_PERIOD // 2
    if fill == "checker":
        return ((xs // half) + (ys // half)) % 2 == 0
    if fill == "dots":  # a dot of DOT_RADIUS px at the centre of every FILL_PERIOD cell, on the tint
        dx, dy = xs % p - half + 0.5, ys % p - half + 0.5
        return dx * dx + dy * dy <= (DOT_RADIUS * _SS) ** 2
    raise ValueError(f"unknown fill {fill!r}")


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of scene.width x scene.height pixels (deterministic)."""
    w, h = scene.width * _SS, scene.height * _SS
    canvas = Image.new("RGB", (w, h), BACKGROUNDS[scene.background])
    canvas.paste(_paint(scene, w, h), (0, 0), shape_mask(scene))
    return canvas.reduce(_SS)  # box filter: exact, deterministic anti-aliasing


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(scene: Scene, noun: str | None = None, fill_word: str = "") -> str:
    """"a red circle on a white background", "a red striped circle on a white background".

    `noun` replaces the shape's name (a subject LoRA's "ohwx star"); `fill_word` the word for a
    striped fill (a style LoRA's trigger word, "a red zyk circle ...").
    """
    noun = noun or scene.shape
    word = (fill_word or FILL_WORDS[scene.fill]) if scene.fill != "solid" else ""
    adjectives = scene.color + (f" {word}" if word else "")
    return f"{_article(adjectives)} {adjectives} {noun} on {_article(scene.background)} {scene.background} background"


def caption(scene: Scene) -> str:
    """The plain-language caption of a scene, in the pretraining vocabulary."""
    return describe(scene)


def generate(n: int, seed: int, **constraints) -> list[tuple[Image.Image, str, Scene]]:
    """`n` seeded (image, caption, scene) triples; `constraints` are sample_scene's keyword arguments."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, **constraints)
        out.append((render(scene), caption(scene), scene))
    return out
