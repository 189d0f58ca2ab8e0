"""Did a LoRA learn its concept, and what else did it change? Grid cells of the world, labelled and summarised.

One code path for `lora-kit grid --score world` and `lora-kit demo`: every cell is scored
(lora_kit.world.score.score_image(...).record()), prompts with the trigger word are the concept's, the
others are the base's; per LoRA weight the summary gives the concept rate on trigger prompts and, on
prompts without the trigger, bleed (the concept where it was not asked for) and drift against weight 0:
shape and colour accuracy (the prompt's words against the labels), mean colour error (RGB distance from the
palette colour) and mean area. A concept is any label signature (`ConceptSpec`): a shape (by name, or
"other" with a vertex count), a fill (periodic, orientations, period), or both, given on the command line
(`shape=hexagon`, `fill=periodic,orientation=/`) or learned from the LoRA's training images.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from lora_kit.errors import UserError
from lora_kit.paths import resolve_dataset_path
from lora_kit.world.score import PERIOD_TOLERANCE, score_image
from lora_kit.world.shapes import ALL_SHAPES, BACKGROUNDS, COLORS, FILL_WORDS

# Share of the training images that must agree on a label for it to be part of a learned signature.
AGREEMENT = 0.8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Words of the world's captions: anything else in a prompt is a candidate trigger word.
WORLD_WORDS = {"a", "an", "on", "background", "light", *ALL_SHAPES, *COLORS, *BACKGROUNDS,
               *(w for words in FILL_WORDS.values() for w in words.split())}  # fmt: skip


@dataclass(frozen=True)
class ConceptSpec:
    """What the concept looks like in labels; a field left None is not checked."""

    shape: str | None = None  # a shape name of the world, or "other"
    vertices: int | None = None  # with shape "other": the outline's corner count
    fill: str | None = None  # "periodic" or "solid"
    orientation: tuple[str, ...] | None = None  # texture.FillReading.orientations
    period: float | None = None  # pixels, within score.PERIOD_TOLERANCE

    def matches(self, record: dict) -> bool:
        if self.shape is not None and record["shape"] != self.shape:
            return False
        if self.vertices is not None and record.get("vertices") != self.vertices:
            return False
        if self.fill is not None and record["fill"] != self.fill:
            return False
        if self.orientation is not None and sorted(record["orientation"]) != sorted(self.orientation):
            return False
        if self.period is not None and abs(float(record["period"]) / self.period - 1) > PERIOD_TOLERANCE:
            return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={'/'.join(v) if isinstance(v, tuple) else v}" for k, v in asdict(self).items() if v is not None]
        return ", ".join(parts) or "(anything)"

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


def parse_concept(text: str) -> ConceptSpec:
    """`shape=hexagon`, `shape=other,vertices=7`, `fill=periodic,orientation=horizontal+vertical,period=16`."""
    kw: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("shape", "vertices", "fill", "orientation", "period"):
            raise UserError(f"--concept {text!r}: expected key=value pairs of shape, vertices, fill, orientation, period")
        try:
            kw[key] = int(value) if key == "vertices" else float(value) if key == "period" else value
        except ValueError:
            raise UserError(f"--concept {text!r}: {key} expects a number, got {value!r}") from None
    if "orientation" in kw:
        kw["orientation"] = tuple(sorted(o for o in kw["orientation"].split("+") if o))
        kw.setdefault("fill", "periodic")
    if kw.get("shape") not in (None, "other", *ALL_SHAPES):
        raise UserError(f"--concept {text!r}: shape must be one of {', '.join(ALL_SHAPES)} or other")
    if kw.get("fill") not in (None, "solid", "periodic"):
        raise UserError(f"--concept {text!r}: fill must be solid or periodic")
    if not kw:
        raise UserError(f"--concept {text!r}: give at least one of shape=..., fill=...")
    return ConceptSpec(**kw)


def learn_concept(records: Sequence[dict]) -> ConceptSpec:
    """The signature the training images share: a shape and/or a fill that AGREEMENT of them show.

    A subject's images share a shape (their fills and colours vary); a style's share a texture (their
    shapes vary). A label on which the images disagree is left out of the signature."""
    if not records:
        raise UserError("no images to learn the concept from")
    n = len(records)

    def agreed(values: Iterable):
        value, count = Counter(values).most_common(1)[0]
        return value if count >= AGREEMENT * n else None

    kw: dict = {}
    shape = agreed(r["shape"] for r in records)
    if shape not in (None, "none"):
        kw["shape"] = shape
        if shape == "other":
            kw["vertices"] = agreed(r["vertices"] for r in records)
    if agreed(r["fill"] for r in records) == "periodic":
        kw["fill"] = "periodic"
        periodic = [r for r in records if r["fill"] == "periodic"]
        kw["orientation"] = agreed(tuple(sorted(r["orientation"])) for r in periodic)
        kw["period"] = round(statistics.median(float(r["period"]) for r in periodic), 2)
    if not kw:
        raise UserError(f"the {n} training images share no shape or texture the world scorer reads; pass --concept")
    return ConceptSpec(**kw)


def learn_concept_from_folder(path: str | Path, limit: int = 200) -> ConceptSpec:
    """learn_concept on the images of a dataset folder (recursively, e.g. a kohya `10_star/` subfolder)."""
    root = resolve_dataset_path(str(path))
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise UserError(f"--concept-from {path}: no images found")
    return learn_concept([score_image(Image.open(f)).record() for f in files])


def prompt_labels(prompt: str) -> dict:
    """What a world prompt asks for: {"shape", "color", "background"} (None where it names none)."""
    words = prompt.lower().replace(",", " ").split()
    shape = next((w for w in words if w in ALL_SHAPES), None)
    color = next((w for w in words if w in COLORS), None)
    background = None
    text = " ".join(words)
    if " background" in text and " on " in text:
        tail = text.rsplit(" on ", 1)[1].removesuffix(" background").split(" ", 1)
        background = tail[-1] if tail[-1] in BACKGROUNDS else None
    return {"shape": shape, "color": color, "background": background}


def guess_trigger(prompts: Iterable[str]) -> str:
    """The one word of the prompts that is not a word of the world's captions (a LoRA's trigger word)."""
    extra = sorted({w for p in prompts for w in p.lower().replace(",", " ").split()} - WORLD_WORDS)
    if len(extra) != 1:
        raise UserError(f"cannot tell the trigger word from the prompts (candidates: {', '.join(extra) or 'none'}); pass --trigger WORD")
    return extra[0]


def has_word(prompt: str, word: str) -> bool:
    return word.lower() in prompt.lower().replace(",", " ").split()


def label_rows(images: Sequence, prompts: Sequence[str], weights: Sequence[float], trigger: str, concept: ConceptSpec) -> list[dict]:
    """One row per image: its labels (score record), weight, trigger or not, concept seen, shape/colour right."""
    rows = []
    for image, prompt, weight in zip(images, prompts, weights):
        rec = score_image(image).record()
        want = prompt_labels(prompt)
        rows.append({
            **rec, "prompt": prompt, "weight": float(weight), "trigger": has_word(prompt, trigger), "concept": concept.matches(rec),
            "shape_ok": want["shape"] is not None and rec["shape"] == want["shape"],
            "color_ok": want["color"] is not None and rec["color"] == want["color"],
        })  # fmt: skip
    return rows


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize(rows: list[dict]) -> dict:
    """{weight: rates and drift}: concept on trigger prompts; on the others bleed, shape, color (accuracy),
    color_error (mean RGB), area (mean share of the picture), and each drift against weight 0."""
    out: dict = {}
    for w in sorted({r["weight"] for r in rows}):
        trig = [r for r in rows if r["weight"] == w and r["trigger"]]
        plain = [r for r in rows if r["weight"] == w and not r["trigger"]]
        found = [r for r in plain if r["shape"] != "none"]
        out[w] = {
            "concept": _mean([float(r["concept"]) for r in trig]), "bleed": _mean([float(r["concept"]) for r in plain]),
            "shape": _mean([float(r["shape_ok"]) for r in plain]), "color": _mean([float(r["color_ok"]) for r in plain]),
            "color_error": _mean([r["color_error"] for r in found]), "area": _mean([r["area"] for r in found]),
            "n": len(trig) + len(plain), "n_trigger": len(trig),
        }  # fmt: skip
    base = out.get(0.0)
    for w, v in out.items():
        if base is None:
            break
        v["drift"] = {
            k: None if v[k] is None or base[k] is None else round(v[k] - base[k], 4) for k in ("shape", "color", "color_error")
        }
        v["drift"]["area_ratio"] = None if not base["area"] or v["area"] is None else round(v["area"] / base["area"], 4)
    return out


# The acceptance targets of issue 19, checked at weight 1 against weight 0 (docs/world.md).
TARGETS = {
    "concept at weight 1 >= 90 %": lambda s0, s1: s1["concept"] is not None and s1["concept"] >= 0.9,
    "concept at weight 0 <= 5 %": lambda s0, s1: s0["concept"] is not None and s0["concept"] <= 0.05,
    "bleed <= 10 %": lambda s0, s1: s1["bleed"] is not None and s1["bleed"] <= 0.1,
    "shape accuracy drop < 10 points": lambda s0, s1: s1["drift"]["shape"] is not None and s1["drift"]["shape"] > -0.1,
    "colour accuracy drop < 10 points": lambda s0, s1: s1["drift"]["color"] is not None and s1["drift"]["color"] > -0.1,
    "colour error growth < 15 RGB": lambda s0, s1: s1["drift"]["color_error"] is not None and s1["drift"]["color_error"] < 15,
    "area within +-25 %": lambda s0, s1: s1["drift"]["area_ratio"] is not None and abs(s1["drift"]["area_ratio"] - 1) <= 0.25,
}


def check_targets(summary: dict, weight: float = 1.0) -> dict[str, bool] | None:
    """Each target met or not at `weight` (None when the summary lacks weight 0 or `weight`)."""
    if 0.0 not in summary or weight not in summary:
        return None
    return {name: bool(fn(summary[0.0], summary[weight])) for name, fn in TARGETS.items()}


def format_summary(summary: dict, concept: ConceptSpec, trigger: str) -> list[str]:
    """The table `grid --score world` and `demo` print."""
    def pct(v):
        return "   -" if v is None else f"{v:4.0%}"

    def num(v, fmt):
        return "    -" if v is None else format(v, fmt)

    lines = [f"concept = {concept.describe()} on prompts with '{trigger}'; the other columns on prompts without it",
             "  weight  concept  bleed  shape  colour  colour err  area   (drift vs weight 0: shape, colour, colour err, area x)"]
    for w, v in summary.items():
        d = v.get("drift") or {}
        drift = "" if not d else (f"   {num(d['shape'], '+.2f')} {num(d['color'], '+.2f')} {num(d['color_error'], '+6.1f')} "
                                  f"{num(d['area_ratio'], '.2f')}")
        lines.append(f"  {w:6.2f}  {pct(v['concept']):>7}  {pct(v['bleed']):>5}  {pct(v['shape']):>5}  {pct(v['color']):>6}"
                     f"  {num(v['color_error'], '10.1f')}  {num(v['area'], '.3f')}{drift}")
    return lines
