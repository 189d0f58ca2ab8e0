"""`lora-kit demo`: the whole job offline on the embedded tiny world, with numbers at the end.

caption (template captioner, existing captions kept) -> bucket -> cache -> train a LoRA (recipes/demo-*.toml)
-> kohya + diffusers files -> grid (prompts x seeds rows, LoRA weight 0 / 0.5 / 1 columns, plus a ControlNet
column when the tiny ControlNet is shipped) -> the scorers of lora_kit.world.score say how often the concept
appears at each weight, and how the base's shape/colour accuracy holds on prompts without the trigger word.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

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


def add_arguments(p) -> None:
    p.add_argument("--style", action="store_true", help="learn the stripes style instead of the star subject")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the recipe's)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per prompt in the grid (5: a rate over 20 images, one image = 5 points)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the demo recipe (repeatable), e.g. --set optimizer.lr=5e-4")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run: 2 training steps, 1 seed, 2 sampling steps, 2 prompts")


def _prepare_data(dataset: str, trigger: str, out: Path) -> tuple[Path, str]:
    """Copy the shipped concept images into the run and caption any image that has no caption."""
    from lora_kit.captioning import CaptionOptions, caption_dataset, create_captioner
    from lora_kit.paths import datasets_dir

    data = out / "data"
    shutil.copytree(datasets_dir() / dataset, data)
    captioner = create_captioner("template", template=f"{trigger} {{class}}")
    report = caption_dataset(data, captioner, CaptionOptions(progress=False))
    return data, f"{report.captioned} captioned, {report.skipped_existing} already had captions"


def _train(recipe: str, data: Path, out: Path, steps: int, extra: list[str]):
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer

    overrides = [f'dataset.path="{data}"', f'output_dir="{out / "run"}"', *extra]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    r = load_recipe(recipe, overrides)
    t = LoraTrainer(r)
    t.setup()
    t.train()
    files = t.save()
    t.cleanup()
    return r, files


def _grid(model: str, lora: Path, prompts: list[str], seeds: int, steps: int, out: Path, control: tuple | None):
    from lora_kit.infer.grid import render_grid
    from lora_kit.infer.spec import Axis, CellParams, ControlRef, GridSpec, LoraRef

    base = CellParams(prompt=prompts[0], seed=0, steps=steps, cfg=5.0, sampler="DPM++ 2M", width=64, height=64,
                      loras=[LoraRef(path=str(lora), weight=1.0, name=lora.stem)])
    cols = [Axis("weight", WEIGHTS, target=lora.stem, labels=[f"LoRA {w:g}" for w in WEIGHTS])]
    if control:
        base.controls = [ControlRef(model=control[0], image=str(control[1]), scale=0.0)]
        cols.append(Axis("control_scale", [0.0, 1.0], target="0", labels=["no CN", "ControlNet"]))
    spec = GridSpec(model=model, base=base, rows=[Axis("prompt", prompts), Axis("seed", list(range(seeds)))], cols=cols,
                    fuse=True, batch_size=seeds)
    return render_grid(spec, out, overwrite=True)


def _score_cells(result, concept: str) -> list[dict]:
    """Per cell (without ControlNet): weight, trigger prompt or not, concept seen, shape and colour right."""
    from PIL import Image

    from lora_kit.world.score import score_image

    rows = []
    for cell in result.manifest["cells"]:
        if any(k.startswith("control_scale") and v for k, v in cell["axes"].items()):
            continue
        prompt = cell["params"]["prompt"]
        words = prompt.replace(",", " ").split()
        s = score_image(Image.open(result.out_dir / cell["file"]))
        shape = next((w for w in ("star", "circle", "square", "triangle", "diamond") if w in words), None)
        rows.append({
            "weight": float(cell["params"]["loras"][0]["weight"]),
            "trigger": any(t in words for t in ("ohwx", "zyk")),
            "concept": s.striped if concept == "style" else s.shape == "star",
            "shape": s.shape == shape,
            "color": s.color == words[1],
        })
    return rows


def summarize(rows: list[dict]) -> dict:
    """{weight: {"concept": rate on trigger prompts, "shape"/"color": accuracy on prompts without it,
    "bleed": the concept seen on prompts without the trigger (a LoRA should keep it to its trigger)}}."""
    def rate(group: list[dict], key: str) -> float:
        return sum(r[key] for r in group) / max(1, len(group))

    out = {}
    for w in sorted({r["weight"] for r in rows}):
        trig = [r for r in rows if r["weight"] == w and r["trigger"]]
        plain = [r for r in rows if r["weight"] == w and not r["trigger"]]
        out[w] = {"concept": rate(trig, "concept"), "shape": rate(plain, "shape"), "color": rate(plain, "color"),
                  "bleed": rate(plain, "concept"), "n": len(trig) + len(plain)}
    return out


def _control_image(out: Path, concept: str) -> tuple[str, Path] | None:
    """The tiny ControlNet (when shipped) and the edge map of a world scene, to pin the layout.

    The edges are what the ControlNet was trained on (lora_kit.world.model.scene_edges: the outline of
    the scene's silhouette), so the layout column shows the shape the LoRA should fill in."""
    from lora_kit.world.assets import shipped_controlnet_dir
    from lora_kit.world.model import scene_edges
    from lora_kit.world.shapes import Scene

    cn = shipped_controlnet_dir()
    if cn is None:
        return None
    scene = Scene("star" if concept == "subject" else "circle", "red", "white", 40, (32, 32), 64, 64)
    path = out / "control.png"
    scene_edges(scene).convert("RGB").save(path)
    return str(cn), path


def run(args) -> int:
    from lora_kit.errors import UserError
    from lora_kit.world.assets import shipped_model_dir

    t0 = time.perf_counter()
    concept = "style" if args.style else "subject"
    recipe, dataset, trigger, prompts = CONCEPTS[concept]
    out = Path(args.out) / concept
    if out.exists():
        if not args.overwrite:
            raise UserError(f"{out} exists; pass --overwrite to replace it (or --out elsewhere)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    plain = PLAIN_PROMPTS
    if args.quick:
        args.steps, args.seeds, args.sample_steps, prompts, plain = 2, 1, 2, prompts[:1], plain[:1]
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
    rates = summarize(_score_cells(grid, concept))
    _report(rates, concept, out, time.perf_counter() - t0)
    return 0


def _report(rates: dict, concept: str, out: Path, seconds: float) -> None:
    from lora_kit.utils import atomic_write_json

    what = "striped fill" if concept == "style" else "star shape"
    print(f"[4/4] scores   concept = {what} on prompts with the trigger word; shape/colour = accuracy on prompts without it;")
    print(f"               bleed = {what} on prompts without it")
    print("  weight  concept  shape  colour  bleed  images")
    for w, v in rates.items():
        print(f"  {w:6.1f}  {v['concept']:7.0%}  {v['shape']:5.0%}  {v['color']:6.0%}  {v['bleed']:5.0%}  {v['n']:6d}")
    atomic_write_json(out / "scores.json", {str(w): v for w, v in rates.items()})
    print(f"done in {seconds:.0f} s; everything is under {out}")
