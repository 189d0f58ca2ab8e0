"""Caption transforms, kohya semantics, all driven by a caller-supplied seeded `random.Random`.

Order (as kohya's `process_caption`): fallback -> whole-caption dropout -> trigger word -> split into
kept / free tags -> shuffle free tags -> tag dropout on free tags -> join with ", ".

Determinism: `caption_rng(seed, epoch, index)` seeds from a string, which Python hashes with SHA-512
(not the per-process `hash()`), so every process and every resumed run draws the same caption for the
same (seed, epoch, index). The dropout draw is made whether or not it fires, so turning caption dropout
on or off does not change the shuffle of the captions it keeps.

Prior (reg) images keep their own captions: the trigger word is the concept's and is never added to a
reg image's caption (as kohya's class images and the diffusers DreamBooth script's class prompt), so
prior preservation shows the model what the class looks like *without* the trigger. The augmentations
(shuffle, keep_tokens, tag and caption dropout) apply to both, as in kohya where they are per-run flags.

Trigger word: kept first and never duplicated. If a tag of the caption already contains it as a word
("sks star"), that tag moves to the front instead of adding the word again; natural-language captions
(one "tag") that mention it are left untouched. `keep_tokens` counts the caption's own tags after the
trigger word, i.e. the trigger is always kept on top of them.
"""

from __future__ import annotations

import random
import re
from typing import Optional

from lora_kit.config.schema import DatasetConfig
from lora_kit.data.tags import join_tags, split_tags


def caption_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG for sample `index` in `epoch`: identical on every process and after a resume."""
    return random.Random(f"caption:{seed}:{epoch}:{index}")


def base_caption(caption: Optional[str], class_tokens: Optional[str]) -> str:
    """The caption file's text, else the class tokens (kohya's fallback), else ""."""
    if caption and caption.strip():
        return caption.strip()
    return (class_tokens or "").strip()


def _word(word: str) -> re.Pattern:
    """`word` as a whole word, any case: how the trigger is found in a caption (tagging tools and users
    capitalise it at a sentence start)."""
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", flags=re.IGNORECASE)


def _contains_word(text: str, word: str) -> bool:
    return _word(word).search(text) is not None


def strip_trigger(caption: str, trigger: str, separator: str = ",") -> str:
    """The caption without the trigger word, wherever it stands (matched as `put_trigger_first` does): the
    words around it closed up, a tag left empty dropped ("zyk, a red circle" -> "a red circle")."""
    trigger = trigger.strip()
    if not trigger:
        return caption.strip()
    pattern = _word(trigger)
    tags = [" ".join(pattern.sub(" ", tag).split()) for tag in split_tags(caption, separator)]
    return join_tags([t for t in tags if t], separator)


def put_trigger_first(tags: list[str], trigger: str) -> tuple[Optional[str], list[str]]:
    """(head tag, remaining tags): the tag holding the trigger word, or the trigger itself when absent."""
    if not trigger:
        return None, tags
    for i, tag in enumerate(tags):
        if _contains_word(tag, trigger):
            return tag, tags[:i] + tags[i + 1:]
    return trigger, tags


class CaptionTransform:
    """`transform(caption, class_tokens, rng) -> str` configured from a recipe's [dataset] section."""

    def __init__(self, cfg: DatasetConfig, augment: bool = True):
        self.trigger = cfg.trigger_word.strip()
        self.separator = cfg.tag_separator or ","
        self.keep_tokens = max(0, cfg.keep_tokens)
        # augment=False: the deterministic caption (validation loss, text-embedding cache).
        self.shuffle = cfg.shuffle_tags and augment
        self.tag_dropout = cfg.tag_dropout if augment else 0.0
        self.caption_dropout = cfg.caption_dropout if augment else 0.0

    @property
    def is_static(self) -> bool:
        """True when a caption never changes between epochs, so its text embedding can be cached."""
        return not self.shuffle and self.tag_dropout == 0 and self.caption_dropout == 0

    def __call__(self, caption: Optional[str], class_tokens: Optional[str], rng: random.Random,
                 is_reg: bool = False) -> str:
        text = base_caption(caption, class_tokens)
        if rng.random() < self.caption_dropout:
            return ""  # the empty prompt trains the unconditional branch used by classifier-free guidance
        head, tags = put_trigger_first(split_tags(text, self.separator), "" if is_reg else self.trigger)
        kept, free = tags[: self.keep_tokens], tags[self.keep_tokens:]
        if self.shuffle:
            rng.shuffle(free)
        if self.tag_dropout > 0:
            free = [t for t in free if rng.random() >= self.tag_dropout]
        out = ([head] if head else []) + kept + free
        return join_tags(out, self.separator)

    def for_record(self, record, rng: random.Random) -> str:
        """The caption of an `ImageRecord` (layout.ImageRecord): the one rule for the dataset and the text cache."""
        return self(record.caption, record.class_tokens, rng, is_reg=record.is_reg)
