"""What both publishing targets say about a run: the settings table, the recommended weight, family names.

Labels use the words kohya users know (network_dim, network_alpha, repeats...), so a Civitai reader can
compare a lora-kit LoRA with a kohya one line by line.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from lora_kit.errors import UserError
from lora_kit.models.family import FAMILIES, SD2, SD2V, family
from lora_kit.publish.privacy import scrub_text
from lora_kit.publish.rundir import Run, as_hub_id, base_model_label, hub_base_model, is_builtin_base

FAMILY_NAMES = {name: family(name).label for name in FAMILIES}  # card labels, from models.family


def recommended_weight(run: Run, override: float | None = None) -> float:
    """The strength to suggest: --weight, else 1.0 when the samples used it, else their strongest non-zero weight."""
    if override is not None:
        return float(override)
    weights = {c.weight for c in (run.samples.cells if run.samples else []) if c.weight}
    if not weights:
        weights = {float(w) for w in (run.recipe.sample.weights if run.recipe else []) if float(w)}
    if not weights or 1.0 in weights:
        return 1.0
    return max(weights)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(fmt(v) for v in value)
    return str(value)


def _duration(summary) -> str | None:
    start, end = summary.training_started_at, summary.training_finished_at
    try:
        seconds = float(end) - float(start)
    except (TypeError, ValueError):
        return None
    return str(datetime.timedelta(seconds=round(seconds))) if seconds >= 0 else None


# (label, summary key) in table order; missing or empty values are left out.
_ROWS = (
    ("Rank (network_dim)", "rank"), ("Alpha (network_alpha)", "alpha"), ("Steps", "steps"), ("Epochs", "epoch"),
    ("Learning rate (U-Net)", "learning_rate"), ("Text encoder learning rate", "text_encoder_lr"),
    ("Optimizer", "optimizer"), ("LR scheduler", "lr_scheduler"), ("Resolution", "resolution"),
    ("Batch size", "batch_size"), ("Gradient accumulation steps", "gradient_accumulation_steps"),
    ("Training images", "num_train_images"), ("Regularisation images", "num_reg_images"),
    ("Mixed precision", "mixed_precision"), ("Prediction type", "prediction_type"),
    ("min SNR gamma", "min_snr_gamma"), ("Noise offset", "noise_offset"), ("Clip skip", "clip_skip"),
    ("Seed", "seed"),
)


def training_settings(run: Run, details: "Details | None" = None) -> list[tuple[str, str]]:
    s = run.summary
    base = details.base_label if details else base_model_label(run)
    rows = [("Base model", base), ("Model family", FAMILY_NAMES.get(run.family, run.family))]
    for label, key in _ROWS:
        value = getattr(s, key)
        if value is None or value == "" or (key in ("num_reg_images", "text_encoder_lr") and not value):
            continue
        rows.append((label, fmt(value)))
    args = s.network_args
    if args.get("train_text_encoder") is not None:
        rows.append(("Text encoder trained", "yes" if args["train_text_encoder"] else "no"))
    if args.get("use_dora"):
        rows.append(("DoRA", "yes"))
    duration = _duration(s)
    if duration:
        rows.append(("Training time", duration))
    return rows


def top_tags(run: Run, n: int = 12) -> list[tuple[str, int]]:
    """Most frequent caption tags over all dataset folders (kohya's ss_tag_frequency is per folder)."""
    freq = run.summary.tag_frequency
    counts: dict[str, int] = {}
    for key, value in freq.items():
        if isinstance(value, dict):
            for tag, c in value.items():
                counts[tag] = counts.get(tag, 0) + int(c)
        else:
            counts[key] = counts.get(key, 0) + int(value)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# ---------------------------------------------------------------------------------------------- Civitai


def civitai_base_model(run: Run) -> str:
    """Civitai's `baseModel` vocabulary ("SD 1.5", "SD 2.1 768", "SDXL 1.0"...); "Other" for built-in test models."""
    if is_builtin_base(run):
        return "Other"
    name = family(run.family).civitai if run.family in FAMILIES else "SD 1.5"
    if run.family in (SD2, SD2V) and _is_sd20(run.base_model):
        name = name.replace("2.1", "2.0")  # stabilityai/stable-diffusion-2(-base) are 2.0
    return name


def _is_sd20(base: str) -> bool:
    # stabilityai/stable-diffusion-2 and -2-base are 2.0; -2-1 / -2-1-base (and most fine-tunes) are 2.1.
    name = base.lower().rstrip("/").split("/")[-1]
    if re.search(r"2[-_.]1", name):
        return False
    return bool(re.search(r"(stable-diffusion-2(?:-base)?$|2[-_.]0|\bsd-?2(?:-base)?$)", name))


# ---------------------------------------------------------------------------------------------- details


@dataclass
class Details:
    """The descriptive fields of a release, from the run with the optional command-line overrides applied."""

    title: str
    author: str
    description: str
    license: str  # as the user wrote it ("" = not set)
    base_model: str | None  # a Hub repo id, or None (built-in / local base)
    base_label: str  # what to print about the base model, never a local path
    weight: float
    trigger_words: list[str]
    tags: list[str]


def describe(run: Run, title: str | None = None, license: str | None = None, base_model: str | None = None,
             weight: float | None = None) -> Details:
    hub = hub_base_model(run)
    if base_model:
        hub = as_hub_id(base_model)
        if hub is None:
            raise UserError(f"--base-model must be a Hub repo id like owner/name, got {base_model!r}")
    return Details(
        title=scrub_text(title or run.save_field("title") or run.name),
        author=scrub_text(run.save_field("author")),
        description=scrub_text(run.save_field("description")),
        license=(license if license is not None else run.save_field("license")).strip(),
        base_model=hub,
        base_label=hub or base_model_label(run),
        weight=recommended_weight(run, weight),
        trigger_words=[scrub_text(w) for w in run.trigger_words],
        tags=[scrub_text(t) for t in run.tags],
    )
