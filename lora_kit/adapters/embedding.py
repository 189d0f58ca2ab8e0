"""The trigger word's trained token embedding (pivotal tuning), as a textual-inversion file.

Layout: `embeddings/<trigger>.safetensors` beside the LoRA file, named after the word so that A1111 (which
calls an embedding by its file name) reads it from its embeddings folder as the prompt's own trigger word;
ComfyUI takes it as `embedding:<trigger>`, diffusers as `pipe.load_textual_inversion(file, token=trigger)`.
The LoRA's metadata (`lora_kit.embedding`: token and relative file) ties the two: lora-kit's grid loads the
embedding whenever it loads the LoRA, so pictures show what the trained pair draws.

peft trains it as "trainable tokens" beside the text encoder's LoRA: the adapter's state dict holds the new
rows under `...token_embedding.token_adapter.trainable_tokens_delta` (the full vectors, not a difference).
No LoRA format carries an input embedding that diffusers and ComfyUI load with the LoRA (A1111 alone reads
kohya's `bundle_emb.*` keys; diffusers' kohya reader refuses unknown keys), so it is split off the LoRA and
written in the embedding format all three read: `emb_params` [n_vectors, dim] for SD1/SD2, `clip_l` and
`clip_g` for SDXL (A1111's and ComfyUI's SDXL embeddings; diffusers' `load_textual_inversion` reads both).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_kit.errors import UserError
from lora_kit.utils import atomic_write

TOKENS_KEY = "token_adapter.trainable_tokens_delta"
EMBEDDING_KEY = "lora_kit.embedding"  # LoRA metadata: {"token": trigger word, "file": path relative to the LoRA}


def embedding_file_name(trigger: str, suffix: str = "") -> str:
    """`embeddings/<trigger><suffix>.safetensors`; characters a file name cannot hold become '_'."""
    return f"embeddings/{re.sub(r'[^A-Za-z0-9_.-]', '_', trigger)}{suffix}.safetensors"


def trigger_token_ids(tokenizer, word: str) -> tuple[int, ...]:
    """The ids CLIP's tokenizer gives `word` in a caption (one for a single-token trigger)."""
    return tuple(tokenizer(word, add_special_tokens=False).input_ids)


def split_trigger_embedding(te_sds: list[dict]) -> tuple[list[dict], list[torch.Tensor]]:
    """(the text encoders' LoRA state dicts without the trained token rows, those rows per text encoder)."""
    rest, rows = [], []
    for sd in te_sds:
        keys = [k for k in sd if k.endswith(TOKENS_KEY)]
        rest.append({k: v for k, v in sd.items() if k not in keys})
        rows.extend(sd[k].detach().float().cpu().clone() for k in keys)
    return rest, rows


def embedding_state_dict(rows: list[torch.Tensor]) -> dict:
    """The textual-inversion layout: one text encoder `emb_params`, two (SDXL) `clip_l` + `clip_g`."""
    if len(rows) == 1:
        return {"emb_params": rows[0].contiguous()}
    if len(rows) == 2:
        return {"clip_l": rows[0].contiguous(), "clip_g": rows[1].contiguous()}
    raise ValueError(f"expected token rows of one or two text encoders, got {len(rows)}")


def write_trigger_embedding(path: str | Path, rows: list[torch.Tensor], trigger: str) -> Path:
    sd = embedding_state_dict(rows)
    meta = {"trigger_word": trigger, "format": "textual_inversion"}
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))


def read_trigger_embedding(path: str | Path) -> list[torch.Tensor]:
    """Rows per text encoder, in the order the pipeline holds them (clip_l first)."""
    sd = load_file(str(path))
    if "emb_params" in sd:
        return [sd["emb_params"]]
    if "clip_l" in sd and "clip_g" in sd:
        return [sd["clip_l"], sd["clip_g"]]
    raise ValueError(f"{path}: not a textual-inversion file (expected emb_params, or clip_l and clip_g)")


def set_token_rows(text_encoders: list, tokenizer, word: str, rows: list[torch.Tensor]) -> None:
    """Write `rows` into the trigger's embedding rows of each text encoder (the word keeps its token ids)."""
    ids = list(trigger_token_ids(tokenizer, word))
    for te, r in zip(text_encoders, rows):
        if r.shape[0] != len(ids):
            raise ValueError(f"the embedding has {r.shape[0]} vectors, the trigger {word!r} {len(ids)} tokens")
        emb = te.get_input_embeddings()
        with torch.no_grad():
            emb.weight[ids] = r.to(device=emb.weight.device, dtype=emb.weight.dtype)


def embedding_of_lora(path: str | Path) -> tuple[str, list[torch.Tensor]] | None:
    """(trigger word, rows) of the embedding a LoRA file was trained with, or None when it has none."""
    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if EMBEDDING_KEY not in meta:
        return None
    info = json.loads(meta[EMBEDDING_KEY])
    emb = path.parent / info["file"]
    if not emb.is_file():
        raise UserError(f"{path.name} was trained with its trigger word's embedding {info['file']}, which is not "
                        f"beside it ({emb.parent} holds no {emb.name}): copy it there to render the LoRA as trained")
    return info["token"], read_trigger_embedding(emb)


class TokenRows:
    """Puts trained trigger rows into a pipeline's text encoders and takes them out again (the base rows are
    kept the first time a token is touched), so a LoRA's weight-0 cell renders the exact base."""

    def __init__(self):
        self._base: dict[tuple[int, int], torch.Tensor] = {}

    def apply(self, text_encoders: list, tokenizer, embeddings: list[tuple[str, list[torch.Tensor]]]) -> None:
        with torch.no_grad():
            for (i, tid), row in self._base.items():
                text_encoders[i].get_input_embeddings().weight[tid] = row
        owner: dict[int, int] = {}
        for k, (word, rows) in enumerate(embeddings):
            for tid in trigger_token_ids(tokenizer, word):
                if owner.setdefault(tid, k) != k:
                    raise UserError(f"two LoRAs bring an embedding for the trigger word {word!r} (or a token of it); "
                                    "render them in separate cells")
                for i, te in enumerate(text_encoders):
                    self._base.setdefault((i, tid), te.get_input_embeddings().weight[tid].detach().clone())
            set_token_rows(text_encoders, tokenizer, word, rows)
