"""Zero-shot tags: the user's vocabulary (one tag per line) ranked by CLIP image-text similarity.

Each tag becomes a prompt ("a photo of {tag}"); its text embedding is computed once, and every image
keeps its top-k tags and/or those whose cosine similarity reaches a threshold, best first, with the
similarity as the tag's score.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

from lora_kit.captioning.base import Caption
from lora_kit.captioning.loading import load_pretrained, pick_device, pick_dtype
from lora_kit.captioning.scan import ImageItem
from lora_kit.errors import UserError

TEXT_CHUNK = 256  # vocabulary prompts encoded per forward pass


def read_vocabulary(path: str | Path) -> list[str]:
    """One tag per line; blank lines and `#` comments ignored; duplicates dropped (first kept)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"tag vocabulary file not found: {p}")
    tags = [line.split("#", 1)[0].strip() for line in p.read_text(encoding="utf-8").splitlines()]
    tags = list(dict.fromkeys(t for t in tags if t))
    if not tags:
        raise UserError(f"tag vocabulary {p} is empty")
    return tags


def _features(out):
    import torch  # lazy: the caption command imports every backend; torch loads only for a model backend in use

    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipTagsCaptioner:
    name: ClassVar[str] = "clip-tags"
    default_model: ClassVar[str] = "openai/clip-vit-large-patch14"

    def __init__(self, vocab: str | None = None, model: str = default_model, top_k: int | None = None,
                 threshold: float | None = None, clip_template: str = "a photo of {tag}",
                 device: str | None = None, dtype: str | None = None):
        from transformers import AutoProcessor, CLIPModel  # lazy: optional model backend, created on demand

        if vocab is None:
            raise UserError("the clip-tags captioner needs a vocabulary file: --vocab tags.txt (one tag per line)")
        if "{tag}" not in clip_template:
            raise UserError(f"the CLIP prompt template must contain {{tag}}: {clip_template!r}")
        self.tags = read_vocabulary(vocab)
        self.top_k = int(top_k) if top_k is not None else (None if threshold is not None else 5)
        self.threshold = None if threshold is None else float(threshold)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.processor = load_pretrained(AutoProcessor.from_pretrained, model, "CLIP processor")
        self.model = load_pretrained(CLIPModel.from_pretrained, model, "CLIP model", dtype=self.dtype)
        self.model.to(self.device).eval()
        self.text_embeds = self._encode_text([clip_template.format(tag=t) for t in self.tags])

    def _encode_text(self, prompts: list[str]):
        import torch  # lazy: torch only once this model backend is created

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(prompts), TEXT_CHUNK):
                batch = self.processor(text=prompts[i : i + TEXT_CHUNK], return_tensors="pt", padding=True,
                                       truncation=True)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                chunks.append(_features(self.model.get_text_features(**batch)).float())
        emb = torch.cat(chunks)
        return emb / emb.norm(dim=-1, keepdim=True)

    def similarities(self, images: Sequence):
        """(n_images, n_tags) cosine similarities."""
        import torch  # lazy: torch only once this model backend is created

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            emb = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return (emb @ self.text_embeds.T).cpu()

    def caption(self, items: Sequence[ImageItem], images: Sequence) -> list[Caption]:
        out = []
        for row in self.similarities(images):
            order = row.argsort(descending=True).tolist()
            if self.threshold is not None:
                order = [i for i in order if row[i] >= self.threshold]
            if self.top_k is not None:
                order = order[: self.top_k]
            out.append(Caption(tags=[self.tags[i] for i in order], scores=[float(row[i]) for i in order]))
        return out
