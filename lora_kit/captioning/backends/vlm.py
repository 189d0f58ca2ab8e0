"""Captions from any transformers image-to-text / image-text-to-text model (BLIP, BLIP-2, GIT, Florence-2,
chat VLMs), batched, on the GPU when there is one.

AutoProcessor + AutoModelForImageTextToText cover all of them in transformers 5 (AutoModelForVision2Seq
was folded into it). We call `generate` directly rather than the pipeline API to control batching and
to cut the prompt out of the answer: decoder-only models echo it, BLIP-1 echoes it with its first token
swapped, encoder-decoders do not.
"""

from __future__ import annotations

import re
from typing import ClassVar, Sequence

from lora_kit.captioning.base import Caption
from lora_kit.captioning.loading import load_pretrained, pick_device, pick_dtype
from lora_kit.captioning.scan import ImageItem

DEFAULT_CHAT_PROMPT = "Describe this image in one sentence."


def _model_class():
    import transformers  # lazy: optional model backend; `template`/`tagger` captioning never loads transformers

    # transformers < 5 names it AutoModelForVision2Seq; both load BLIP/GIT/Florence-2.
    return getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq


class TransformersCaptioner:
    """`model`: a local folder or a Hub id. `prompt`: a prefix (BLIP "a photo of"), a task token
    (Florence-2 "<MORE_DETAILED_CAPTION>") or, for chat models, the question asked about the image."""

    name: ClassVar[str] = "transformers"
    default_model: ClassVar[str] = "Salesforce/blip-image-captioning-base"

    def __init__(self, model: str = default_model, prompt: str = "", max_new_tokens: int = 40, num_beams: int = 3,
                 device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False):
        from transformers import AutoProcessor  # lazy: optional model backend, created on demand

        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)
        remote = {"trust_remote_code": True} if trust_remote_code else {}
        self.processor = load_pretrained(AutoProcessor.from_pretrained, model, "captioning processor", **remote)
        self.model = load_pretrained(_model_class().from_pretrained, model, "captioning model", dtype=self.dtype, **remote)
        self.model.to(self.device).eval()
        self.decoder_only = not getattr(self.model.config, "is_encoder_decoder", False)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and self.decoder_only:
            tokenizer.padding_side = "left"  # batched generation continues every row from its last token
        self.prompt = prompt
        self.text = self._prompt_text(prompt)

    def _prompt_text(self, prompt: str) -> str | None:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt or DEFAULT_CHAT_PROMPT}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt or None

    def _inputs(self, images: Sequence) -> dict:
        import torch  # lazy: torch only once this model backend is created

        kwargs = {"images": list(images), "return_tensors": "pt"}
        if self.text:
            kwargs.update(text=[self.text] * len(images), padding=True)
        batch = self.processor(**kwargs)
        return {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def generate(self, images: Sequence) -> list[str]:
        import torch  # lazy: torch only once this model backend is created

        inputs = self._inputs(images)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                      do_sample=False)
        ids = inputs.get("input_ids")
        if ids is not None and out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]
        return [self._clean(t) for t in self.processor.batch_decode(out, skip_special_tokens=True)]

    def _clean(self, text: str) -> str:
        text = re.sub(r"\s+", " ", text).strip()
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt):].strip()
        return text

    def caption(self, items: Sequence[ImageItem], images: Sequence) -> list[Caption]:
        return [Caption(text=t) for t in self.generate(images)]
