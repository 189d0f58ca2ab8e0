"""Caption editing rules and the other pure pieces of the captioner (no models, no files)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_kit.captioning.backends.simple import TemplateCaptioner, words_from_stem
from lora_kit.captioning.backends.wd14 import TagLabel, prepare_wd14, select_tags
from lora_kit.captioning.edit import EditRules, edit_tags, merge_tags
from lora_kit.captioning.scan import make_item, parse_kohya_folder
from lora_kit.errors import UserError

TAGS = ["1girl", "long_hair", "Smile", "smile", "^_^", "blue_eyes", "watermark", "sks", "simple background"]
SCORES = [0.99, 0.60, 0.80, 0.75, 0.40, 0.90, 0.55, 0.30, 0.70]


def test_defaults_only_deduplicate_case_insensitively_keeping_the_first():
    assert edit_tags(TAGS, EditRules()) == [
        "1girl", "long_hair", "Smile", "^_^", "blue_eyes", "watermark", "sks", "simple background"]


def test_fixed_configuration_gives_pinned_output():
    rules = EditRules(
        trigger="sks",
        remove=("watermark",),
        remove_regex=(r"simple\s.*",),
        replace=(("1girl", "one girl"),),
        replace_regex=((r"_eyes$", " eyes"),),
        sort_by_confidence=True,
        max_tags=4,
        underscores_to_spaces=True,
        lowercase=True,
    )
    # sorted: 1girl .99, blue_eyes .90, Smile .80, smile .75, simple bg .70, long_hair .60, watermark .55, ^_^ .40, sks .30
    assert edit_tags(TAGS, rules, SCORES) == ["sks", "one girl", "blue eyes", "smile", "long hair"]


def test_scores_are_ignored_unless_sorting_and_must_align():
    assert edit_tags(["a", "b"], EditRules(), [0.1, 0.9]) == ["a", "b"]
    assert edit_tags(["a", "b"], EditRules(sort_by_confidence=True), [0.1, 0.9]) == ["b", "a"]
    assert edit_tags(["a", "b"], EditRules(sort_by_confidence=True)) == ["a", "b"]  # no scores: order kept
    with pytest.raises(ValueError):
        edit_tags(["a", "b"], EditRules(sort_by_confidence=True), [0.1])


def test_trigger_goes_first_once_and_survives_remove_and_max_tags():
    rules = EditRules(trigger="ohwx, sks star", remove=("ohwx",), max_tags=1)
    assert edit_tags(["red", "sks star", "blue", "OHWX"], rules) == ["ohwx", "sks star", "red"]
    assert edit_tags([], rules) == ["ohwx", "sks star"]


def test_underscores_keep_short_emoticons_and_no_dedupe_keeps_repeats():
    rules = EditRules(underscores_to_spaces=True, deduplicate=False)
    assert edit_tags(["^_^", "long_hair", "long hair", "o_o"], rules) == ["^_^", "long hair", "long hair", "o_o"]


def test_replacement_to_empty_drops_the_tag_and_inputs_are_not_modified():
    tags = ["cat", "dog"]
    assert edit_tags(tags, EditRules(replace=(("Cat", ""),))) == ["dog"]
    assert edit_tags(tags, EditRules(replace_regex=((r"^d.*", ""),))) == ["cat"]
    assert tags == ["cat", "dog"]


def test_edit_is_idempotent_under_the_pinned_rules():
    rules = EditRules(trigger="sks", remove=("watermark",), underscores_to_spaces=True, lowercase=True, max_tags=3)
    once = edit_tags(TAGS, rules)
    assert edit_tags(once, rules) == once


def test_merge_appends_new_tags_and_appending_twice_changes_nothing():
    rules = EditRules(trigger="sks")
    merged = merge_tags(["sks", "red"], ["circle", "red"], rules)
    assert merged == ["sks", "red", "circle"]
    assert merge_tags(merged, ["circle", "red"], rules) == merged
    # a sentence caption without commas is one tag, so it is not appended twice either
    assert merge_tags(["a red circle on white"], ["a red circle on white"], EditRules()) == ["a red circle on white"]


def test_bad_rules_fail_when_configured():
    with pytest.raises(UserError, match="regular expression"):
        EditRules(remove_regex=("(unclosed",))
    with pytest.raises(UserError, match="max tags"):
        EditRules(max_tags=-1)


@pytest.mark.parametrize(
    "name, expected",
    [("10_sks star", (10, "sks star")), ("1_a_b", (1, "a_b")), ("cats", (None, "cats")), ("10sks", (None, "10sks")),
     ("007_x ", (7, "x"))],
)
def test_parse_kohya_folder(name, expected):
    assert parse_kohya_folder(name) == expected


@pytest.mark.parametrize(
    "stem, words",
    [("red_circle_01", "red circle"), ("blue-square.02", "blue square"), ("IMG_2024", "IMG"), ("0001", ""),
     ("café_au lait", "café au lait")],
)
def test_words_from_stem(stem, words):
    assert words_from_stem(stem) == words


def test_template_fields_from_a_kohya_folder(tmp_path):
    item = make_item(tmp_path, tmp_path / "10_sks star" / "red_circle_01.png")
    plain = make_item(tmp_path, tmp_path / "cats" / "a.jpg")
    cap = TemplateCaptioner("{trigger}|{class}|{folder}|{stem}|{words}|{repeats}", trigger="ohwx")
    assert cap.render(item) == "ohwx|sks star|sks star|red_circle_01|red circle|10"
    assert cap.render(plain) == "ohwx||cats|a|a|1"
    nested = make_item(tmp_path / "5_ohwx dog", tmp_path / "5_ohwx dog" / "2_cat" / "x" / "b.png")
    assert (nested.parent_folder, nested.class_tokens, nested.repeats) == ("x", "cat", 2)
    at_root = make_item(tmp_path / "5_ohwx dog", tmp_path / "5_ohwx dog" / "b.png")
    assert (at_root.rel, at_root.parent_folder, at_root.class_tokens, at_root.repeats) == ("b.png", "ohwx dog", "ohwx dog", 5)
    with pytest.raises(UserError, match="unknown template field"):
        TemplateCaptioner("{trigger}, {klass}")


def test_wd14_preprocessing_pads_white_and_flips_to_bgr():
    im = Image.new("RGB", (4, 2), (255, 0, 0))  # wide red image
    arr = prepare_wd14(im, 4)
    assert arr.shape == (4, 4, 3) and arr.dtype == np.float32
    assert arr[0, 0].tolist() == [255.0, 255.0, 255.0]  # top padding row is white
    assert arr[1, 0].tolist() == [0.0, 0.0, 255.0]  # red in BGR order
    assert prepare_wd14(im, 8).shape == (8, 8, 3)


def test_wd14_tag_selection_by_category_threshold():
    labels = [TagLabel("general", 9), TagLabel("explicit", 9), TagLabel("long_hair", 0), TagLabel("smile", 0),
              TagLabel("hatsune_miku", 4), TagLabel("artist_x", 1)]
    probs = np.array([0.2, 0.7, 0.36, 0.34, 0.84, 0.5])
    cap = select_tags(probs, labels, general=0.35, character=0.85, rating=True)
    assert cap.tags == ["explicit", "long_hair", "artist_x"]
    assert cap.scores == pytest.approx([0.7, 0.36, 0.5])
    assert select_tags(probs, labels, 0.35, 0.80, rating=False).tags == ["long_hair", "hatsune_miku", "artist_x"]
