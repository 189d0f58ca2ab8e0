"""The captioner protocol and the registry of captioners by name.

A backend is one class with a `name` and a `caption(items, images)` method; `register("name")` makes
it available to `lora-kit caption --captioner name`. Built-in backends are listed by import path and
imported only when chosen, so `template` never pays for torch and `tagger` alone needs onnxruntime.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from lora_kit.data.tags import split_tags
from lora_kit.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from lora_kit.captioning.scan import ImageItem


@dataclass
class Caption:
    """One image's caption: free `text` (split into tags by the dataset's separator) or `tags`.

    `scores` align with `tags` and let the editing rules sort by confidence.
    """

    text: str = ""
    tags: list[str] | None = None
    scores: list[float] | None = None

    def as_tags(self, separator: str = ",") -> list[str]:
        return list(self.tags) if self.tags is not None else split_tags(self.text, separator)


@runtime_checkable
class Captioner(Protocol):
    """Captions a batch of images. `images` are RGB PIL images aligned with `items`."""

    name: str

    def caption(self, items: Sequence["ImageItem"], images: Sequence["Image.Image"]) -> list[Caption]: ...


# name -> "module:Class"; imported on first use.
BUILTIN_CAPTIONERS: dict[str, str] = {
    "template": "lora_kit.captioning.backends.simple:TemplateCaptioner",
    "filename": "lora_kit.captioning.backends.simple:FilenameCaptioner",
    "transformers": "lora_kit.captioning.backends.vlm:TransformersCaptioner",
    "tagger": "lora_kit.captioning.backends.wd14:TaggerCaptioner",
    "clip-tags": "lora_kit.captioning.backends.clip_tags:ClipTagsCaptioner",
}
_REGISTERED: dict[str, Callable[..., Captioner]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `@register("my-captioner")` adds a backend (and overrides a built-in)."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return deco


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def available_captioners() -> list[str]:
    return sorted(set(BUILTIN_CAPTIONERS) | set(_REGISTERED))


def captioner_class(name: str) -> Callable[..., Captioner]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN_CAPTIONERS:
        raise UserError(f"unknown captioner {name!r}; available: {', '.join(available_captioners())}")
    module, attr = BUILTIN_CAPTIONERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create_captioner(name: str, **options: Any) -> Captioner:
    """Build captioner `name` from the options its constructor accepts; others are ignored.

    The CLI passes every backend option it has; each backend takes its own (None means "default").
    The accepted options are kept on the instance as `config`: they identify the run for resume.
    """
    cls = captioner_class(name)
    params = inspect.signature(cls).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if v is not None and (takes_all or k in params)}
    captioner = cls(**kwargs)
    try:
        captioner.config = {k: str(v) for k, v in sorted(kwargs.items())}
    except AttributeError:  # a frozen or slotted class: resume then keys on the name only
        pass
    return captioner
