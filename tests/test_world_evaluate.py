"""Concept signatures, per-weight summaries with drift, and `lora-kit grid --score world` on the shipped world."""

from __future__ import annotations

import json

import pytest

from lora_kit.errors import UserError
from lora_kit.infer.defaults import SAMPLING_FILE, sampling_defaults
from lora_kit.world.concepts import CONCEPTS
from lora_kit.world.evaluate import (
    ConceptSpec, check_targets, guess_trigger, label_rows, learn_concept, learn_concept_from_folder, parse_concept,
    prompt_labels, summarize,
)  # fmt: skip
from lora_kit.world.score import score_image
from lora_kit.world.shapes import Scene, generate, render


def test_parse_concept():
    assert parse_concept("shape=hexagon") == ConceptSpec(shape="hexagon")
    assert parse_concept("shape=other, vertices=7") == ConceptSpec(shape="other", vertices=7)
    spec = parse_concept("orientation=vertical+horizontal,period=16")
    assert spec == ConceptSpec(fill="periodic", orientation=("horizontal", "vertical"), period=16.0)
    for bad in ("shape=moon", "colour=red", "period=wide", "fill=stripy", ""):
        with pytest.raises(UserError):
            parse_concept(bad)


def test_concepts_are_learned_from_training_images_of_any_shape_or_fill():
    """A subject's images share a shape, a style's a texture; the shipped sets and ones nobody tuned on."""
    assert learn_concept_from_folder("builtin:shapes-star") == ConceptSpec(shape="star")
    stripes = learn_concept_from_folder("builtin:shapes-stripes")
    assert (stripes.shape, stripes.fill, stripes.orientation) == (None, "periodic", ("/",)) and 10 < stripes.period < 12.6
    records = [score_image(im).record() for im, _, _ in generate(20, seed=4, shapes=["hexagon"])]
    assert learn_concept(records) == ConceptSpec(shape="hexagon")
    records = [score_image(im).record() for im, _, _ in generate(20, seed=4, shapes=["circle", "square", "triangle", "diamond"], fills=["checker"])]
    checker = learn_concept(records)
    assert (checker.shape, checker.orientation) == (None, ("/", "\\")) and 10 < checker.period < 12.6
    with pytest.raises(UserError, match="share no shape or texture"):
        learn_concept([score_image(im).record() for im, _, _ in generate(20, seed=4)])  # four shapes, all solid


def test_prompt_labels_and_trigger_guess():
    assert prompt_labels("a red ohwx star on a white background") == {"shape": "star", "color": "red", "background": "white"}
    assert prompt_labels("an orange zyk circle on a light blue background")["background"] == "light blue"
    assert prompt_labels("a photo of a cat") == {"shape": None, "color": None, "background": None}
    assert guess_trigger(["a red ohwx star on a white background", "a red circle on a white background"]) == "ohwx"
    with pytest.raises(UserError, match="--trigger"):
        guess_trigger(["a red circle on a white background"])


def _rows(weight: float, scenes: list[Scene], prompts: list[str]) -> list[dict]:
    return label_rows([render(s) for s in scenes], prompts, [weight] * len(scenes), "ohwx", ConceptSpec(shape="star"))


def test_summary_measures_bleed_and_drift_against_weight_zero():
    """Pictures built to be what a LoRA might draw: at weight 1 the plain prompts' circles come out as stars
    (bleed) or half-size (area drift); the summary must say so, in numbers."""
    plain = ["a red circle on a white background"] * 4
    trig = ["a red ohwx star on a white background"] * 2
    circle = Scene("circle", "red", "white", 40, (32, 32), 64, 64)
    small = Scene("circle", "red", "white", 28, (32, 32), 64, 64)
    star = Scene("star", "red", "white", 44, (32, 34), 64, 64)
    rows = _rows(0.0, [circle] * 4 + [circle] * 2, plain + trig)
    rows += _rows(1.0, [star, small, small, small] + [star] * 2, plain + trig)
    s = summarize(rows)
    assert s[0.0]["concept"] == 0.0 and s[1.0]["concept"] == 1.0
    assert s[1.0]["bleed"] == 0.25 and s[1.0]["shape"] == 0.75 and s[1.0]["color"] == 1.0
    assert s[1.0]["drift"]["shape"] == -0.25 and s[0.0]["drift"]["area_ratio"] == 1.0
    assert 0.45 < s[1.0]["drift"]["area_ratio"] < 0.55  # three circles of 28 px (0.49x) and a star, against circles of 40 px
    targets = check_targets(s)
    assert targets["concept at weight 1 >= 90 %"] and targets["concept at weight 0 <= 5 %"]
    assert not targets["bleed <= 10 %"] and not targets["shape accuracy drop < 10 points"] and not targets["area within +-25 %"]
    assert targets["colour error growth < 15 RGB"]
    assert check_targets({1.0: s[1.0]}) is None


