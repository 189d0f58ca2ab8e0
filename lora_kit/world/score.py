"""Read a shapes-world picture back: which shape, which colour, which background, striped or not.

These are the world's answer to "did the LoRA learn its concept": deterministic measurements with no
model in the loop (CLIP would need downloaded weights and would know nothing of a 64 px tiny world).

Method, per image:
1. background colour = per-channel median of a thin ring along the image border; named by the nearest
   colour of shapes.BACKGROUNDS;
2. foreground = pixels far from that colour (segment.foreground_mask), holes filled, largest
   4-connected component kept;
3. shape from the mask's geometry: fill of its bounding box (square 1, circle pi/4, triangle and
   diamond 1/2, star ~0.33), solidity against its convex hull (a star is the only concave shape, and it
   must show five tips seen from its centroid: segment.radial_peaks), the
   height of its centroid in the box (a triangle's is low, at 2/3) and its aspect ratio;
4. colour: the mask's core (edge pixels dropped: they are blended with the background) is split in two
   by luminance (2-means); the half whose mean lies closest to a named colour of shapes.COLORS names the
   shape. One half is the whole shape when it is solid; for stripes it is the colour band, not the tint;
5. stripes: the core's luminance is averaged along the stripes' direction (lines of constant x + y);
   the world's stripes make this profile oscillate with their period (16 px), so that it explains most of
   the luminance variance. Noise explains little, a smooth shading has no 16 px period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from lora_kit.world.segment import (
    border_pixels, erode, fill_holes, foreground_mask, hull_area, largest_component, median3, radial_peaks,
)
from lora_kit.world.shapes import BACKGROUNDS, COLORS, SHAPES, STRIPE_PERIOD, Scene, shape_extent

# The aspect ratio (width / height) each shape has in the world; far from all of them means "other".
_ASPECTS = {s: shape_extent(s, 100)[0] / shape_extent(s, 100)[1] for s in SHAPES}
_MAX_LOG_ASPECT_ERROR = 0.25
# Decision thresholds on the mask features, each half-way between the classes it separates (measured
# on ground truth and blurred+noisy renders: see tests/test_world.py and docs/world.md).
STAR_SOLIDITY = 0.78
STAR_TIPS = 5  # segment.radial_peaks of a five-pointed star
SQUARE_FILL = 0.86
ROUND_FILL = 0.68
TRIANGLE_CENTROID = 0.565
NOISY_BORDER = 6.0  # median RGB distance of border pixels to their median colour
MIN_AREA = 12  # pixels; less is a speck, not a shape
STRIPE_EXPLAINED = 0.55
STRIPE_MIN_STD = 5.0  # luminance standard deviation (0..255) below which a shape is flat
STRIPE_PERIOD_RANGE = (0.75 * STRIPE_PERIOD, 1.4 * STRIPE_PERIOD)  # generated stripes measured 14.5-18.7 px

LABELS = ("shape", "color", "background", "striped")


@dataclass(frozen=True)
class ImageScore:
    """Labels read from one image, with a confidence in [0, 1] for each (1 = far from any boundary)."""

    shape: str  # one of shapes.SHAPES, "other" (a blob of no known shape) or "none" (nothing found)
    color: str | None
    background: str
    striped: bool
    shape_confidence: float = 0.0
    color_confidence: float = 0.0
    background_confidence: float = 0.0
    stripe_strength: float = 0.0  # share of the luminance variance the best stripe profile explains
    features: dict = field(default_factory=dict)

    def labels(self) -> dict:
        return {"shape": self.shape, "color": self.color, "background": self.background, "striped": self.striped}


def labels_of(scene: Scene) -> dict:
    """What score_image should read from render(scene)."""
    return {"shape": scene.shape, "color": scene.color, "background": scene.background, "striped": scene.fill == "stripes"}


def to_rgb_array(image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, a uint8 array, or a float array in [0, 1] (diffusers' output_type="np")."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return arr


def nearest_name(rgb: np.ndarray, palette: Mapping[str, tuple[int, int, int]]) -> tuple[str, float, float]:
    """(name, distance, confidence) of the palette colour nearest to `rgb`; confidence = 1 - d1/d2."""
    names = list(palette)
    dist = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    first, second = np.argsort(dist)[:2]
    return names[first], float(dist[first]), float(1 - dist[first] / max(dist[second], 1e-9))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def segment(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, background RGB): the largest hole-free blob that differs from the border colour."""
    ring = max(1, min(rgb.shape[:2]) // 32)
    border = border_pixels(rgb, ring).astype(np.float64)
    background = np.median(border, axis=0)
    # Noise speckles attached to the outline would grow the bounding box and shrink a square's fill, so a
    # noisy picture (judged by its border) is median-filtered first; a clean one is not, because the
    # median also blunts the tips of stars and diamonds.
    noise = float(np.median(np.linalg.norm(border - background, axis=1)))
    mask = largest_component(fill_holes(foreground_mask(median3(rgb) if noise > NOISY_BORDER else rgb, background)))
    return mask, background


def shape_features(mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    area = len(xs)
    if area == 0:
        return {"area": 0}
    w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    return {
        "area": area,
        "fill": area / (w * h),
        "solidity": area / max(hull_area(mask), 1.0),
        "aspect": w / h,
        "centroid_y": float((ys.mean() + 0.5 - ys.min()) / h),  # 0 = top of the box, 1 = bottom
        "tips": radial_peaks(mask),
        "touches_border": bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()),
    }


def _margin(value: float, threshold: float, scale: float) -> float:
    return min(1.0, abs(value - threshold) / scale)


def classify_shape(f: dict) -> tuple[str, float]:
    """(shape label, confidence) from shape_features; thresholds at the module top."""
    if f.get("area", 0) < MIN_AREA:
        return "none", 1.0
    if f["touches_border"]:  # cut off by the frame (or no background at all): its outline is not its shape
        return "other", 1.0
    if f["solidity"] < STAR_SOLIDITY:
        # Concave and five-tipped. Concavity alone also called the noisy blobs of an untrained prompt a star.
        if f["tips"] != STAR_TIPS:
            return "other", _margin(f["solidity"], STAR_SOLIDITY, 0.2)
        label, conf = "star", _margin(f["solidity"], STAR_SOLIDITY, 0.2)
    elif f["fill"] >= SQUARE_FILL:
        label, conf = "square", _margin(f["fill"], SQUARE_FILL, 0.1)
    elif f["fill"] >= ROUND_FILL:
        label, conf = "circle", min(_margin(f["fill"], SQUARE_FILL, 0.1), _margin(f["fill"], ROUND_FILL, 0.1))
    else:
        label = "triangle" if f["centroid_y"] >= TRIANGLE_CENTROID else "diamond"
        conf = min(_margin(f["fill"], ROUND_FILL, 0.1), _margin(f["centroid_y"], TRIANGLE_CENTROID, 0.07))
    aspect_error = abs(math.log(f["aspect"] / _ASPECTS[label]))
    if aspect_error > _MAX_LOG_ASPECT_ERROR:
        return "other", _margin(aspect_error, _MAX_LOG_ASPECT_ERROR, 0.25)
    return label, conf


def _two_means(values: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Boolean split of 1-D values into a low and a high cluster (deterministic Lloyd iterations)."""
    lo, hi = np.percentile(values, [25, 75])
    high = values > (lo + hi) / 2
    for _ in range(iterations):
        if high.all() or not high.any():
            break
        split = (values[high].mean() + values[~high].mean()) / 2
        new = values > split
        if np.array_equal(new, high):
            break
        high = new
    return high


def name_shape_color(rgb: np.ndarray, core: np.ndarray) -> tuple[str, float]:
    pixels = rgb[core].astype(np.float64)
    high = _two_means(_luma(pixels))
    best = None
    for part in (high, ~high):
        if part.sum() < max(3, 0.2 * len(pixels)):  # a sliver (noise, a stray edge) cannot name the shape
            continue
        name, dist, conf = nearest_name(pixels[part].mean(axis=0), COLORS)
        if best is None or dist < best[1]:
            best = (name, dist, conf)
    if best is None:
        best = nearest_name(pixels.mean(axis=0), COLORS)
    return best[0], best[2]


def _dominant_period(profile: np.ndarray) -> float:
    """Period (in profile samples) of the strongest non-constant Fourier component of a mean-free profile.

    Zero-padded to 256 samples: a small shape's profile is only 1.5-2 periods long, too short for the
    plain DFT's frequency steps to land near the period."""
    n = max(256, 4 * len(profile))
    power = np.abs(np.fft.rfft(profile - profile.mean(), n))[1:]
    return n / (int(np.argmax(power)) + 1) if len(power) else math.inf


def stripe_strength(rgb: np.ndarray, core: np.ndarray) -> float:
    """Share of the core's luminance variance explained by the world's stripes, 0 when they are not there.

    The world's stripes run "/" with one period every STRIPE_PERIOD pixels of x + y, so the luminance is
    averaged along lines of constant x + y; the profile counts only when its dominant period is the
    stripes' (within STRIPE_PERIOD_RANGE) and it spans 1.25 periods (a small diamond's core spans 1.4). Reading any direction and any
    oscillation, as this scorer first did, also found stripes in the noisy blobs the base draws for an
    untrained word (3 of the 12 weight-0 cells of the style demo); the period also lets a weaker contrast
    floor through (a LoRA's stripes on blue came out at a luminance std of 5-9)."""
    ys, xs = np.nonzero(core)
    luma = _luma(rgb[core])
    if len(luma) < 20 or luma.std() < STRIPE_MIN_STD:
        return 0.0
    coord = xs + ys
    bins = coord - coord.min()
    counts = np.bincount(bins)
    sums = np.bincount(bins, weights=luma)
    used = counts >= 3
    means = np.where(used, sums / np.maximum(counts, 1), 0.0)
    means[used] -= luma.mean()  # unused samples (the profile's thin ends) stay at the mean
    period = _dominant_period(means)
    lo, hi = STRIPE_PERIOD_RANGE
    if not (lo <= period <= hi) or len(means) < 1.25 * period:
        return 0.0
    total = ((luma - luma.mean()) ** 2).sum()
    return float((counts[used] * means[used] ** 2).sum() / total)


def score_image(image) -> ImageScore:
    """Labels of one picture (PIL or array, any size)."""
    rgb = to_rgb_array(image)
    mask, background_rgb = segment(rgb)
    background, _, background_conf = nearest_name(background_rgb, BACKGROUNDS)
    features = shape_features(mask)
    shape, shape_conf = classify_shape(features)
    if shape == "none":
        return ImageScore("none", None, background, False, 1.0, 0.0, background_conf, 0.0, features)
    core = erode(mask, 2)
    if core.sum() < 20:  # a thin shape: keep its edge pixels rather than nothing
        core = mask
    color, color_conf = name_shape_color(rgb, core)
    strength = stripe_strength(rgb, core)
    return ImageScore(
        shape, color, background, strength >= STRIPE_EXPLAINED,
        shape_conf, color_conf, background_conf, strength, features,
    )


def score_batch(images: Sequence, expected: Mapping | Sequence[Mapping]) -> dict[str, float]:
    """Share of images whose labels match `expected`.

    `expected` is one dict for the whole batch ({"shape": "star", "color": "red"}) or one per image (e.g.
    [labels_of(s) for s in scenes]). The result has a rate per expected label, "all" (every expected
    label right at once) and "n".
    """
    if isinstance(expected, Mapping):
        expected = [expected] * len(images)
    if len(expected) != len(images):
        raise ValueError(f"{len(images)} images but {len(expected)} expectations")
    keys = sorted({k for e in expected for k in e}, key=lambda k: LABELS.index(k) if k in LABELS else len(LABELS))
    unknown = [k for k in keys if k not in LABELS]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; expected some of {', '.join(LABELS)}")
    hits = {k: 0 for k in keys}
    counts = {k: 0 for k in keys}
    all_right = 0
    for image, want in zip(images, expected):
        got = score_image(image).labels()
        ok = {k: got[k] == v for k, v in want.items()}
        for k, right in ok.items():
            hits[k] += right
            counts[k] += 1
        all_right += all(ok.values())
    rates = {k: hits[k] / counts[k] for k in keys if counts[k]}
    rates["all"] = all_right / len(images) if images else 0.0
    rates["n"] = float(len(images))
    return rates
