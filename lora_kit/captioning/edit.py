"""Caption editing rules: a pure function from a tag list to a tag list.

The same rules run after every captioner and alone on existing captions (`lora-kit caption --edit`),
so a dataset captioned by hand, by BLIP or by a WD14 tagger is shaped the same way. Order matters and
is fixed (see `edit_tags`); the trigger word goes in front last, so no other rule can remove it and it
lands where kohya's `keep_tokens = 1` keeps it during caption shuffling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

from lora_kit.data.tags import split_tags
from lora_kit.errors import UserError


@dataclass(frozen=True)
class EditRules:
    """What to do to a caption's tags. The defaults only remove duplicates.

    trigger: tag(s) put first (comma-separated for several), e.g. "sks star".
    remove / replace: whole tags, compared case-insensitively ("1girl" removes "1girl" and "1Girl").
    remove_regex: a tag is dropped when a pattern matches it whole (re.fullmatch).
    replace_regex: re.sub on every tag; a tag that becomes empty is dropped.
    sort_by_confidence: highest score first, when the captioner gives scores (taggers, clip-tags).
    max_tags: keep the first N tags after all other rules; the trigger is not counted.
    underscores_to_spaces: "long_hair" -> "long hair"; tags of 3 characters or fewer are kept because
        they are emoticons in booru vocabularies ("^_^"), as kohya's tagger does.
    """

    trigger: str = ""
    remove: tuple[str, ...] = ()
    remove_regex: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    replace_regex: tuple[tuple[str, str], ...] = ()
    deduplicate: bool = True
    sort_by_confidence: bool = False
    max_tags: int | None = None
    underscores_to_spaces: bool = False
    lowercase: bool = False

    def __post_init__(self) -> None:
        for pattern in [*self.remove_regex, *(p for p, _ in self.replace_regex)]:
            _compile(pattern)  # fail at configuration time, not on image 5,000
        if self.max_tags is not None and self.max_tags < 0:
            raise UserError(f"max tags must be >= 0, got {self.max_tags}")

    @property
    def trigger_tags(self) -> list[str]:
        return split_tags(self.trigger)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(f"bad regular expression {pattern!r}: {exc}") from None


def _sorted_by_score(tags: list[str], scores: Sequence[float] | None) -> list[str]:
    if scores is None:
        return tags
    if len(scores) != len(tags):
        raise ValueError(f"{len(scores)} scores for {len(tags)} tags")
    order = sorted(range(len(tags)), key=lambda i: -float(scores[i]))  # stable: ties keep their order
    return [tags[i] for i in order]


def _rewrite(tag: str, rules: EditRules, replacements: dict[str, str]) -> str:
    tag = tag.strip()
    if rules.underscores_to_spaces and len(tag) > 3:
        tag = tag.replace("_", " ")
    if rules.lowercase:
        tag = tag.lower()
    tag = replacements.get(tag.casefold(), tag)
    for pattern, repl in rules.replace_regex:
        tag = _compile(pattern).sub(repl, tag)
    return tag.strip()


def _removed(tag: str, rules: EditRules, removed: set[str]) -> bool:
    return tag.casefold() in removed or any(_compile(p).fullmatch(tag) for p in rules.remove_regex)


def edit_tags(tags: Sequence[str], rules: EditRules, scores: Sequence[float] | None = None) -> list[str]:
    """Apply `rules` to `tags` (scores, if given, align with tags). Pure: inputs are not modified.

    Order: sort by confidence -> underscores -> lower-case -> replace -> replace_regex -> remove ->
    remove_regex -> deduplicate -> max_tags -> trigger in front.
    """
    out = _sorted_by_score(list(tags), scores if rules.sort_by_confidence else None)
    replacements = {old.strip().casefold(): new.strip() for old, new in rules.replace}
    removed = {t.strip().casefold() for t in rules.remove}
    triggers = rules.trigger_tags
    trigger_keys = {t.casefold() for t in triggers}
    body: list[str] = []
    seen: set[str] = set()
    for tag in out:
        tag = _rewrite(tag, rules, replacements)
        if not tag or _removed(tag, rules, removed):
            continue
        key = tag.casefold()
        if key in trigger_keys:
            continue  # the trigger is re-added in front; never twice
        if rules.deduplicate and key in seen:
            continue
        seen.add(key)
        body.append(tag)
    if rules.max_tags is not None:
        body = body[: rules.max_tags]
    return triggers + body


def merge_tags(existing: Sequence[str], new: Sequence[str], rules: EditRules) -> list[str]:
    """Append mode: existing tags first, then the new ones, rules applied to the whole.

    Duplicates are always removed here so that appending the same caption twice (a resumed run)
    changes nothing.
    """
    merge_rules = replace(rules, sort_by_confidence=False, deduplicate=True)
    return edit_tags([*existing, *new], merge_rules)
