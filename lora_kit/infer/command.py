"""`lora-kit grid`: render a labelled evaluation grid (prompts x LoRA weights x seeds x ...).

Axes use A1111 X/Y/Z-plot thinking with one flag per dimension:

    lora-kit grid --model builtin:tiny-sd15 --lora style.safetensors \\
        --prompt "a star" --prompt "a moon" --x weight=0,0.5,1 --y prompt --out grids/style

`--x`/`--y` take KIND[:TARGET]=VALUES (repeat to nest; the first is outermost). Prompt values are
separated by "|" (prompts contain commas); others by ",". See docs/inference.md.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.infer.axes import discover_checkpoints
from lora_kit.infer.defaults import resolve, sampling_defaults
from lora_kit.infer.render import png_bytes
from lora_kit.infer.spec import AXIS_KINDS, Axis, CellParams, ControlRef, GridSpec, LoraRef
from lora_kit.world.evaluate import format_summary, guess_trigger, learn_concept_from_folder, parse_concept
from lora_kit.world.grid_score import score_grid, write_scores

DEFAULT_WEIGHTS = [0.0, 0.5, 1.0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and LoRAs")
    g.add_argument("--model", default="builtin:tiny-sd15", help="builtin:NAME, diffusers folder, .safetensors checkpoint or Hub id")
    g.add_argument("--single-file-config", default="", help="diffusers folder/hub id describing a single-file checkpoint")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="kohya or diffusers LoRA file (repeat to stack)")
    g = p.add_argument_group("generation")
    g.add_argument("--prompt", action="append", default=[], help="repeat for several prompts (a row axis unless placed)")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--seed", action="append", type=int, default=[], help="repeat for several seeds (a column axis unless placed)")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 20)")
    g.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the model's; 7, builtin:tiny-world 5)")
    g.add_argument("--sampler", default=None, help='A1111 name ("DPM++ 2M Karras", "Euler a"...) or slug (dpm++2m, euler_a); default: the model\'s, DPM++ 2M')
    g.add_argument("--size", default="", help="WIDTHxHEIGHT or N (default: the model's native size)")
    g.add_argument("--clip-skip", type=int, default=1, help="A1111 meaning: 2 = penultimate CLIP layer")
    g.add_argument("--init-image", default="", help="img2img source image")
    g.add_argument("--strength", type=float, default=0.75, help="img2img denoising strength")
    g = p.add_argument_group("ControlNet (repeat --controlnet for several; the other flags per net or once for all)")
    g.add_argument("--controlnet", action="append", default=[], help="ControlNet folder, .safetensors file or Hub id")
    g.add_argument("--control-image", action="append", default=[])
    g.add_argument("--control-preprocess", action="append", default=[], choices=["none", "canny"])
    g.add_argument("--control-scale", action="append", type=float, default=[])
    g.add_argument("--control-start", action="append", type=float, default=[])
    g.add_argument("--control-end", action="append", type=float, default=[])
    g.add_argument("--canny", default="100,200", help="Canny low,high thresholds")
    g = p.add_argument_group("grid")
    kinds = ", ".join(AXIS_KINDS)
    g.add_argument("--x", action="append", default=[], metavar="AXIS", help=f"column axis KIND[:TARGET]=VALUES; kinds: {kinds}")
    g.add_argument("--y", action="append", default=[], metavar="AXIS", help="row axis, same syntax")
    g.add_argument("--no-fuse", action="store_true", help="keep LoRAs unfused (slower; for comparison)")
    g.add_argument("--batch-size", type=int, default=4, help="cells differing only by seed rendered per call")
    g.add_argument("--no-base-distance", action="store_true", help="do not render weight-0 references missing from the grid")
    g.add_argument("--clip-model", default="", help="local CLIP folder (transformers) -> clip_score per cell")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--device", default="auto")
    g.add_argument("--out", required=True, help="output folder (grid.png, grid.html, grid.json, cells/)")
    g.add_argument("--overwrite", action="store_true", help="replace a grid already in --out")
    g.add_argument("--rerender", type=int, default=None, metavar="N", help="re-render cell N of the grid in --out and compare bytes")
    g = p.add_argument_group("scoring (the embedded tiny world: lora_kit.world.evaluate)")
    g.add_argument("--score", choices=["world"], default=None, help="label every cell and summarise per LoRA weight -> scores.json")
    g.add_argument("--trigger", default="", help="the LoRA's trigger word (default: the one prompt word the world does not know)")
    g.add_argument("--concept", default="", metavar="KEY=VALUE,...",
                   help="what the concept looks like: shape=hexagon | shape=other,vertices=7 | fill=periodic,orientation=horizontal,period=16")
    g.add_argument("--concept-from", default="", metavar="DATASET", help="learn the concept's signature from its training images instead")


def parse_size(text: str) -> tuple[int, int]:
    if not text:
        return (0, 0)
    try:
        w, _, h = text.lower().partition("x")
        width, height = int(w), int(h or w)
    except ValueError:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT or N") from None
    problems = CellParams(width=width, height=height).problems()  # the grid's own size rule, checked before the model loads
    if problems:
        raise UserError(f"--size {text!r}: {'; '.join(problems)}")
    return width, height


def parse_lora(text: str) -> LoraRef:
    path, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, weight = head, float(tail)
        except ValueError:
            pass  # a ':' that belongs to the path (Windows drive)
    if not Path(path).is_file():
        raise UserError(f"--lora {path}: file does not exist")
    return LoraRef(path=path, weight=weight)


def parse_axis(text: str, prompts: list[str], seeds: list[int]) -> Axis:
    """KIND[:TARGET][=VALUES]; prompt/seed without values take --prompt/--seed."""
    head, has_values, values = text.partition("=")
    kind, _, target = head.strip().partition(":")
    if kind not in AXIS_KINDS:
        raise UserError(f"axis {text!r}: unknown kind {kind!r}; expected one of {', '.join(AXIS_KINDS)}")
    if not has_values:
        defaults = {"prompt": prompts, "seed": seeds, "weight": DEFAULT_WEIGHTS}
        if kind not in defaults or not defaults[kind]:
            raise UserError(f"axis {text!r}: give values, e.g. {kind}=a,b,c")
        return Axis(kind, list(defaults[kind]), target)
    if kind == "checkpoint":
        return _checkpoint_axis(values, target)
    sep = "|" if kind in ("prompt", "negative_prompt") else ","
    return Axis(kind, [v.strip() for v in values.split(sep)], target)


def _checkpoint_axis(values: str, target: str) -> Axis:
    items = [v.strip() for v in values.split(",") if v.strip()]
    if len(items) == 1 and Path(items[0]).is_dir():
        paths, labels = discover_checkpoints(items[0])
        return Axis("checkpoint", paths, target, labels)
    paths = [p for item in items for p in (sorted(glob.glob(item)) or [item])]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"checkpoint axis: {', '.join(missing)} not found")
    return Axis("checkpoint", paths, target)


def _per_net(values: list, n: int, default, flag: str) -> list:
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise UserError(f"{flag}: give it once or once per --controlnet ({n})")
    return values


def build_controls(args) -> list[ControlRef]:
    n = len(args.controlnet)
    if not n:
        if args.control_image:
            raise UserError("--control-image needs --controlnet")
        return []
    images = _per_net(args.control_image, n, "", "--control-image")
    if not all(images):
        raise UserError("every --controlnet needs a --control-image")
    low, _, high = args.canny.partition(",")
    pre = _per_net(args.control_preprocess, n, "none", "--control-preprocess")
    scale = _per_net(args.control_scale, n, 1.0, "--control-scale")
    start = _per_net(args.control_start, n, 0.0, "--control-start")
    end = _per_net(args.control_end, n, 1.0, "--control-end")
    return [ControlRef(args.controlnet[i], images[i], pre[i], scale[i], start[i], end[i], float(low), float(high or low)) for i in range(n)]


def build_spec(args) -> GridSpec:
    prompts = list(args.prompt) or [""]
    seeds = list(args.seed) or [1]
    width, height = parse_size(args.size)
    if args.steps is not None and args.steps < 1:  # resolve() reads 0 as "the model's": say so instead
        raise UserError(f"--steps must be >= 1, got {args.steps} (leave it out for the model's default)")
    sampling = resolve({"cfg": args.cfg, "steps": args.steps, "sampler": args.sampler}, sampling_defaults(args.model))
    base = CellParams(
        prompt=prompts[0], negative_prompt=args.negative, seed=seeds[0], steps=int(sampling["steps"]), cfg=float(sampling["cfg"]),
        sampler=sampling["sampler"], width=width, height=height, clip_skip=args.clip_skip,
        loras=[parse_lora(t) for t in args.lora], controls=build_controls(args),
        init_image=args.init_image, strength=args.strength,
    )  # fmt: skip
    cols = [parse_axis(t, prompts, seeds) for t in args.x]
    rows = [parse_axis(t, prompts, seeds) for t in args.y]
    placed = {a.kind for a in cols + rows}
    if not args.prompt and "prompt" not in placed:
        raise UserError("give at least one --prompt (or a prompt axis, --y 'prompt=a star|a moon')")
    if len(prompts) > 1 and "prompt" not in placed:
        rows.insert(0, Axis("prompt", prompts))
    if len(seeds) > 1 and "seed" not in placed:
        cols.append(Axis("seed", seeds))
    if base.loras and not placed & {"weight", "checkpoint"}:
        cols.insert(0, Axis("weight", list(DEFAULT_WEIGHTS)))  # the usual LoRA strength sweep
    return GridSpec(
        model=args.model, base=base, cols=cols, rows=rows, fuse=not args.no_fuse, batch_size=args.batch_size,
        base_distance=not args.no_base_distance, clip_model=args.clip_model,
        single_file_config=args.single_file_config, dtype=args.dtype, device=args.device,
    )  # fmt: skip


def _rerender(args) -> int:
    # lazy: grid imports torch, diffusers and transformers (seconds); `lora-kit grid --help` does not need them
    from lora_kit.infer.grid import load_manifest, render_cell

    manifest = load_manifest(args.out)
    if not 0 <= args.rerender < len(manifest["cells"]):
        raise UserError(f"--rerender {args.rerender}: the grid has cells 0..{len(manifest['cells']) - 1}")
    cell = manifest["cells"][args.rerender]
    image, text = render_cell(manifest, args.rerender)
    same = png_bytes(image, text) == (Path(manifest["_root"]) / cell["file"]).read_bytes()
    print(f"cell {args.rerender} ({cell['file']}): {'identical bytes' if same else 'DIFFERS from the saved file'}")
    return 0 if same else 1


def run(args) -> int:
    if args.rerender is not None:
        return _rerender(args)
    from lora_kit.infer.grid import render_grid  # lazy: torch + diffusers, kept out of --help

    spec = build_spec(args)
    scoring = _scoring(args) if args.score else None  # before rendering: a bad --concept fails in a second
    result = render_grid(spec, args.out, overwrite=args.overwrite)
    lay = result.layout
    per = result.manifest["timing"]["seconds_per_image"]
    print(f"grid: {result.grid_path} ({lay.rows} x {lay.cols} cells, {lay.width}x{lay.height} px, {per:.3f} s/image)")
    print(f"page: {result.html_path}")
    for c in result.cells:
        m = c["metrics"]
        nums = " ".join(f"{k}={v:.4f}" for k, v in m.items())
        print(f"  {c['file']}  {c['row_label']} | {c['col_label']}  {nums}".rstrip())
    if scoring is not None:
        _score(result, *scoring)
    return 0


def _scoring(args) -> tuple[str, object]:
    """(trigger word, ConceptSpec) for --score world."""
    if bool(args.concept) == bool(args.concept_from):
        raise UserError("--score world needs the concept: --concept shape=NAME|fill=periodic,... or --concept-from DATASET (one of them)")
    trigger = args.trigger or guess_trigger(args.prompt)
    concept = parse_concept(args.concept) if args.concept else learn_concept_from_folder(args.concept_from)
    return trigger, concept


def _score(result, trigger: str, concept) -> None:
    scores = score_grid(result.out_dir, result.cells, trigger, concept)
    path = write_scores(result.out_dir / "scores.json", scores)
    for group in scores["groups"]:
        if group["setting"]:
            print(f"setting {group['setting']}:")
        print("\n".join(format_summary(group["summary"], concept, trigger)))
        if group["targets"]:
            missed = [k for k, ok in group["targets"].items() if not ok]
            print(f"  targets at weight 1: {len(group['targets']) - len(missed)}/{len(group['targets'])} met" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    print(f"scores: {path}")