def test_sampling_defaults_are_carried_by_the_model(tmp_path):
    assert sampling_defaults("builtin:tiny-world") == {"cfg": 5.0, "steps": 20, "sampler": "DPM++ 2M"}
    assert sampling_defaults("builtin:tiny-sd15")["cfg"] == 7.0 and sampling_defaults("org/some-model")["cfg"] == 7.0
    folder = tmp_path / "model"
    folder.mkdir()
    assert sampling_defaults(str(folder))["cfg"] == 7.0
    (folder / SAMPLING_FILE).write_text(json.dumps({"cfg": 3.5, "sampler": "Euler a"}))
    assert sampling_defaults(str(folder)) == {"cfg": 3.5, "steps": 20, "sampler": "Euler a"}
    (folder / SAMPLING_FILE).write_text(json.dumps({"guidance": 3}))
    with pytest.raises(UserError, match="unknown key"):
        sampling_defaults(str(folder))


def test_grid_scores_the_world(tmp_path, capsys):
    """`lora-kit grid --score world` on the shipped world with a random LoRA: every cell labelled, a summary
    per weight, the world's CFG 5 used by default, and a bad --concept refused before anything renders."""
    from lora_kit.cli import main
    from lora_kit.infer.pipeline import LoraPipeline
    from lora_kit.infer.synthetic import write_random_lora
    from lora_kit.world.assets import shipped_model_dir

    if shipped_model_dir("tiny-world") is None:
        pytest.skip("the tiny-world weights are not shipped in this install")
    pipe = LoraPipeline.load("builtin:tiny-world")
    lora = write_random_lora(tmp_path / "noise.safetensors", pipe.pipe.unet, rank=2, seed=3, std=0.05)
    out = tmp_path / "grid"
    argv = ["grid", "--model", "builtin:tiny-world", "--lora", str(lora), "--prompt", "a red ohwx star on a white background",
            "--prompt", "a blue square on a grey background", "--seed", "1", "--steps", "8", "--size", "64",
            "--x", "weight=0,1", "--out", str(out), "--score", "world"]  # fmt: skip
    assert main([*argv, "--concept", "shape=moon"]) == 2 and not out.exists()
    assert main([*argv, "--concept-from", "builtin:shapes-star"]) == 0
    text = capsys.readouterr().out
    assert "concept = shape=star on prompts with 'ohwx'" in text and "targets at weight 1" in text
    scores = json.loads((out / "scores.json").read_text())
    assert scores["trigger"] == "ohwx" and scores["concept"] == {"shape": "star"}
    assert len(scores["cells"]) == 4 and {c["file"] for c in scores["cells"]} == {f"cells/{i:03d}.png" for i in range(4)}
    (group,) = scores["groups"]
    assert sorted(group["summary"]) == ["0.0", "1.0"] and group["summary"]["0.0"]["n"] == 2
    base = [c for c in scores["cells"] if c["weight"] == 0.0 and not c["trigger"]]
    assert all(c["shape_ok"] and c["color_ok"] for c in base), base  # the base draws "a blue square" at 8 steps, CFG 5
    manifest = json.loads((out / "grid.json").read_text())
    assert {c["params"]["cfg"] for c in manifest["cells"]} == {5.0}


def test_training_samples_use_the_models_defaults_unless_set():
    from lora_kit.config.schema import SampleConfig
    from lora_kit.train.sampling import training_grid_spec

    world = sampling_defaults("builtin:tiny-world")
    spec = training_grid_spec(SampleConfig(prompts=["a red circle on a white background"]), (64, 64), defaults=world)
    assert (spec.base.cfg, spec.base.steps, spec.base.sampler) == (5.0, 20, "DPM++ 2M")
    spec = training_grid_spec(SampleConfig(prompts=["x"], cfg=8.0, steps=4, sampler="euler_a"), (64, 64), defaults=world)
    assert (spec.base.cfg, spec.base.steps, spec.base.sampler) == (8.0, 4, "euler_a")
    assert training_grid_spec(SampleConfig(prompts=["x"]), (64, 64)).base.cfg == 7.0  # any other model: as before
    from lora_kit.config.load import recipe_from_dict

    with pytest.raises(UserError, match=r"\[sample\] steps/cfg"):
        recipe_from_dict({"dataset": {"path": "x"}, "sample": {"cfg": -1.0}})
