"""One dataset layout for training and captioning: what `caption` writes is what training reads."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from PIL import Image

from lora_kit.captioning import CaptionOptions, EditRules, caption_dataset, create_captioner
from lora_kit.captioning.scan import scan_dataset as caption_scan
from lora_kit.config.schema import BucketConfig, DatasetConfig, Recipe
from lora_kit.data.captions import CaptionTransform
from lora_kit.data.dataset import build_train_data
from lora_kit.data.layout import decode_text, first_line, parse_kohya_folder
from lora_kit.data.sources import scan_dataset

QUIET = dict(progress=False)


def _img(path: Path, size=(48, 32), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "set"
    _img(root / "10_sks star" / "a.png")
    _img(root / "10_sks star" / "deep" / "b.png")
    _img(root / "3_" / "c.png")  # kohya "3_": 3 repeats, no class tokens
    _img(root / "plain" / "d.png")
    _img(root / "e.png")
    _img(root / "0_off" / "z.png")  # 0 repeats: neither captioned nor trained
    (root / "10_sks star" / "a.caption").write_text("kept caption\nline two\n", encoding="utf-8")
    return root


def _by_rel(records) -> dict:
    return {r.rel: r for r in records}


def test_kohya_folder_names_follow_kohya():
    assert parse_kohya_folder("10_sks dog") == (10, "sks dog")
    assert parse_kohya_folder("10_") == (10, "")  # kohya: "_".join(tokens[1:]) of "10_" is ""
    assert parse_kohya_folder("1_a_b") == (1, "a_b")
    assert parse_kohya_folder("dogs") == (None, "dogs")


def test_caption_and_training_see_the_same_images_and_concepts(tree):
    train = _by_rel(scan_dataset(DatasetConfig(path=str(tree), class_tokens="thing")).records)
    cap = _by_rel(caption_scan(tree))
    assert list(train) == list(cap) == ["e.png", "10_sks star/a.png", "10_sks star/deep/b.png", "3_/c.png", "plain/d.png"]
    for rel, r in cap.items():
        assert (r.repeats, r.folder) == (train[rel].repeats, train[rel].folder), rel
    assert [(train[r].repeats, train[r].class_tokens) for r in train] == [
        (1, "thing"), (10, "sks star"), (10, "sks star"), (3, "thing"), (1, "thing")]
    assert train["10_sks star/a.png"].caption == cap["10_sks star/a.png"].caption == "kept caption"


@pytest.mark.parametrize("output", ["txt", "jsonl"])
def test_what_caption_writes_is_what_training_reads(tree, output):
    cap = create_captioner("template", template="{trigger}, {class}, {words}")
    report = caption_dataset(tree, cap, CaptionOptions(rules=EditRules(trigger="ohwx"), output=output, **QUIET))
    assert report.captioned == 4 and report.skipped_existing == 1  # a.png keeps its .caption file
    records = _by_rel(scan_dataset(DatasetConfig(path=str(tree))).records)
    assert scan_dataset(DatasetConfig(path=str(tree))).kind == ("imagefolder" if output == "jsonl" else "folder")
    for rel, text in report.captions.items():
        assert records[rel].caption == text, rel
    assert records["10_sks star/deep/b.png"].caption == "ohwx, sks star, b"
    # the N_name repeats survive the switch to metadata.jsonl: the trainer sees the same concepts
    assert {rel: r.repeats for rel, r in records.items()} == {
        "e.png": 1, "10_sks star/a.png": 10, "10_sks star/deep/b.png": 10, "3_/c.png": 3, "plain/d.png": 1}
    assert records["10_sks star/a.png"].caption == "kept caption"  # jsonl: copied from its sidecar
    assert not (tree / "0_off" / "z.txt").exists()


def test_rewriting_a_sidecar_replaces_its_caption_line_and_keeps_the_rest(tree):
    sidecar = tree / "e.txt"
    sidecar.write_text("\nold caption\nwildcard alternative\n", encoding="utf-8")
    caption_dataset(tree, create_captioner("filename"), CaptionOptions(mode="overwrite", **QUIET))
    assert sidecar.read_text(encoding="utf-8") == "e\nwildcard alternative\n"
    assert _by_rel(scan_dataset(DatasetConfig(path=str(tree))).records)["e.png"].caption == "e"


def test_existing_caption_of_the_other_extension_counts_in_skip_mode(tree):
    # a.png has only a.caption: the trainer reads it with caption_extension ".txt", so the captioner keeps it
    report = caption_dataset(tree, create_captioner("filename"), CaptionOptions(**QUIET))
    assert "10_sks star/a.png" not in report.captions and not (tree / "10_sks star" / "a.txt").exists()


def test_root_named_like_a_kohya_folder_uses_its_repeats(tmp_path):
    root = tmp_path / "5_ohwx dog"
    _img(root / "a.png")
    _img(root / "2_cat" / "b.png")
    train = _by_rel(scan_dataset(DatasetConfig(path=str(root), repeats=1)).records)
    cap = _by_rel(caption_scan(root))
    assert [(r.repeats, r.class_tokens) for r in train.values()] == [(5, "ohwx dog"), (2, "cat")]
    assert [(r.repeats, r.class_tokens) for r in cap.values()] == [(5, "ohwx dog"), (2, "cat")]


@pytest.mark.parametrize("data, text, warns", [
    ("café, ünï".encode("utf-8"), "café, ünï", False),
    ("\ufeffcafé".encode("utf-8"), "café", False),
    ("café, red".encode("cp1252"), "café, red", True),
    ("\ufeffcafé, red".encode("utf-16-le"), "café, red", False),  # Notepad "Unicode"
    ("café, red".encode("utf-16-le"), "café, red", True),  # no BOM
    (b"red\x00, star", "red, star", True),
])
def test_caption_text_decoding(data, text, warns, caplog):
    with caplog.at_level(logging.WARNING):
        assert decode_text(data, "x.txt") == text
    assert ("x.txt" in caplog.text) is warns


def test_first_line_rule():
    assert first_line("\n  red, star  \nsecond\n") == "red, star"
    assert first_line(" \n\n") is None


def _reg_recipe(tmp_path: Path, **dataset) -> Recipe:
    _img(tmp_path / "concept" / "10_star" / "s.png", (64, 64))
    (tmp_path / "concept" / "10_star" / "s.txt").write_text("a red star", encoding="utf-8")
    _img(tmp_path / "prior" / "r.png", (64, 64), (0, 0, 200))
    (tmp_path / "prior" / "r.txt").write_text("a blue square", encoding="utf-8")
    _img(tmp_path / "prior" / "q.png", (64, 64), (0, 200, 0))  # no sidecar: reg_class_tokens
    ds = DatasetConfig(path=str(tmp_path / "concept"), reg_path=str(tmp_path / "prior"), trigger_word="zyk",
                       reg_class_tokens="a shape", **dataset)
    return Recipe(dataset=ds, buckets=BucketConfig(resolution=64, bucket_reso_steps=16, min_bucket_reso=32,
                                                   max_bucket_reso=128))


def test_trigger_word_goes_to_concept_images_only(tmp_path):
    data = build_train_data(_reg_recipe(tmp_path))
    ds = data.dataset
    by_reg = {}
    for i in range(len(ds)):
        item = ds[i]
        by_reg.setdefault(item["is_reg"], set()).add(item["caption"])
    assert by_reg[False] == {"zyk, a red star"}
    assert by_reg[True] == {"a blue square", "a shape"}  # prior images keep their own captions
    # the text-embedding cache builds its keys with the same rule (train/data.py)
    static = [ds.transform.for_record(s.record, random.Random(0)) for s in ds.samples]
    assert sorted(set(static)) == ["a blue square", "a shape", "zyk, a red star"]
    assert data.stats.static_captions is True


def test_trigger_rule_with_augmentation(tmp_path):
    t = CaptionTransform(DatasetConfig(trigger_word="zyk", shuffle_tags=True, keep_tokens=1))
    rng = random.Random(3)
    reg = {t("a, b, c, d", None, rng, is_reg=True) for _ in range(20)}
    assert all(not c.startswith("zyk") and c.startswith("a, ") for c in reg)  # keep_tokens keeps "a" first
    assert all(t("a, b, c, d", None, rng).startswith("zyk, a, ") for _ in range(20))


def test_jsonl_n_name_folder_gives_repeats(tmp_path):
    root = tmp_path / "hub"
    _img(root / "4_dog" / "a.png")
    _img(root / "imgs" / "b.png")
    rows = [{"file_name": "4_dog/a.png", "text": "a dog"}, {"file_name": "imgs/b.png", "text": "b"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recs = scan_dataset(DatasetConfig(path=str(root), repeats=2)).records
    assert [(r.rel, r.repeats, r.class_tokens, r.folder, r.caption) for r in recs] == [
        ("4_dog/a.png", 4, "dog", "4_dog", "a dog"), ("imgs/b.png", 2, None, "hub", "b")]


def test_text_cache_holds_reg_captions_without_the_trigger(tmp_path):
    """The trainer's text-embedding cache (train/data.py) uses the dataset's caption rule: every caption a
    batch carries is a cache key, and the prior images' keys have no trigger word."""
    from tests.train_utils import run_training

    _reg_recipe(tmp_path)  # writes concept/ and prior/
    t = run_training(tmp_path / "run", [f'dataset.path="{tmp_path / "concept"}"', f'dataset.reg_path="{tmp_path / "prior"}"',
                                        'dataset.trigger_word="zyk"', 'dataset.reg_class_tokens="a shape"',
                                        "train.max_steps=1"])
    assert t.data.text_cached and set(t.data.text_embeds) == {"zyk, a red star", "a blue square", "a shape"}
