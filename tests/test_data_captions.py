"""Caption transforms: exact strings under a seed, keep_tokens, dropouts, trigger word, fallbacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lora_kit.config.schema import DatasetConfig
from lora_kit.data.captions import CaptionTransform, caption_rng, strip_trigger

CAP = "star, red, on white, outline, centered"


def test_shuffle_with_keep_tokens_and_trigger_exact():
    t = CaptionTransform(DatasetConfig(trigger_word="sks", shuffle_tags=True, keep_tokens=1))
    assert [t(CAP, None, caption_rng(42, 0, i)) for i in range(3)] == [
        "sks, star, red, on white, outline, centered",
        "sks, star, red, outline, on white, centered",
        "sks, star, outline, red, on white, centered",
    ]
    assert t(CAP, None, caption_rng(42, 1, 0)) == "sks, star, centered, outline, red, on white"
    assert not t.is_static


def test_same_seed_epoch_index_same_caption_in_another_process():
    code = (
        "from lora_kit.config.schema import DatasetConfig;"
        "from lora_kit.data.captions import CaptionTransform, caption_rng;"
        "t = CaptionTransform(DatasetConfig(shuffle_tags=True, tag_dropout=0.2));"
        f"print(t({CAP!r}, None, caption_rng(5, 3, 17)))"
    )
    # a different PYTHONHASHSEED: the caption RNG must not depend on the per-process hash()
    repo = Path(__file__).resolve().parent.parent
    env_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(repo))
    t = CaptionTransform(DatasetConfig(shuffle_tags=True, tag_dropout=0.2))
    assert env_out.stdout.strip() == t(CAP, None, caption_rng(5, 3, 17))


def test_tag_dropout_exact_and_never_drops_kept_tokens():
    t = CaptionTransform(DatasetConfig(tag_dropout=0.5))
    assert [t(CAP, None, caption_rng(42, 0, i)) for i in range(3)] == [
        "star, on white", "on white, outline, centered", "star, outline, centered",
    ]
    always = CaptionTransform(DatasetConfig(trigger_word="sks", keep_tokens=2, tag_dropout=1.0, shuffle_tags=True))
    for i in range(20):
        assert always(CAP, None, caption_rng(0, 0, i)) == "sks, star, red"


def test_caption_dropout_exact_and_independent_of_shuffle_draws():
    t = CaptionTransform(DatasetConfig(caption_dropout=0.5, trigger_word="sks"))
    got = [t(CAP, None, caption_rng(42, 0, i)) for i in range(6)]
    full = "sks, star, red, on white, outline, centered"
    assert got == ["", full, "", "", full, full]
    assert CaptionTransform(DatasetConfig(caption_dropout=1.0, trigger_word="sks"))(CAP, "x", caption_rng(0, 0, 0)) == ""
    # turning caption dropout on does not reshuffle the captions it keeps
    plain = CaptionTransform(DatasetConfig(shuffle_tags=True))
    drop = CaptionTransform(DatasetConfig(shuffle_tags=True, caption_dropout=0.3))
    for i in range(30):
        out = drop(CAP, None, caption_rng(9, 2, i))
        assert out == "" or out == plain(CAP, None, caption_rng(9, 2, i))


def test_trigger_word_kept_first_never_duplicated():
    t = CaptionTransform(DatasetConfig(trigger_word="sks"))
    rng = caption_rng(1, 0, 0)
    assert t("red, sks, blue", None, rng) == "sks, red, blue"
    assert t("red, SKS star, blue", None, rng) == "SKS star, red, blue"  # the tag holding it moves first
    assert t("a photo of a sks star on white", None, rng) == "a photo of a sks star on white"
    assert t("a photo of a star", None, rng) == "sks, a photo of a star"
    assert t("asks, red", None, rng) == "sks, asks, red"  # a substring of another word is not the trigger
    shuffled = CaptionTransform(DatasetConfig(trigger_word="sks", shuffle_tags=True))
    for i in range(20):
        assert shuffled("red, blue, sks, green", None, caption_rng(3, 0, i)).startswith("sks, ")


def test_missing_caption_falls_back_to_class_tokens_then_trigger():
    t = CaptionTransform(DatasetConfig(trigger_word="sks"))
    rng = caption_rng(0, 0, 0)
    assert t(None, "star", rng) == "sks, star"
    assert t("", "star", rng) == "sks, star"
    assert t(None, None, rng) == "sks"
    assert CaptionTransform(DatasetConfig())(None, None, rng) == ""
    assert CaptionTransform(DatasetConfig())(None, "a star", rng) == "a star"


def test_separator_and_is_static():
    t = CaptionTransform(DatasetConfig(tag_separator="|", trigger_word="sks"))
    assert t("red|blue", None, caption_rng(0, 0, 0)) == "sks| red| blue"
    assert CaptionTransform(DatasetConfig(trigger_word="sks", keep_tokens=3)).is_static
    assert not CaptionTransform(DatasetConfig(tag_dropout=0.1)).is_static
    assert not CaptionTransform(DatasetConfig(caption_dropout=0.1)).is_static
    assert CaptionTransform(DatasetConfig(shuffle_tags=True, caption_dropout=0.5), augment=False).is_static


def test_strip_trigger_removes_the_word_wherever_it_stands():
    assert strip_trigger("a red zyk circle on a white background", "zyk") == "a red circle on a white background"
    assert strip_trigger("zyk, a red circle", "zyk") == "a red circle"
    assert strip_trigger("ohwx star, red", "ohwx") == "star, red"
    assert strip_trigger("a red circle, zyk", "zyk") == "a red circle"
    assert strip_trigger("Zyk style, a red circle", "zyk") == "style, a red circle"  # any case, as put_trigger_first
    assert strip_trigger("zyk", "zyk") == "" and strip_trigger("", "zyk") == ""
    # whole words only: a word that merely contains the trigger stays
    assert strip_trigger("zykado, a star", "zyk") == "zykado, a star"
    assert strip_trigger("star|sks dog|red", "sks dog", separator="|") == "star| red"  # tags joined as join_tags does
    assert strip_trigger("a red circle", "zyk") == "a red circle"  # no trigger in it: unchanged
    assert strip_trigger("a red zyk circle", "") == "a red zyk circle"

