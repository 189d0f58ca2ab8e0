"""Trigger-word advice with the shipped CLIP tokenizer: one rare token is fine, anything else gets alternatives."""

from __future__ import annotations

from lora_kit.data.trigger_words import COMMON_BELOW, default_tokenizer, single_token_alternatives, trigger_word_warnings


def test_rare_single_tokens_pass():
    for word in ("ohwx", "zyk", "sks", ""):
        assert trigger_word_warnings(word) == [], word


def test_split_and_common_words_are_named_with_single_token_alternatives():
    tok = default_tokenizer()
    split = trigger_word_warnings("mystyle")
    assert len(split) == 2 and "2 CLIP tokens (my + style)" in split[0]
    common = trigger_word_warnings("star")
    assert "common CLIP token" in common[0]
    for lines in (split, common):
        names = lines[1].split(": ", 1)[1].split(", ")
        assert len(names) == 3
        for name in names:  # every alternative really is one rare token
            ids = tok(name, add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] >= COMMON_BELOW, name
    assert single_token_alternatives("mystyle") == single_token_alternatives("mystyle")  # deterministic
