"""Captioners that read no pixels: a format string, or the words of the file name.

They are the quickest way to a trigger-word-only or class-token dataset (kohya DreamBooth style) and
the base that a tagger's output is often appended to.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import ClassVar, Sequence

from lora_kit.captioning.base import Caption
from lora_kit.captioning.scan import ImageItem
from lora_kit.errors import UserError

TEMPLATE_FIELDS = ("trigger", "class", "folder", "stem", "words", "repeats")
_WORD = re.compile(r"[^\W\d_]+")  # letters only: digits, underscores, dashes, dots are separators


def words_from_stem(stem: str) -> str:
    """"red_circle_01" -> "red circle"; "IMG-2024.10 (2)" -> "IMG"."""
    return " ".join(_WORD.findall(stem))


@dataclass
class TemplateCaptioner:
    """`template.format(trigger=..., class=..., folder=..., stem=..., words=..., repeats=...)`.

    class: kohya class tokens of an `N_name` folder ("10_sks star" -> "sks star"), "" elsewhere;
    folder: the folder name without the repeat prefix; stem: the file name without extension;
    words: the stem's words (as the filename captioner gives them); repeats: N (1 elsewhere).
    Empty fields leave no stray separators: the caption is split into tags and re-joined.
    """

    template: str = "{trigger}, {class}"
    trigger: str = ""
    name: ClassVar[str] = "template"

    def __post_init__(self) -> None:
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise UserError(f"bad caption template {self.template!r}: {exc}") from None
        unknown = sorted(used - set(TEMPLATE_FIELDS))
        if unknown:
            raise UserError(f"unknown template field(s) {unknown} in {self.template!r}; "
                            f"use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")

    def render(self, item: ImageItem) -> str:
        fields = {"trigger": self.trigger, "class": item.class_tokens or "", "folder": item.parent_folder, "stem": item.stem,
                  "words": words_from_stem(item.stem), "repeats": item.repeats}
        return self.template.format(**fields)

    def caption(self, items: Sequence[ImageItem], images: Sequence) -> list[Caption]:
        return [Caption(text=self.render(item)) for item in items]


@dataclass
class FilenameCaptioner:
    """The words of the file name as one tag: `red_circle_01.png` -> "red circle"."""

    name: ClassVar[str] = "filename"

    def caption(self, items: Sequence[ImageItem], images: Sequence) -> list[Caption]:
        return [Caption(tags=[w] if (w := words_from_stem(item.stem)) else []) for item in items]
