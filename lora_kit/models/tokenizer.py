"""A real CLIP BPE tokenizer, offline.

transformers' CLIPTokenizer wants vocab.json + merges.txt, which normally come from the Hub. The same
BPE ranks ship inside the open_clip_torch wheel as `bpe_simple_vocab_16e6.txt.gz`; this module turns
that file into the two files CLIPTokenizer reads (the construction is open_clip's SimpleTokenizer, which
yields exactly the 49,408-entry vocabulary of openai/clip-vit-large-patch14).
open_clip is located without importing it (its import pulls torchvision, which we avoid).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from lora_kit.errors import UserError

BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408


def bpe_path() -> Path:
    import importlib.metadata as md

    try:
        p = Path(md.distribution("open_clip_torch").locate_file(BPE_FILE))
    except md.PackageNotFoundError:
        p = None
    if p is None or not p.is_file():
        raise UserError(
            "the CLIP BPE vocabulary is needed to build a tokenizer offline: "
            "pip install --no-deps open_clip_torch (only its vocabulary file is used)"
        )
    return p


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
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), pad_token=pad_token, model_max_length=model_max_length)
    tok.save_pretrained(out)
    return out
