"""Caption priors (dataset.reg_from_captions): each concept caption minus the trigger, rendered by the base,
cached per picture, joined to the user's own reg_path, on the real tiny pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lora_kit.config.load import load_recipe
from lora_kit.config.schema import DatasetConfig
from lora_kit.data.caption_priors import build_view, caption_jobs, view_entries
from lora_kit.data.class_images import RenderJob
from lora_kit.data.sources import scan_dataset
from lora_kit.errors import UserError
from train_utils import run_training

SETTINGS = {"steps": 20, "cfg": 7.0, "sampler": "DPM++ 2M", "model": "0123456789abcdef"}


def _image(path: Path, size, caption: str | None, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def _concept(root: Path) -> Path:
    """Three distinct captions once stripped (one without the trigger: the trigger is only prefixed), a
    duplicate of one, a caption that is only the trigger, two buckets."""
    sub = root / "2_zyk"
    _image(sub / "a.png", (64, 64), "a red zyk circle on a white background")
    _image(sub / "b.png", (64, 64), "a red zyk circle on a white background")  # same caption and bucket
    _image(sub / "c.png", (80, 48), "zyk, a blue square", (30, 30, 200))
    _image(sub / "d.png", (64, 64), "a green star", (30, 200, 30))
    _image(sub / "e.png", (64, 64), "zyk", (90, 90, 90))
    return root


def _own_reg(root: Path) -> Path:
    _image(root / "1_shape" / "s0.png", (64, 64), "a grey triangle", (120, 120, 120))
    _image(root / "1_shape" / "s1.png", (64, 64), "a black circle", (10, 10, 10))
    _image(root / "loose.png", (64, 64), None, (250, 250, 0))  # root level: reg_class_tokens applies
    return root


def _over(concept: Path, *extra: str) -> list[str]:
    return [f'dataset.path="{concept}"', 'dataset.trigger_word="zyk"', "dataset.reg_from_captions=2", "train.max_steps=2", *extra]


STRIPPED = {("a red circle on a white background", 64, 64), ("a blue square", 80, 48), ("a green star", 64, 64)}


def test_jobs_one_per_distinct_caption_bucket_and_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_KIT_CACHE", str(tmp_path / "cache"))
    r = load_recipe("tiny-smoke", _over(_concept(tmp_path / "concept")))
    jobs = caption_jobs(r, SETTINGS)
    assert {(j.prompt, j.width, j.height) for j in jobs} == STRIPPED
    assert sorted(j.seed for j in jobs) == [r.seed, r.seed, r.seed, r.seed + 1, r.seed + 1, r.seed + 1]
    assert len({j.png for j in jobs}) == 6  # one file per picture
    # the key holds the model: another base gets other pictures, the same one the same names
    assert {j.png for j in caption_jobs(r, {**SETTINGS, "model": "fedcba9876543210"})}.isdisjoint({j.png for j in jobs})
    assert [j.png for j in caption_jobs(r, SETTINGS)] == [j.png for j in jobs]


def test_unreadable_concept_file_is_left_to_the_trainer_to_warn_about(tmp_path, monkeypatch, caplog):
    """The priors look at the concept set before the trainer scans it: a bad file is counted, not warned about
    twice (the trainer's scan warns once)."""
    monkeypatch.setenv("LORA_KIT_CACHE", str(tmp_path / "cache"))
    concept = _concept(tmp_path / "concept")
    (concept / "2_zyk" / "broken.png").write_bytes(b"not a png")
    r = load_recipe("tiny-smoke", _over(concept))
    with caplog.at_level("WARNING"):
        assert len(caption_jobs(r, SETTINGS)) == 6
        assert not [m for m in caplog.messages if "broken.png" in m]
        assert scan_dataset(r.dataset).skipped.count == 1  # the trainer's scan
        assert len([m for m in caplog.messages if "skipping unreadable image broken.png" in m]) == 1


def test_view_mirrors_a_reg_root_named_like_a_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_KIT_CACHE", str(tmp_path / "cache"))
    own = tmp_path / "3_dog"  # a root named N_name is a subset itself: it must stay one in the view
    _image(own / "x.png", (64, 64), "a dog")
    _image(own / "1_captions" / "y.png", (64, 64), "a cat")  # nested: no clash with the view's own subset
    pics = tmp_path / "pics"
    _image(pics / "k.png", (64, 64), "a red circle")
    jobs = [RenderJob("a red circle", 64, 64, 0, pics / "k.png")]
    entries = view_entries(jobs, 1, str(own))
    assert set(entries) == {"3_dog/x.png", "3_dog/x.txt", "3_dog/1_captions/y.png", "3_dog/1_captions/y.txt",
                            "1_captions/k.png", "1_captions/k.txt"}  # fmt: skip
    view = build_view(entries)
    assert (view / "3_dog" / "x.png").is_symlink() and (view / "3_dog").is_dir() and not (view / "3_dog").is_symlink()
    assert build_view(entries) == view  # made once
    # the scanner reads the view as it reads the user's folder: the root's repeats stay with its images
    records = scan_dataset(DatasetConfig(reg_path=str(view)), reg=True).records
    assert {(Path(r.path).name, r.repeats, r.caption) for r in records} == {
        ("x.png", 3, "a dog"), ("y.png", 3, "a cat"), ("k.png", 1, "a red circle")}  # fmt: skip
    # a subset of the user's that already has the name: the pictures go to another
    _image(own / "1_captions" / "z.png", (64, 64), "a cow")
    entries = view_entries(jobs, 1, str(tmp_path / "3_dog" / "1_captions"))
    assert "1_captions/z.png" in entries and "1_captions 2/k.png" in entries


def _view_subset(cache: Path) -> Path:
    (view,) = (cache / "class_images" / "views").glob("captions-*/1_captions")
    return view


def _pictures(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / "class_images" / "captions").iterdir()}


