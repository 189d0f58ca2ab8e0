"""Per-cell numbers: how far a LoRA moved the image from the base model, and CLIP text-image score.

- `base_distance`: mean absolute RGB difference (0..1) between a cell and the same cell rendered with
  every LoRA weight at 0 (same prompt, seed, sampler...). 0 = no effect; it reads as the LoRA's effect
  size at that weight and grows with the weight until the image changes composition.
- `clip_score`: 100 * max(cos(image, text), 0) with a transformers CLIPModel, the definition of
  torchmetrics' `clip_score` (kept dependency-free: torchmetrics would pull a second CLIP loader). As
  SimpleTuner's docs warn, it is only loosely meaningful; compare cells of one grid, not across models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from lora_kit.errors import UserError


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean |a - b| over all RGB values, scaled to 0..1."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"image sizes differ: {a.size} vs {b.size}")
    return float(np.abs(x - y).mean() / 255.0)


class ClipScorer:
    """CLIP score of (image, prompt) pairs with a local transformers CLIPModel + CLIPProcessor folder."""

    def __init__(self, path: str, device: str = "cpu"):
        if not Path(path).expanduser().exists() and path.startswith((".", "/", "~")):
            raise UserError(f"CLIP model folder {path} does not exist")
        try:
            self.model = CLIPModel.from_pretrained(path).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(path)
        except OSError as exc:
            raise UserError(
                f"CLIP model {path!r} could not be loaded ({type(exc).__name__}); on a machine with network run "
                f"`hf download {path}` (e.g. openai/clip-vit-large-patch14) and pass the local folder"
            ) from exc
        self.device = device

    def score(self, images: list[Image.Image], prompts: list[str], batch_size: int = 16) -> list[float]:
        out: list[float] = []
        max_len = self.model.config.text_config.max_position_embeddings
        for i in range(0, len(images), batch_size):
            inputs = self.processor(
                text=prompts[i : i + batch_size], images=[im.convert("RGB") for im in images[i : i + batch_size]],
                return_tensors="pt", padding=True, truncation=True, max_length=max_len,
            )  # fmt: skip
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                res = self.model(**inputs)
            img = torch.nn.functional.normalize(res.image_embeds.float(), dim=-1)
            txt = torch.nn.functional.normalize(res.text_embeds.float(), dim=-1)
            cos = (img * txt).sum(-1).clamp(min=0)
            out.extend((100.0 * cos).tolist())
        return out
