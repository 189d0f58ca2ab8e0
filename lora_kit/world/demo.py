"""`lora-kit demo`: the whole job offline on the embedded tiny world, with numbers at the end.

caption (template captioner, existing captions kept) -> bucket -> cache -> train a LoRA (recipes/demo-*.toml)
-> kohya + diffusers files -> grid (prompts x seeds rows, LoRA weight 0 / 0.5 / 1 columns, plus a ControlNet
column when the tiny ControlNet is shipped) -> lora_kit.world.evaluate (the code behind `lora-kit grid --score
world`) learns the concept's signature from the training images, says how often it appears at each weight,
and how the base holds on prompts without the trigger word: bleed, shape / colour accuracy, colour error
and area against weight 0, with the issue-19 targets marked met or missed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from lora_kit.captioning import CaptionOptions, caption_dataset, create_captioner
from lora_kit.config.checks import check_recipe
from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError
from lora_kit.infer.defaults import sampling_defaults
from lora_kit.infer.grid import render_grid
from lora_kit.infer.spec import Axis, CellParams, ControlRef, GridSpec, LoraRef
from lora_kit.paths import datasets_dir
from lora_kit.train.recipe import LoraTrainer
from lora_kit.utils import TMP_SUFFIX, atomic_write_json, nearest_existing
from lora_kit.world.assets import shipped_controlnet_dir, shipped_model_dir
from lora_kit.world.evaluate import format_summary, learn_concept_from_folder
from lora_kit.world.grid_score import score_grid
from lora_kit.world.model import scene_edges
from lora_kit.world.shapes import Scene

CONCEPTS = {
    # name: (recipe, dataset, trigger, prompts with the trigger, what the scorer checks)
    # The trigger prompts are written like the dataset's captions (lora_kit.world.concepts.Concept.caption),
    # as a user prompts a LoRA with the words it was trained on.
    "subject": ("demo-subject", "shapes-star", "ohwx", ["a red ohwx star on a white background", "a blue ohwx star on a grey background",
                                                         "a yellow ohwx star on a black background", "a green ohwx star on a white background"]),
    "style": ("demo-style", "shapes-stripes", "zyk", ["a red zyk circle on a white background", "a blue zyk square on a grey background",
                                                       "a purple zyk triangle on a white background", "an orange zyk circle on a black background"]),
}
PLAIN_PROMPTS = ["a red circle on a white background", "a blue square on a grey background",
                 "a green triangle on a white background", "a yellow circle on a black background"]
WEIGHTS = [0.0, 0.5, 1.0]
DEMO_ENTRIES = {"data", "run", "grid", "control.png", "scores.json"}  # what run() writes in OUT/<concept>


def _prepare_data(dataset: str, trigger: str, out: Path) -> tuple[Path, str]:
    """Copy the shipped concept images into the run and caption any image that has no caption."""
    data = out / "data"
    shutil.copytree(datasets_dir() / dataset, data)
    captioner = create_captioner("template", template=f"{trigger} {{class}}")
    report = caption_dataset(data, captioner, CaptionOptions(progress=False))
    return data, f"{report.captioned} captioned, {report.skipped_existing} already had captions"


def demo_recipe(recipe: str, data: Path, out: Path, steps: int, extra: list[str]):
    """The shipped recipe with the user's --set overrides, then the demo's own values as typed fields (a
    path is a value, not TOML text to quote: issue 17), checked again."""
    r = load_recipe(recipe, extra)
    r = dataclasses.replace(r, output_dir=str(out / "run"), dataset=dataclasses.replace(r.dataset, path=str(data)))
    if steps:
        r = dataclasses.replace(r, train=dataclasses.replace(r.train, max_steps=int(steps)))
    check_recipe(r)
    return r


def _train(recipe: str, data: Path, out: Path, steps: int, extra: list[str]):
    r = demo_recipe(recipe, data, out, steps, extra)
    t = LoraTrainer(r)
    t.setup()
    t.train()
    files = t.save()
    t.cleanup()
    return r, files


def _grid(model: str, lora: Path, prompts: list[str], seeds: int, steps: int, out: Path, control: tuple | None):
    defaults = sampling_defaults(model)  # the world's CFG 5 and DPM++ 2M
    base = CellParams(prompt=prompts[0], seed=0, steps=steps, cfg=defaults["cfg"], sampler=defaults["sampler"], width=64, height=64,
                      loras=[LoraRef(path=str(lora), weight=1.0, name=lora.stem)])
    cols = [Axis("weight", WEIGHTS, target=lora.stem, labels=[f"LoRA {w:g}" for w in WEIGHTS])]
    if control:
        base.controls = [ControlRef(model=control[0], image=str(control[1]), scale=0.0)]
        cols.append(Axis("control_scale", [0.0, 1.0], target="0", labels=["no CN", "ControlNet"]))
    spec = GridSpec(model=model, base=base, rows=[Axis("prompt", prompts), Axis("seed", list(range(seeds)))], cols=cols,
                    fuse=True, batch_size=seeds * len(prompts))  # every prompt and seed of a column in one call
    return render_grid(spec, out, overwrite=True)


def score_demo(grid, trigger: str, data: Path) -> dict:
    """The grid scored by lora_kit.world.evaluate: the concept learned from the training images in `data`;
    the summary of the cells without ControlNet (the ControlNet columns draw inside a given outline)."""
    concept = learn_concept_from_folder(data)
    scores = score_grid(grid.out_dir, grid.cells, trigger, concept)
    plain = next(g for g in scores["groups"] if not any(v for k, v in g["setting"].items() if k.startswith("control_scale")))
    return {"trigger": trigger, "concept": concept, "summary": plain["summary"], "targets": plain["targets"], "cells": scores["cells"]}


def _control_image(out: Path, concept: str) -> tuple[str, Path] | None:
    """The tiny ControlNet (when shipped) and the edge map of a world scene, to pin the layout.

    The edges are what the ControlNet was trained on (lora_kit.world.model.scene_edges: the outline of
    the scene's silhouette), so the layout column shows the shape the LoRA should fill in."""
    cn = shipped_controlnet_dir()
    if cn is None:
        return None
    scene = Scene("star" if concept == "subject" else "circle", "red", "white", 40, (32, 32), 64, 64)
    path = out / "control.png"
    scene_edges(scene).convert("RGB").save(path)
    return str(cn), path


def _fresh_out(out: Path, overwrite: bool) -> None:
    """An empty `out`; --overwrite removes a previous demo there, never a file or a folder of other files."""
    blocker = nearest_existing(out.parent)
    if not blocker.is_dir():
        raise UserError(f"--out {out.parent}: {blocker} is a file; expected a folder")
    if out.exists():
        if not overwrite:
            raise UserError(f"{out} exists; pass --overwrite to replace it (or --out elsewhere)")
        if not out.is_dir():
            raise UserError(f"{out} is a file; expected the demo's folder (pass another --out)")
        other = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES and not p.name.endswith(TMP_SUFFIX))
        if other:
            raise UserError(f"{out} holds files the demo did not write ({', '.join(other[:3])}); "
                            "--overwrite replaces only a previous demo: pass another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def run(args) -> int:
    t0 = time.perf_counter()
    concept = "style" if args.style else "subject"
    recipe, dataset, trigger, prompts = CONCEPTS[concept]
    out = Path(args.out) / concept
    plain = PLAIN_PROMPTS
    if args.quick:
        args.steps, args.seeds, args.sample_steps, prompts, plain = 2, 1, 2, prompts[:1], plain[:1]
    demo_recipe(recipe, datasets_dir() / dataset, out, args.steps, args.overrides)  # a bad --set fails before OUT is touched
    _fresh_out(out, args.overwrite)
    data, captions = _prepare_data(dataset, trigger, out)
    print(f"[1/4] dataset  {dataset} -> {data} ({captions})")
    r, files = _train(recipe, data, out, args.steps, args.overrides)
    model = r.model.pretrained
    if shipped_model_dir(model.split(":", 1)[-1]) is None:
        print(f"note: {model} is not shipped in this install; trained on the random-init preset (plumbing only)")
    print(f"[2/4] trained  {r.name}: {', '.join(f'{k} {v}' for k, v in files.items())}")
    lora = Path(files.get("kohya") or files["diffusers"])
    grid = _grid(model, lora, prompts + plain, args.seeds, args.sample_steps, out / "grid", _control_image(out, concept))
    print(f"[3/4] grid     {grid.grid_path} (open {grid.html_path} in a browser)")
    _report(score_demo(grid, trigger, data), out, time.perf_counter() - t0)
    return 0


def _report(scores: dict, out: Path, seconds: float) -> None:
    """The summary table, the targets at weight 1 against weight 0, and scores.json."""
    summary, targets = scores["summary"], scores["targets"]
    print("[4/4] scores   " + "\n               ".join(format_summary(summary, scores["concept"], scores["trigger"])))
    if targets:
        for name, ok in targets.items():
            print(f"  {'met   ' if ok else 'MISSED'} {name}")
    data = {"trigger": scores["trigger"], "concept": scores["concept"].to_dict(), "targets": targets,
            "weights": {str(w): v for w, v in summary.items()}, "cells": scores["cells"]}
    atomic_write_json(out / "scores.json", data)
    print(f"done in {seconds:.0f} s; everything is under {out}")
