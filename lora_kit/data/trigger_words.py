"""Is a trigger word a good one for CLIP? One rare token, not a word the model already knows.

DreamBooth's advice (and kohya users' habit: `ohwx`, `sks`) is a trigger that the CLIP BPE tokenizer keeps
as *one* token the text encoder has hardly seen. A made-up word usually splits into several pieces
("mystyle" -> "my" + "style", both ordinary words), so the LoRA has to teach a phrase and the pieces drag
their old meanings along; a common word ("star") already means something, and the LoRA overwrites it
for every prompt that uses it. CLIP's BPE merges are numbered in order of frequency, so a whole-word
token's id says how common it is: below COMMON_BELOW it is an everyday word.

`trigger_word_warnings` returns the warnings (none for a good word) and names single-token alternatives
close to the user's spelling. It reads the tokenizer the model ships (the trainer passes its own);
without one it uses the CLIP BPE shipped with lora-kit (lora_kit.models.tokenizer).
"""

from __future__ import annotations

import difflib
import tempfile
from functools import lru_cache

from transformers import CLIPTokenizer

from lora_kit.models.tokenizer import write_clip_tokenizer
from lora_kit.world.assets import shipped_model_dir

COMMON_BELOW = 20000  # token ids under this are frequent words/pieces: "star" 1565, "dog" 1929; "ohwx" is 47993
RARE_FROM = 35000  # alternatives come from the rarest whole-word tokens (zyk 39112, ohwx 47993, sks 48136)
ALTERNATIVES = 3


@lru_cache(maxsize=1)
def default_tokenizer():
    """The CLIP tokenizer shipped with the tiny world, or one built from lora-kit's offline CLIP BPE."""
    shipped = shipped_model_dir("tiny-world")
    if shipped is not None and (shipped / "tokenizer").is_dir():
        return CLIPTokenizer.from_pretrained(shipped / "tokenizer")
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tempfile.mkdtemp(prefix="lora-kit-tok-")))


def _unwordlike(word: str) -> bool:
    """Spelled unlike English (a rare letter, or no vowel): rare tokens also include words such as "stale"."""
    return any(c in word for c in "qxzjkw") or not any(c in word for c in "aeiouy")


def _rare_words(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    return sorted(t[:-4] for t, i in vocab.items() if i >= RARE_FROM and t.endswith("</w>") and t[:-4].isascii()
                  and t[:-4].isalpha() and 3 <= len(t) - 4 <= 5 and _unwordlike(t[:-4]))  # fmt: skip


def single_token_alternatives(word: str, tokenizer=None, n: int = ALTERNATIVES, avoid: tuple[str, ...] = ()) -> list[str]:
    """`n` rare single-token words spelled closest to `word` (difflib), in a deterministic order."""
    tok = tokenizer or default_tokenizer()
    pool = [w for w in _rare_words(tok) if w not in avoid and w != word.lower()]
    return difflib.get_close_matches(word.lower(), pool, n=n, cutoff=0.0)


def trigger_word_warnings(word: str, tokenizer=None) -> list[str]:
    """One line per problem with `word` as a trigger word; [] when it is a single rare token."""
    word = word.strip()
    if not word:
        return []
    tok = tokenizer or default_tokenizer()
    ids = tok(word, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    problems = []
    if len(ids) > 1:
        shown = " + ".join(p.replace("</w>", "") for p in pieces)
        problems.append(f"trigger word {word!r} is {len(ids)} CLIP tokens ({shown}): the LoRA must teach a phrase whose pieces keep their meanings")
    elif ids and ids[0] < COMMON_BELOW:
        problems.append(f"trigger word {word!r} is a common CLIP token (id {ids[0]}): the LoRA changes what it means in every prompt that uses it")
    if problems:
        alternatives = ", ".join(single_token_alternatives(word, tok))
        problems.append(f"single-token alternatives the model has hardly seen: {alternatives}")
    return problems
