"""Procedural textures and outlines beyond the world's vocabulary: what the tiny VAE's decoder is tuned on.

The world's generator (`shapes.py`) draws a fixed vocabulary: five shapes plus three extra ones, and the
"/" stripes plus five extra fills at one period. A decoder tuned only on those carries only those: the
first one, tuned on the demo's stripes, turned half of all checkerboards into stripes. So the decoder
stage of `scripts/pretrain_tiny_base.py` also draws this family, with every parameter random:

- `grating`: two-coloured bands at any angle, period 8-24 px (covers the world's four stripe directions
  and every direction between them);
- `checker`: a checkerboard of 4-12 px cells at any angle;
- `dots`: a square lattice of discs (pitch 10-20 px, radius 20-40 % of it) at any angle;
- `plaid`: two gratings XOR-ed (two independent periods and directions);

inside either a world shape or a random polygon (3-8 vertices, convex or not), in world colours: the shape
colour from the palette, the second colour its tint (as every world fill) or another palette colour, on a
world background, with the world's contrast rule. `HELD_OUT` families are never drawn in training: they
measure whether the decoder learned textures in general or a list of them (docs/world.md, round trip).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from lora_kit.world import shapes as S

TRAINED = ("grating", "checker", "dots", "plaid")
HELD_OUT = ("rings", "zigzag", "hexdots")
_SS = 4  # supersampling, as shapes.render: drawn at 4x and box-filtered down


def pattern(kind: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Where the texture shows its first colour, on the supersampled canvas (bool, H*4 x W*4)."""
    ys, xs = np.mgrid[0 : height * _SS, 0 : width * _SS] / _SS
    th = rng.uniform(0, math.pi)
    u, v = xs * math.cos(th) + ys * math.sin(th), -xs * math.sin(th) + ys * math.cos(th)
    if kind == "grating":
        p = rng.uniform(8, 24)
        return (u % p) < p / 2
    if kind == "checker":
        c = rng.uniform(4, 12)
        return (np.floor(u / c) + np.floor(v / c)) % 2 == 0
    if kind == "dots":
        p = rng.uniform(10, 20)
        r = rng.uniform(0.2, 0.4) * p
        du, dv = u % p - p / 2, v % p - p / 2
        return du * du + dv * dv <= r * r
    if kind == "plaid":
        p, q = rng.uniform(8, 24), rng.uniform(8, 24)
        return ((u % p) < p / 2) ^ ((v % q) < q / 2)
    if kind == "rings":  # concentric circles about a random point
        p = rng.uniform(8, 16)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        return (np.hypot(xs - cx, ys - cy) % p) < p / 2
    if kind == "zigzag":  # bands displaced by a triangle wave
        p, a, q = rng.uniform(10, 20), rng.uniform(3, 6), rng.uniform(12, 24)
        return ((u + a * np.abs((v % q) - q / 2)) % p) < p / 2
    if kind == "hexdots":  # discs on a triangular lattice
        p = rng.uniform(10, 18)
        r, row = 0.3 * p, p * math.sqrt(3)
        d2 = np.full(xs.shape, np.inf)
        for ox, oy in ((0.0, 0.0), (p / 2, row / 2)):
            du, dv = (xs - ox) % p - p / 2, (ys - oy) % row - row / 2
            d2 = np.minimum(d2, du * du + dv * dv)
        return d2 <= r * r
    raise ValueError(f"unknown procedural texture {kind!r}; expected one of {TRAINED + HELD_OUT}")


def _colors(rng: np.random.Generator) -> tuple[tuple, tuple, tuple]:
    """(first colour, second colour, background) in world colours that stand out from each other."""
    names, bgs = list(S.COLORS), list(S.BACKGROUNDS)
    while True:
        name = names[int(rng.integers(len(names)))]
        a = S.COLORS[name]
        b = S.stripe_tint(name) if rng.random() < 0.7 else S.COLORS[names[int(rng.integers(len(names)))]]
        bg = S.BACKGROUNDS[bgs[int(rng.integers(len(bgs)))]]
        if min(S.rgb_distance(bg, a), S.rgb_distance(bg, b)) >= S.MIN_CONTRAST and S.rgb_distance(a, b) > 60:
            return a, b, bg


def _polygon_mask(rng: np.random.Generator, scene: S.Scene) -> Image.Image:
    """A random polygon (3-8 vertices at random radii and angles) in the scene's box, supersampled."""
    k = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, k))
    radii = rng.uniform(0.5, 1.0, k) * scene.size / 2
    cx, cy = scene.center
    pts = [((cx + r * math.cos(t)) * _SS, (cy + r * math.sin(t)) * _SS) for t, r in zip(angles, radii)]
    mask = Image.new("L", (scene.width * _SS, scene.height * _SS), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    return mask


def render_textured(rng: np.random.Generator, kind: str, polygon: bool = False) -> Image.Image:
    """One picture: a world-sized canvas, a world shape (or a random polygon) filled with `kind`."""
    # texture-sized shapes on every canvas of the world: the scene sampler's rule for a textured fill
    scene = S.sample_scene(rng, shapes=S.ALL_SHAPES, fills=("stripes",))
    a, b, bg = _colors(rng)
    band = pattern(kind, rng, scene.width, scene.height)
    paint = Image.fromarray(np.where(band[..., None], np.array(a, np.uint8), np.array(b, np.uint8)), "RGB")
    canvas = Image.new("RGB", (scene.width * _SS, scene.height * _SS), bg)
    canvas.paste(paint, (0, 0), _polygon_mask(rng, scene) if polygon else S.shape_mask(scene))
    return canvas.reduce(_SS)


def generate_textured(n: int, seed: int, kinds=TRAINED, polygons: float = 0.5) -> list[tuple[str, Image.Image]]:
    """`n` seeded (kind, picture) pairs, the kinds in turn; a share `polygons` of them in random polygons."""
    rng = np.random.default_rng(seed)
    return [(kinds[i % len(kinds)], render_textured(rng, kinds[i % len(kinds)], polygon=rng.random() < polygons)) for i in range(n)]
