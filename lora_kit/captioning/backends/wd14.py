"""WD14-style ONNX taggers (SmilingWolf/wd-*-tagger-v2/v3 and compatible exports) on onnxruntime.

A tagger folder has `model.onnx` (input NHWC, BGR, float32 0..255, square; output per-tag
probabilities, sigmoid included) and `selected_tags.csv` (tag_id,name,category,count; category 0
general, 4 character, 9 rating). Preprocessing copies the reference WD14 demo: pad to a centred white
square, bicubic resize, RGB -> BGR, no normalisation. onnxruntime is the optional extra "tagger".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from PIL import Image

from lora_kit.captioning.base import Caption
from lora_kit.captioning.loading import hub_files
from lora_kit.captioning.scan import ImageItem
from lora_kit.errors import UserError, missing_extra

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9


@dataclass(frozen=True)
class TagLabel:
    name: str
    category: int


def read_selected_tags(path: Path) -> list[TagLabel]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"name", "category"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected the columns tag_id,name,category,count")
        try:
            return [TagLabel(row["name"], int(row["category"])) for row in reader]
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: bad category value ({exc})") from None


def prepare_wd14(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) float32 BGR 0..255, padded to a centred white square first."""
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), ((side - w) // 2, (side - h) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()


def select_tags(probs: np.ndarray, labels: Sequence[TagLabel], general: float, character: float,
                rating: bool) -> Caption:
    """Tags over their threshold in CSV order (kohya's order), with scores; the top rating first if asked.

    Categories other than character and rating (artist, copyright, meta in some exports) use the
    general threshold, as kohya's tagger does by default.
    """
    tags, scores = [], []
    if rating:
        ratings = [i for i, lab in enumerate(labels) if lab.category == RATING]
        if ratings:
            best = max(ratings, key=lambda i: probs[i])
            tags.append(labels[best].name)
            scores.append(float(probs[best]))
    for i, lab in enumerate(labels):
        if lab.category == RATING:
            continue
        threshold = character if lab.category == CHARACTER else general
        if probs[i] >= threshold:
            tags.append(lab.name)
            scores.append(float(probs[i]))
    return Caption(tags=tags, scores=scores)


def _providers(ort, device: str | None) -> list[str]:
    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or available


class TaggerCaptioner:
    """`model`: a folder with model.onnx + selected_tags.csv, or a Hub id of such a repository."""

    name: ClassVar[str] = "tagger"
    default_model: ClassVar[str] = "SmilingWolf/wd-vit-tagger-v3"

    def __init__(self, model: str = default_model, general_threshold: float = 0.35,
                 character_threshold: float = 0.85, rating: bool = False, device: str | None = None):
        try:
            import onnxruntime as ort  # lazy: optional backend (the [tagger] extra)
        except ImportError:
            raise missing_extra("onnxruntime", "tagger", "the WD14 tagger") from None
        folder = hub_files(model, [MODEL_FILE, TAGS_FILE], "tagger")
        self.labels = read_selected_tags(folder / TAGS_FILE)
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), providers=_providers(ort, device))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
            raise UserError(f"{folder / MODEL_FILE}: expected an NHWC input (batch, size, size, 3), got {shape}")
        self.size = int(shape[1])
        # Some exports fix the batch at 1; those run image by image.
        self.max_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.general, self.character, self.rating = float(general_threshold), float(character_threshold), bool(rating)

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = np.stack([prepare_wd14(im, self.size) for im in images])
        step = self.max_batch or len(batch)
        probs = np.concatenate([self.session.run(None, {self.input_name: batch[i : i + step]})[0]
                                for i in range(0, len(batch), step)])
        if probs.shape[-1] != len(self.labels):
            raise UserError(f"the tagger outputs {probs.shape[-1]} scores but {TAGS_FILE} lists {len(self.labels)} tags")
        return probs

    def caption(self, items: Sequence[ImageItem], images: Sequence[Image.Image]) -> list[Caption]:
        return [select_tags(p, self.labels, self.general, self.character, self.rating) for p in self.predict(images)]
