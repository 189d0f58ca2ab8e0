"""`lora-kit caption --help` states each backend's defaults as the backends define them (one source)."""

from __future__ import annotations

import inspect

from lora_kit.captioning.backends.clip_tags import ClipTagsCaptioner
from lora_kit.captioning.backends.vlm import TransformersCaptioner
from lora_kit.captioning.backends.wd14 import TaggerCaptioner
from lora_kit.cli import build_parser


def test_caption_help_defaults_come_from_the_backends():
    parser = build_parser("caption")
    sub = next(a for a in parser._actions if a.dest == "command").choices["caption"]
    helps = {a.dest: a.help for a in sub._actions}
    for dest, cls in (("max_new_tokens", TransformersCaptioner), ("num_beams", TransformersCaptioner),
                      ("general_threshold", TaggerCaptioner), ("character_threshold", TaggerCaptioner),
                      ("clip_template", ClipTagsCaptioner)):
        default = inspect.signature(cls.__init__).parameters[dest].default
        assert f"default {default})" in helps[dest] or f'default "{default}")' in helps[dest], (dest, helps[dest])
