"""ControlNet conditioning images: loading, resizing to the generation size, Canny edges, ControlNet models.

Only preprocessors that need no model download are built in: Canny edges, and a given image (mask,
scribble, depth map, pose render...) used as is. Canny runs through OpenCV when it is importable; the
numpy fallback exists because opencv is not a lora-kit dependency (a 30 MB wheel for one filter). Both
paths blur with the same Gaussian first and use the L2 gradient, so they agree up to rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from lora_kit.data.images import load_image
from lora_kit.errors import UserError

PREPROCESSORS = ("none", "canny")
_BLUR_SIGMA = 1.4  # the classic Canny pre-blur; 5x5 kernel


def resize_cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's "Crop and Resize": scale to cover (width, height), then centre-crop; aspect kept."""
    w, h = image.size
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - width) // 2, (nh - height) // 2
    return image.crop((left, top, left + width, top + height))


def _gaussian_kernel(sigma: float, radius: int = 2) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _convolve_sep(img: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    # Separable convolution with reflected borders (OpenCV's BORDER_REFLECT_101 default).
    r = len(k) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.pad(img, pad, mode="reflect")
    out = np.zeros_like(img, dtype=np.float64)
    for i, w in enumerate(k):
        out += w * (p[i : i + img.shape[0], :] if axis == 0 else p[:, i : i + img.shape[1]])
    return out


def gaussian_blur(gray: np.ndarray, sigma: float = _BLUR_SIGMA) -> np.ndarray:
    k = _gaussian_kernel(sigma)
    return _convolve_sep(_convolve_sep(gray.astype(np.float64), k, 0), k, 1)


def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    smooth, diff = np.array([1.0, 2.0, 1.0]), np.array([1.0, 0.0, -1.0])
    # correlation with [-1, 0, 1] along the derivative axis == OpenCV's Sobel sign convention
    gx = _convolve_sep(_convolve_sep(gray, smooth, 0), diff[::-1], 1)
    gy = _convolve_sep(_convolve_sep(gray, smooth, 1), diff[::-1], 0)
    return gx, gy


def _non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a pixel only where it is a local maximum across the edge (4 quantised directions)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    p = np.pad(mag, 1, mode="constant")
    h, w = mag.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # direction of the gradient -> the two neighbours across the edge
    horiz = (angle < 22.5) | (angle >= 157.5)
    diag1 = (angle >= 22.5) & (angle < 67.5)
    vert = (angle >= 67.5) & (angle < 112.5)
    diag2 = (angle >= 112.5) & (angle < 157.5)
    keep = np.zeros_like(mag, dtype=bool)
    keep |= horiz & (mag >= at(0, -1)) & (mag > at(0, 1))
    keep |= vert & (mag >= at(-1, 0)) & (mag > at(1, 0))
    keep |= diag1 & (mag >= at(-1, -1)) & (mag > at(1, 1))
    keep |= diag2 & (mag >= at(-1, 1)) & (mag > at(1, -1))
    return keep


def _dilate8(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Weak edge pixels survive when 8-connected to a strong one (grown until nothing changes)."""
    edges = strong.copy()
    candidates = weak | strong
    while True:
        grown = _dilate8(edges) & candidates
        if (grown == edges).all():
            return edges
        edges = grown


def canny_numpy(gray: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of a uint8 grayscale array as a bool array (blur, Sobel, NMS, hysteresis)."""
    g = gaussian_blur(gray)
    gx, gy = sobel(g)
    mag = np.hypot(gx, gy)
    thin = _non_max_suppression(mag, gx, gy)
    return _hysteresis(thin & (mag >= high), thin & (mag >= low))


def canny(image: Image.Image, low: float = 100, high: float = 200, backend: str = "auto") -> Image.Image:
    """White-on-black RGB edge map, the convention of Canny ControlNets."""
    gray = np.asarray(image.convert("L"))
    if backend not in ("auto", "opencv", "numpy"):
        raise ValueError(f"backend must be auto, opencv or numpy, not {backend!r}")
    cv2 = None
    if backend != "numpy":
        try:
            import cv2  # type: ignore[no-redef]  # lazy: optional backend (opencv is no dependency; numpy fallback)
        except ImportError:
            if backend == "opencv":
                raise
    if cv2 is not None:
        blurred = cv2.GaussianBlur(gray, (5, 5), _BLUR_SIGMA)
        edges = cv2.Canny(blurred, low, high, L2gradient=True) > 0
    else:
        edges = canny_numpy(gray, low, high)
    out = (edges.astype(np.uint8) * 255)[..., None].repeat(3, axis=2)
    return Image.fromarray(out, "RGB")


def prepare_control_image(
    source: str | Path | Image.Image,
    width: int,
    height: int,
    preprocess: str = "none",
    low: float = 100,
    high: float = 200,
) -> Image.Image:
    """Load (EXIF-aware), crop-and-resize to the generation size, then run the preprocessor."""
    if preprocess not in PREPROCESSORS:
        raise UserError(f"unknown control preprocessor {preprocess!r}; expected one of {', '.join(PREPROCESSORS)}")
    if isinstance(source, Image.Image):
        image = source.convert("RGB")
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"control image {source} does not exist")
        image = load_image(path)
    image = resize_cover(image, width, height)
    return canny(image, low, high) if preprocess == "canny" else image


def load_controlnet(spec: str, dtype=None):
    """A ControlNetModel from a diffusers folder, a single .safetensors file or a Hub id."""
    dtype = dtype or torch.float32
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"{path.name}: only .safetensors ControlNet files are loaded (no pickle)")
        return ControlNetModel.from_single_file(str(path), torch_dtype=dtype)
    if not path.exists() and spec.startswith((".", "/", "~")):
        raise UserError(f"ControlNet path {spec} does not exist")
    try:
        return ControlNetModel.from_pretrained(spec, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"ControlNet {spec!r} is not a local folder and could not be fetched ({type(exc).__name__}). "
            f"On a machine with network run `hf download {spec}` and pass the local folder."
        ) from exc
