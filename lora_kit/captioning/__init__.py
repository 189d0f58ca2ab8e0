"""Dataset captioning: backends by name, caption editing rules, sidecar / metadata.jsonl writers.

    from lora_kit.captioning import CaptionOptions, EditRules, caption_dataset, create_captioner

    captioner = create_captioner("tagger", model="path/to/wd-tagger", general_threshold=0.4)
    report = caption_dataset("img", captioner, CaptionOptions(rules=EditRules(trigger="sks star")))

A new backend is one class with `name` and `caption(items, images) -> list[Caption]`, registered
with `@register("name")`. Nothing here imports torch; model backends import it when created.
"""

from lora_kit.captioning.base import (
    BUILTIN_CAPTIONERS,
    Caption,
    Captioner,
    available_captioners,
    captioner_class,
    create_captioner,
    register,
    unregister,
)
from lora_kit.captioning.edit import EditRules, edit_tags, merge_tags
from lora_kit.captioning.runner import CaptionOptions, CaptionReport, caption_dataset, edit_dataset
from lora_kit.captioning.scan import ImageItem, parse_kohya_folder, scan_dataset

__all__ = [
    "BUILTIN_CAPTIONERS",
    "Caption",
    "CaptionOptions",
    "CaptionReport",
    "Captioner",
    "EditRules",
    "ImageItem",
    "available_captioners",
    "caption_dataset",
    "captioner_class",
    "create_captioner",
    "edit_dataset",
    "edit_tags",
    "merge_tags",
    "parse_kohya_folder",
    "register",
    "scan_dataset",
    "unregister",
]
