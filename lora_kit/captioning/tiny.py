"""A tiny random-init BLIP captioning model, written offline: for tests, benchmarks and demos.

Its captions are seeded noise over a 20-word vocabulary, but it runs every code path of the
transformers backend (AutoProcessor, AutoModelForImageTextToText, batched beam search) in a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

TINY_BLIP_WORDS = "a red blue green circle square star cat on white background photo of the with".split()


def write_tiny_blip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save BlipForConditionalGeneration + BlipProcessor (PIL image processor, BERT word-piece tokenizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BLIP_WORDS]) + "\n")
    tokenizer = BertTokenizer(str(out / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder starts from [DEC]
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    config = BlipConfig(
        vision_config=dict(small, image_size=image_size, patch_size=8),
        text_config=dict(small, vocab_size=len(tokenizer), encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                         sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id),
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(out)
    return out
