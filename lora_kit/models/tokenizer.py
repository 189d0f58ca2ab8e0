"""A real CLIP BPE tokenizer, offline.

transformers' CLIPTokenizer wants vocab.json + merges.txt, which normally come from the Hub. The same
BPE ranks are CLIP's `bpe_simple_vocab_16e6.txt.gz`, shipped with lora-kit (lora_kit/models/assets/,
MIT, copied from the open_clip_torch wheel: see NOTICE.md there); this module turns that file into the
two files CLIPTokenizer reads (the construction is open_clip's SimpleTokenizer, which yields exactly the
49,408-entry vocabulary of openai/clip-vit-large-patch14).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from lora_kit.errors import UserError
from lora_kit.paths import CLIP_BPE_FILE

VOCAB_SIZE = 49408


def bpe_path() -> Path:
    if not CLIP_BPE_FILE.is_file():  # only a broken install lacks it (it is package data)
        raise UserError(f"the CLIP BPE vocabulary {CLIP_BPE_FILE.name} is missing from this lora-kit install; reinstall lora-kit")
    return CLIP_BPE_FILE


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # open_clip SimpleTokenizer: 48,894 merges
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_clip_tokenizer(out_dir: str | Path, model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs) and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), pad_token=pad_token, model_max_length=model_max_length)
    tok.save_pretrained(out)
    return out
