"""Prompt encoding for training, the way the diffusers pipelines do it at inference.

Training must condition the U-Net exactly as inference will, so this mirrors diffusers'
`StableDiffusionPipeline.encode_prompt` (SD1/SD2) and `StableDiffusionXLPipeline.encode_prompt` (SDXL:
penultimate hidden states of both encoders concatenated, pooled output of the second). It is written out
here because the pipelines' encode_prompt needs a whole pipeline object and wraps everything in no_grad,
while training a text-encoder LoRA needs gradients through the encoder.

clip_skip uses kohya's convention: 1 = last layer, 2 = penultimate. (diffusers' pipelines count one less.)
"""

from __future__ import annotations

import torch


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def sd_prompt_embeds(text_encoder, ids: torch.Tensor, clip_skip: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SD1/SD2 conditioning: CLIP layer -clip_skip (kohya/A1111 numbering) + the final layer norm.

    diffusers applies the final layer norm to a skipped layer's output; so do we. transformers 5 moved
    `final_layer_norm` from `text_model` onto the CLIPTextModel itself; both layouts are accepted.
    """
    if clip_skip <= 1:
        return text_encoder(ids, attention_mask=attention_mask)[0]
    out = text_encoder(ids, attention_mask=attention_mask, output_hidden_states=True)
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return norm(out.hidden_states[-clip_skip])


def encode_prompts(text_encoders: list, tokenizers: list, captions: list[str], *, sdxl: bool, clip_skip: int = 1, device=None) -> dict[str, torch.Tensor]:
    """Batched conditioning: {"prompt_embeds"} for SD1/2, plus {"pooled_prompt_embeds"} for SDXL."""
    device = device or text_encoders[0].device
    if not sdxl:
        ids = tokenize(tokenizers[0], captions).to(device)
        return {"prompt_embeds": sd_prompt_embeds(text_encoders[0], ids, clip_skip)}
    embeds, pooled = [], None
    for tok, te in zip(tokenizers, text_encoders):
        out = te(tokenize(tok, captions).to(device), output_hidden_states=True)
        pooled = out[0]  # the last encoder's (text_encoder_2) projected pooled output wins, as in diffusers
        # SDXL always uses the penultimate layer; clip_skip counts further back from there.
        embeds.append(out.hidden_states[-(clip_skip + 1)])
    return {"prompt_embeds": torch.cat(embeds, dim=-1), "pooled_prompt_embeds": pooled}


def sdxl_time_ids(original_size, crop_top_left, target_size, dtype=torch.float32) -> torch.Tensor:
    """SDXL micro-conditioning per sample: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    Arguments are (B, 2) tensors or lists of pairs, all in (height, width) / (top, left) order.
    """
    o = torch.as_tensor(original_size, dtype=dtype)
    c = torch.as_tensor(crop_top_left, dtype=dtype)
    t = torch.as_tensor(target_size, dtype=dtype)
    return torch.cat([o.reshape(-1, 2), c.reshape(-1, 2), t.reshape(-1, 2)], dim=1)
