"""Read the fill of a shape: solid, or periodic with its orientation(s) and period, for any texture.

score.stripe_strength knows one texture, the demo's "/" stripes of a fixed period. A LoRA can teach any
texture the world can draw (horizontal bands, a checkerboard, dots...), so this reader assumes none: it
finds the plane waves that explain the shape's inside.

Method: the core's colours are projected on their first principal axis (a hue-only contrast, orange on
a darker orange, counts as much as a luminance one); the strongest peak of that signal's zero-padded 2-D
spectrum gives a wave vector, refined by least squares on the pixels themselves (the core is not a
rectangle, so the spectrum alone is smeared); the fitted wave is removed and a second one looked for: the
residual's strongest, else the first turned by 90 degrees at its period (a square lattice's other axis, weak
where a small or pointed shape holds one or two rows of dots).
A fill is periodic when the waves explain at least PERIODIC_EXPLAINED of the variance, or, for a strong contrast,
when the pattern repeats: a LoRA draws its texture irregular (a dot row merged, one stripe missing or wider), which
spreads the variance over many waves (orange dots on brown: two waves explain 0.28-0.40) although anyone sees dots.
The core's masked autocorrelation one period along the first wave against half a period (`repeat_contrast`: about 2
for a perfect texture, 1.0-1.6 for those irregular ones) says the pattern comes back where it should. Each wave's
direction names an orientation of the pattern ("/" stripes are waves along (1, 1)); its wavelength is the
period. Measured on the generator's fills: one wave for stripes (a square wave's fundamental explains
8/pi^2 = 81 % of it), two diagonal waves for a checkerboard, two axis-aligned waves for a grid of dots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_STD = 15.0  # colour standard deviation (0..255, along the principal axis) below which a fill is flat: the shipped VAE
# leaves up to 14 on solid shapes; its textures keep at least 19
PERIOD_RANGE = (5.0, 40.0)  # pixels; finer does not survive a 4x VAE, coarser is shading, not texture
MIN_PERIODS = 1.25  # the core must span this many periods along the wave
PERIODIC_EXPLAINED = 0.5  # share of the variance the (at most two) waves explain
SECOND_WAVE = 0.2  # a second wave counts when it explains this share of the variance on its own (noise on a
# small core fits up to ~0.12; a checkerboard's or a dot grid's second wave explains 0.25-0.35)
LATTICE_WAVE = 0.08  # ...or this share when it is the first wave turned by 90 degrees at the same period: a square
# lattice's second axis. A dotted triangle or star holds one or two rows of dots, so its column wave explains only
# 0.12-0.2 (a LoRA's dotted triangles: 4 of 5 read as one-way bands or solid); noise does not land on that one
# wave vector, and a stripe's harmonics lie along its own axis.
LATTICE_TOLERANCE = (6.0, 0.12)  # degrees off perpendicular, relative period difference
LATTICE_EXPLAINED = 0.55  # a fill read with that weaker second axis must explain this much (not PERIODIC_EXPLAINED):
# a solid star under blur and noise fits an edge wave and a turned one to 0.51; dotted triangles 0.63-0.73
LATTICE_MIN_PERIODS = 1.5  # ...and only where the core spans this many periods of the refined first wave: a blob's
# shading (a bright centre, a mottled ControlNet fill) fits a pair of crossed waves 1.1-1.4 periods across its core.
# (Holding the first wave itself to MIN_PERIODS after refining cost small striped shapes 5 points.)
STRONG_STD = 40.0  # the repeat test applies only above this contrast: across 7,400 cells of the concept benchmark's
# grids, the shapes read solid (shading, a streak at a triangle's foot) had std 15-35 and reached a repeat contrast of
# 1.24; the textured ones missed by the waves had std 40-83
REPEAT_CONTRAST = 0.9  # periodic by the repeat test at or above this (43 cells of those grids, dots or stripes by
# eye but for a few half-drawn ones; none of the plain prompts' cells)
LATTICE_REPEAT = 0.25  # ...with the first wave turned by 90 degrees repeating this much too: a lattice (dots 0.3-1.05;
# stripes repeat along themselves at every shift, so their turned contrast is -0.05..0.1)
REPEAT_OVERLAP = 0.25  # share of the core two shifted copies must share for their correlation to count
REPEAT_RANGE = ((0.35, 0.65), (0.7, 1.6))  # the half-period and the period window, in periods of the first wave
SNAP_DEGREES = 15.0  # orientation within this of 0/45/90/135 degrees gets its name
_NAMES = {0: "vertical", 45: "/", 90: "horizontal", 135: "\\"}
_PAD = 128  # spectrum size (zero padding): a 64 px picture's core spans 1.5-4 periods


@dataclass(frozen=True)
class FillReading:
    kind: str  # "solid" or "periodic"
    orientations: tuple[str, ...] = ()  # sorted names: "vertical", "/", "horizontal", "\\" or "<deg>deg"
    period: float = 0.0  # pixels, wavelength of the strongest wave (0 when solid)
    explained: float = 0.0  # share of the core's colour variance the waves explain

    def labels(self) -> dict:
        return {"fill": self.kind, "orientation": list(self.orientations), "period": round(self.period, 2)}


def orientation_name(kx: float, ky: float) -> str:
    """Name of the pattern a wave along (kx, ky) draws, in image coordinates (y down)."""
    deg = math.degrees(math.atan2(ky, kx)) % 180.0
    for ref, name in _NAMES.items():
        if min(abs(deg - ref), 180 - abs(deg - ref)) <= SNAP_DEGREES:
            return name
    return f"{round(deg):d}deg"


def _principal(pixels: np.ndarray) -> np.ndarray:
    centred = pixels - pixels.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[0]


def _fit(values: np.ndarray, xs: np.ndarray, ys: np.ndarray, k: tuple[float, float]) -> tuple[float, np.ndarray]:
    """(explained share, fitted wave) of the plane wave with wave vector k (cycles per pixel)."""
    phase = 2 * math.pi * (k[0] * xs + k[1] * ys)
    a = np.stack([np.cos(phase), np.sin(phase)], axis=1)
    coef, *_ = np.linalg.lstsq(a, values, rcond=None)
    wave = a @ coef
    return float((wave**2).sum() / max((values**2).sum(), 1e-12)), wave


def _strongest_wave(values, xs, ys, extent: float) -> tuple[float, tuple[float, float], np.ndarray]:
    """The best wave vector: spectrum peak in the allowed period band, then a local least-squares search."""
    pad = max(_PAD, 1 << int(max(xs.max() - xs.min(), ys.max() - ys.min()) * 2).bit_length())
    grid = np.zeros((pad, pad))
    grid[ys - ys.min(), xs - xs.min()] = values
    power = np.abs(np.fft.rfft2(grid)) ** 2
    fy = np.fft.fftfreq(pad)[:, None]
    fx = np.fft.rfftfreq(pad)[None, :]
    radius = np.hypot(fx, fy)
    lo, hi = PERIOD_RANGE
    hi = min(hi, extent / MIN_PERIODS)
    power[(radius < 1 / hi) | (radius > 1 / lo)] = 0
    if not power.any():
        return 0.0, (0.0, 0.0), np.zeros_like(values)
    iy, ix = np.unravel_index(int(np.argmax(power)), power.shape)
    k0 = (float(fx[0, ix]), float(fy[iy, 0]))
    step = 0.5 / pad
    best = (-1.0, k0, None)
    for dx in (-step, 0.0, step):
        for dy in (-step, 0.0, step):
            k = (k0[0] + dx, k0[1] + dy)
            share, wave = _fit(values, xs, ys, k)
            if share > best[0]:
                best = (share, k, wave)
    return best  # type: ignore[return-value]


def _lattice_partner(values, xs, ys, k1) -> tuple[float, tuple[float, float]]:
    """(share, wave vector) of the best wave near k1 turned by 90 degrees, at the same period."""
    best = (0.0, (0.0, 0.0))
    turned = math.atan2(k1[1], k1[0]) + math.pi / 2
    radius = math.hypot(*k1)
    max_deg, max_rel = LATTICE_TOLERANCE
    for deg in np.linspace(-max_deg, max_deg, 5):
        for rel in np.linspace(-max_rel, max_rel, 5):
            angle, r = turned + math.radians(deg), radius * (1 + rel)
            k = (r * math.cos(angle), r * math.sin(angle))
            share, _ = _fit(values, xs, ys, k)
            if share > best[0]:
                best = (share, k)
    return best


def _shift_correlation(grid: np.ndarray, mask: np.ndarray, dx: int, dy: int) -> float | None:
    """Correlation of the core's values with themselves shifted by (dx, dy) pixels, over the pixels in both (None
    where those are under REPEAT_OVERLAP of the core: a few pixels at the far ends of a shaded blob correlate by
    chance)."""
    h, w = grid.shape
    if abs(dx) >= w or abs(dy) >= h:
        return None
    a = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    b = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    both = mask[a] & mask[b]
    if both.sum() < max(20, REPEAT_OVERLAP * mask.sum()):
        return None
    va, vb = grid[a][both], grid[b][both]
    va, vb = va - va.mean(), vb - vb.mean()
    den = math.sqrt(float((va**2).sum() * (vb**2).sum()))
    return float((va * vb).sum() / den) if den > 0 else 0.0


def repeat_contrast(grid: np.ndarray, mask: np.ndarray, k: tuple[float, float]) -> float:
    """Highest correlation about one period along wave vector k minus the lowest about half a period (0 when the
    core is too small to tell). A texture alternates: anti-correlated half a period away, correlated one period
    away. Shading decays with the shift and a linear ramp stays correlated at every shift: neither alternates."""
    period = 1.0 / math.hypot(*k)
    ux, uy = k[0] * period, k[1] * period
    windows = []
    for lo, hi in REPEAT_RANGE:
        rs = []
        for f in np.arange(lo, hi + 1e-9, 0.05):
            r = _shift_correlation(grid, mask, int(round(ux * period * f)), int(round(uy * period * f)))
            if r is not None:
                rs.append(r)
        windows.append(rs)
    low, high = windows
    return max(high) - min(low) if low and high else 0.0


def read_fill(rgb: np.ndarray, core: np.ndarray) -> FillReading:
    """The fill of the pixels under `core` (a boolean mask of the shape's inside, edges eroded away)."""
    ys, xs = np.nonzero(core)
    if len(xs) < 20:
        return FillReading("solid")
    values = _principal(rgb[core].astype(np.float64))
    if values.std() < MIN_STD:
        return FillReading("solid")
    extent = float(min(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    share1, k1, wave1 = _strongest_wave(values, xs, ys, extent)
    if share1 <= 0:
        return FillReading("solid")
    waves = [(share1, k1)]
    share2, k2, _ = _strongest_wave(values - wave1, xs, ys, extent)
    share2 *= 1.0 - share1  # of the residual -> of the whole variance (least squares: residual = 1 - share1)
    name1 = orientation_name(*k1)
    lattice = False
    if share2 >= SECOND_WAVE and orientation_name(*k2) != name1:
        waves.append((share2, k2))
    elif extent >= LATTICE_MIN_PERIODS / math.hypot(*k1):
        share2, k2 = _lattice_partner(values - wave1, xs, ys, k1)
        share2 *= 1.0 - share1
        lattice = share2 >= LATTICE_WAVE and orientation_name(*k2) != name1
        if lattice:
            waves.append((share2, k2))
    explained = sum(s for s, _ in waves)
    if explained < (LATTICE_EXPLAINED if lattice else PERIODIC_EXPLAINED):
        return _repeating(values, xs, ys, core, k1, explained)
    names = tuple(sorted({orientation_name(*k) for _, k in waves}))
    return FillReading("periodic", names, 1.0 / math.hypot(*k1), explained)


def _repeating(values, xs, ys, core, k1, explained: float) -> FillReading:
    """The fill the waves did not explain: periodic when its strong contrast repeats along the first wave."""
    if values.std() < STRONG_STD:
        return FillReading("solid", explained=explained)
    grid = np.zeros(core.shape)
    grid[ys, xs] = values
    if repeat_contrast(grid, core, k1) < REPEAT_CONTRAST:
        return FillReading("solid", explained=explained)
    names = {orientation_name(*k1)}
    turned = (-k1[1], k1[0])
    if repeat_contrast(grid, core, turned) >= LATTICE_REPEAT:
        names.add(orientation_name(*turned))
    return FillReading("periodic", tuple(sorted(names)), 1.0 / math.hypot(*k1), explained)