def test_caption_priors_rendered_once_and_joined_to_reg_path(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORA_KIT_CACHE", str(cache))
    concept = _concept(tmp_path / "concept")
    t = run_training(tmp_path / "a", _over(concept))
    subset = _view_subset(cache)
    pngs = sorted(subset.glob("*.png"))
    assert len(pngs) == 6 and all(p.is_symlink() for p in pngs)
    got = sorted(((p.with_suffix(".txt").read_text().strip(), *Image.open(p).size) for p in pngs))
    assert got == sorted(list(STRIPPED) * 2)  # one picture per caption x reg_from_captions, at its bucket
    assert t.data.data.stats.num_reg_images == 6 and t.data.data.stats.num_train_images == 10
    assert not any("zyk" in p.with_suffix(".txt").read_text() for p in pngs)
    stamps = _pictures(cache)
    assert len(stamps) == 12  # .png + .txt per picture
    # A second run renders nothing: the same files, untouched.
    run_training(tmp_path / "b", _over(concept))
    assert _pictures(cache) == stamps
    # With a reg folder of the user's: both are the reg set, and still nothing is rendered.
    own = _own_reg(tmp_path / "own")
    t = run_training(tmp_path / "c", _over(concept, f'dataset.reg_path="{own}"', 'dataset.reg_class_tokens="a yellow square"'))
    assert _pictures(cache) == stamps
    stats = t.data.data.stats
    assert stats.num_reg_images == 6 + 3
    assert {k: v["img_count"] for k, v in stats.reg_folders.items()} == {"1_captions": 6, "1_shape": 2, _root_key(cache): 1}


def _root_key(cache: Path) -> str:
    """The folder key of images at the view's root: the view's own name (layout.concept_of)."""
    (view,) = [p for p in (cache / "class_images" / "views").glob("captions-*") if (p / "loose.png").exists()]
    return view.name


def test_caption_prior_keys_are_checked():
    base = ["dataset.path=builtin:shapes-star"]
    for bad, key, msg in (
        (["dataset.reg_from_captions=-1"], "reg_from_captions", "expected 0"),
        (["dataset.reg_from_captions=2"], "reg_from_captions", "needs \\[dataset\\] trigger_word: the word taken out of each caption"),
        (["dataset.reg_from_captions=2", "dataset.trigger_word=ohwx", 'dataset.reg_prompt="a star"', "dataset.reg_count=2"],
         "reg_from_captions", "reg_prompt / reg_from_captions"),
        (["dataset.reg_from_captions=2", "dataset.trigger_word=ohwx", "loss.prior_loss_weight=0"], "prior_loss_weight", "reg_from_captions"),
        (["dataset.reg_from_captions=2", "dataset.trigger_word=ohwx", "dataset.kind=imagefolder"], "kind", "auto"),
    ):  # fmt: skip
        with pytest.raises(UserError, match=rf"\[\w+\] {key}: .*{msg}"):
            load_recipe("tiny-smoke", base + bad)
    r = load_recipe("tiny-smoke", base + ["dataset.reg_from_captions=2", "dataset.trigger_word=ohwx", "dataset.reg_path=builtin:shapes-world"])
    assert r.dataset.reg_from_captions == 2  # with a reg_path of your own: allowed


def test_only_trigger_captions_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_KIT_CACHE", str(tmp_path / "cache"))
    _image(tmp_path / "concept" / "1_x" / "a.png", (64, 64), "zyk")
    with pytest.raises(UserError, match="reg_from_captions: every concept caption is only the trigger word"):
        run_training(tmp_path / "a", _over(tmp_path / "concept"))
    assert not os.path.exists(tmp_path / "cache" / "class_images" / "views")
