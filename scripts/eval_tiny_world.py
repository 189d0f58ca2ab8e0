#!/usr/bin/env python
"""Measure the shipped tiny world: does the base draw what the prompt names, does the ControlNet follow edges?

    python scripts/eval_tiny_world.py --n 100 --cfg 3 5 7 --control-n 48

Base: `--n` scenes drawn from the pretraining world (seed `--seed`, every canvas size); each scene's caption
is the prompt, generated at the scene's canvas size with DPM-Solver++ 2M, `--steps` steps, one seed per
image; lora_kit.world.score reads shape, colour and background back; the table gives the share matching
the prompt (`all` = shape, colour and background at once) for each CFG scale.

ControlNet: `--control-n` other scenes; the conditioning is `scene_edges(scene)` (Canny outline of the
shape); the output's foreground mask (the scorer's segmentation) is compared with the rendered scene's
by IoU. The same prompts and seeds without the ControlNet give the baseline IoU (what the prompt alone
already pins down: roughly the size and the centre).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_kit.world import model as world_model  # noqa: E402
from lora_kit.world.score import labels_of, score_batch, segment, to_rgb_array  # noqa: E402
from lora_kit.world.shapes import caption, generate, render  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent.parent / "lora_kit" / "world" / "weights"


def load_pipelines(base: str, controlnet: str | None, device):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    cpipe = None
    if controlnet:
        net = ControlNetModel.from_pretrained(controlnet, dtype=torch.float32).to(device)
        cpipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=net)
        cpipe.set_progress_bar_config(disable=True)
    return pipe, cpipe


def generate_scenes(pipe, scenes, args, cfg: float, controls=None, batch: int = 25) -> list[np.ndarray]:
    """One image per scene (prompt = its caption, at its canvas size, seed = args.seed + index)."""
    images: list = [None] * len(scenes)
    order = sorted(range(len(scenes)), key=lambda i: (scenes[i].width, scenes[i].height))
    groups: dict = {}
    for i in order:
        groups.setdefault((scenes[i].width, scenes[i].height), []).append(i)
    for (w, h), idx in groups.items():
        for j in range(0, len(idx), batch):
            part = idx[j : j + batch]
            kw = {"image": [controls[i] for i in part]} if controls is not None else {}
            out = pipe(
                [caption(scenes[i]) for i in part], height=h, width=w, num_inference_steps=args.steps,
                guidance_scale=cfg, generator=[torch.Generator().manual_seed(args.seed + i) for i in part],
                output_type="np", **kw,
            ).images
            for i, im in zip(part, out):
                images[i] = im
    return images


def base_rows(pipe, args) -> list[dict]:
    scenes = [s for _, _, s in generate(args.n, args.seed)]
    expected = [{k: v for k, v in labels_of(s).items() if k != "striped"} for s in scenes]
    rows = []
    for cfg in tqdm(args.cfg, desc="base, per CFG"):
        start = time.time()
        rates = score_batch(generate_scenes(pipe, scenes, args, cfg), expected)
        rows.append({"cfg": cfg, **rates, "seconds": time.time() - start})
    return rows


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def control_rows(pipe, cpipe, args) -> list[dict]:
    scenes = [s for _, _, s in generate(args.control_n, args.seed + 1)]
    truth = [segment(to_rgb_array(render(s)))[0] for s in scenes]
    edges = [world_model.scene_edges(s) for s in scenes]
    expected = [{k: v for k, v in labels_of(s).items() if k != "striped"} for s in scenes]
    rows = []
    for name, p, ctrl in (("base, no ControlNet", pipe, None), ("ControlNet (scene_edges)", cpipe, edges)):
        images = generate_scenes(p, scenes, args, args.control_cfg, ctrl)
        ious = [iou(segment(to_rgb_array(im))[0], t) for im, t in zip(images, truth)]
        rates = score_batch(images, expected)
        rows.append({"run": name, "mean_iou": float(np.mean(ious)), "median_iou": float(np.median(ious)),
                     "iou>=0.8": float(np.mean(np.array(ious) >= 0.8)), **rates})
    return rows


def markdown(rows: list[dict], cols: list[str]) -> str:
    def fmt(col, v):
        if col in ("n", "cfg", "seconds"):
            return f"{v:g}" if col != "seconds" else f"{v:.0f}"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(WEIGHTS / "tiny-world"))
    p.add_argument("--controlnet", default=str(WEIGHTS / "tiny-world-controlnet"), help="'' to skip")
    p.add_argument("--n", type=int, default=100, help="base images per CFG scale")
    p.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--control-n", type=int, default=48)
    p.add_argument("--control-cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1000, help="scenes and sampling seeds (the training data used 100..)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    pipe, cpipe = load_pipelines(args.base, args.controlnet or None, device)
    result = {"base": base_rows(pipe, args) if args.n else []}
    print(f"\nBase, {args.n} prompts, {args.steps} steps DPM++ 2M\n")
    print(markdown(result["base"], ["cfg", "shape", "color", "background", "all", "n", "seconds"]))
    if cpipe is not None and args.control_n:
        result["control"] = control_rows(pipe, cpipe, args)
        print(f"\nControlNet, {args.control_n} scenes, CFG {args.control_cfg}, {args.steps} steps\n")
        print(markdown(result["control"], ["run", "mean_iou", "median_iou", "iou>=0.8", "shape", "color", "background", "n"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
