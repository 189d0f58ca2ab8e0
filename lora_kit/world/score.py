"""Read a shapes-world picture back: which shape, which colour, which background, striped or not.

These are the world's answer to "did the LoRA learn its concept": deterministic measurements with no
model in the loop (CLIP would need downloaded weights and would know nothing of a 64 px tiny world).

Method, per image:
1. background colour = per-channel median of a thin ring along the image border; named by the nearest
   colour of shapes.BACKGROUNDS;
2. foreground = pixels far from that colour (segment.foreground_mask), holes filled, largest
   4-connected component kept;
3. shape from the mask: concave masks (solidity against the convex hull below 0.78) by their tips seen
   from the centroid (segment.radial_peaks: five is a star, four a cross, else "other"); convex ones by
   the nearest upright template of every shape the generator draws (outline.template_distances: the
   mask cropped to its box, plus its aspect ratio), "other" when none is near; an "other" shape gets its
   corner count from outline.count_vertices;
4. colour: the mask's core (edge pixels dropped: they are blended with the background) is split in two
   by luminance (2-means); the half whose mean lies closest to a named colour of shapes.COLORS names the
   shape. One half is the whole shape when it is solid; for stripes it is the colour band, not the tint;
5. stripes: the core's luminance is averaged along the stripes' direction (lines of constant x + y);
   the world's stripes make this profile oscillate with their period (16 px), so that it explains most of
   the luminance variance. Noise explains little, a smooth shading has no 16 px period. This is the
   demo's `striped` label; `fill` (texture.read_fill) reads any periodic texture, its orientations and
   period;
6. colour error (RGB distance of the shape's colour from its palette name) and area (share of the
   picture), which a LoRA can drift without changing any name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

from lora_kit.world.segment import (
    border_pixels, erode, fill_holes, foreground_mask, hull_area, largest_component, median3, radial_peaks,
)
from lora_kit.world.outline import VERTICES, count_vertices, template_distances
from lora_kit.world.shapes import ALL_SHAPES, BACKGROUNDS, COLORS, FILL_PERIOD, STRIPE_PERIOD, Scene, shape_extent
from lora_kit.world.texture import FillReading, read_fill

# The aspect ratio (width / height) each shape has in the world; far from all of them means "other".
_ASPECTS = {s: shape_extent(s, 100)[0] / shape_extent(s, 100)[1] for s in ALL_SHAPES}
_MAX_LOG_ASPECT_ERROR = 0.25
# Decision thresholds on the mask features, each half-way between the classes it separates (measured
# on ground truth and blurred+noisy renders: see tests/test_world.py and docs/world.md).
STAR_SOLIDITY = 0.78
STAR_TIPS = 5  # segment.radial_peaks of a five-pointed star
CROSS_TIPS = 4  # a plus sign: concave like the star, with four arms
# A convex mask farther than this from every template (outline.template_distances) is "other": ground
# truth is within 0.08 of its own, a VAE round trip within 0.2 except where the segmentation broke.
MAX_TEMPLATE_DISTANCE = 0.2
NOISY_BORDER = 6.0  # median RGB distance of border pixels to their median colour
MIN_AREA = 12  # pixels; less is a speck, not a shape
STRIPE_EXPLAINED = 0.55
STRIPE_MIN_STD = 5.0  # luminance standard deviation (0..255) below which a shape is flat
STRIPE_PERIOD_RANGE = (0.75 * STRIPE_PERIOD, 1.4 * STRIPE_PERIOD)  # generated stripes measured 14.5-18.7 px

LABELS = ("shape", "color", "background", "striped", "fill", "orientation", "period")
PERIOD_TOLERANCE = 0.2  # a period read within 20 % of the expected one is right


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
    fill: FillReading = FillReading("solid")  # any texture: solid, or periodic with orientations and period
    color_error: float = 0.0  # RGB distance of the shape's colour from its palette name
    area: float = 0.0  # share of the picture the shape covers
    vertices: int = 0  # corners of the outline (the known shape's, or outline.count_vertices for "other")

    def labels(self) -> dict:
        """The four labels of the demo's scorer (score_batch's default comparison)."""
        return {"shape": self.shape, "color": self.color, "background": self.background, "striped": self.striped}

    def record(self) -> dict:
        """Every label and measurement, JSON-ready (what `lora-kit grid --score world` writes per cell)."""
        return {**self.labels(), **self.fill.labels(), "vertices": self.vertices, "color_error": round(self.color_error, 2),
                "area": round(self.area, 4), "shape_confidence": round(self.shape_confidence, 3)}


def labels_of(scene: Scene) -> dict:
    """What score_image should read from render(scene)."""
    return {"shape": scene.shape, "color": scene.color, "background": scene.background, "striped": scene.fill == "stripes"}


# The plane waves of each fill (texture.py): stripes one, a checkerboard two diagonal ones, dots two along
# the axes. "/" stripes repeat every 16 px of x + y, which is 16 / sqrt(2) px across them.
_DIAGONAL = STRIPE_PERIOD / math.sqrt(2)
FILL_TRUTH = {
    "solid": ("solid", [], 0.0), "stripes": ("periodic", ["/"], _DIAGONAL), "backslash": ("periodic", ["\\"], _DIAGONAL),
    "hstripes": ("periodic", ["horizontal"], float(FILL_PERIOD)), "vstripes": ("periodic", ["vertical"], float(FILL_PERIOD)),
    "checker": ("periodic", ["/", "\\"], FILL_PERIOD / math.sqrt(2)), "dots": ("periodic", ["horizontal", "vertical"], float(FILL_PERIOD)),
}  # fmt: skip


def fill_labels_of(scene: Scene) -> dict:
    """The fill labels score_image should read from render(scene): fill kind, orientations, period."""
    kind, orientations, period = FILL_TRUTH[scene.fill]
    return {"fill": kind, "orientation": sorted(orientations), "period": round(period, 2)}


def label_matches(key: str, got, want) -> bool:
    """One label against its expectation: periods within PERIOD_TOLERANCE, orientations as sets."""
    if key == "period":
        return (not want and not got) or (bool(want) and abs(float(got) / float(want) - 1) <= PERIOD_TOLERANCE)
    if key == "orientation":
        return sorted(got) == sorted(want)
    return got == want


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


def classify_shape(f: dict, mask: np.ndarray | None = None) -> tuple[str, float]:
    """(shape label, confidence) from shape_features and the mask (outline templates); thresholds at the top.

    Concave shapes are told apart by their tips (five: star, four: cross); every other shape by the
    nearest template of outline.template_distances, which covers every shape the generator draws."""
    if f.get("area", 0) < MIN_AREA:
        return "none", 1.0
    if f["touches_border"]:  # cut off by the frame (or no background at all): its outline is not its shape
        return "other", 1.0
    if f["solidity"] < STAR_SOLIDITY:
        # Concavity alone also called the noisy blobs of an untrained prompt a star: the tips decide.
        label = {STAR_TIPS: "star", CROSS_TIPS: "cross"}.get(f["tips"], "other")
        conf = _margin(f["solidity"], STAR_SOLIDITY, 0.2)
        if label == "other":
            return label, conf
    else:
        dist = template_distances(mask, f["aspect"])
        dist.pop("star")
        if f["tips"] != CROSS_TIPS:
            dist.pop("cross")
        ranked = sorted(dist, key=dist.get)
        label = ranked[0]
        if dist[label] > MAX_TEMPLATE_DISTANCE:
            return "other", _margin(dist[label], MAX_TEMPLATE_DISTANCE, 0.1)
        conf = min(1.0, (dist[ranked[1]] - dist[label]) / 0.05)
        if label == "circle" and 3 <= count_vertices(mask) <= 5:  # a pentagon is as round as the templates see
            return "other", 0.5
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


def name_shape_color(rgb: np.ndarray, core: np.ndarray) -> tuple[str, float, float]:
    """(palette name, confidence, RGB distance from the palette colour) of the shape's colour."""
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
    return best[0], best[2], best[1]


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
    shape, shape_conf = classify_shape(features, mask)
    if shape == "none":
        return ImageScore("none", None, background, False, 1.0, 0.0, background_conf, 0.0, features)
    core = erode(mask, 2)
    if core.sum() < 20:  # a thin shape: keep its edge pixels rather than nothing
        core = mask
    color, color_conf, color_error = name_shape_color(rgb, core)
    strength = stripe_strength(rgb, core)
    vertices = VERTICES[shape] if shape in VERTICES else count_vertices(mask)
    return ImageScore(
        shape, color, background, strength >= STRIPE_EXPLAINED,
        shape_conf, color_conf, background_conf, strength, features,
        read_fill(rgb, core), color_error, features["area"] / mask.size, vertices,
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
        got = score_image(image).record()
        ok = {k: label_matches(k, got[k], v) for k, v in want.items()}
        for k, right in ok.items():
            hits[k] += right
            counts[k] += 1
        all_right += all(ok.values())
    rates = {k: hits[k] / counts[k] for k in keys if counts[k]}
    rates["all"] = all_right / len(images) if images else 0.0
    rates["n"] = float(len(images))
    return rates


def degrade(image: Image.Image, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    """What a blurry, noisy generation of the same scene might look like: the scorer's robustness is measured on
    these (tests/test_world.py, scripts/eval_world_scorer.py)."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float64)
    return np.clip(np.round(blurred + rng.normal(0, noise, blurred.shape)), 0, 255).astype(np.uint8)
