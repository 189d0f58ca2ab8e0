"""Round-trip fidelity of the tiny world's VAE per texture family (docs/world.md, issue 19 part 3).

Encode and decode (latent mean) pictures and measure what comes back:
- every fill and shape of the world's generator (`generate(n, seed=77, ALL_SHAPES, ALL_FILLS)`), read by the
  model-free scorer: fill, orientation, period, colour and shape accuracy per fill family and per shape, and
  the mean absolute pixel error (0-255) inside the picture;
- the procedural families (lora_kit.world.procedural): those the decoder stage draws (`TRAINED`) and those it
  never draws (`HELD_OUT`: rings, zigzag bands, discs on a triangular lattice), by mean absolute error.

  python scripts/eval_world_vae.py [--vae lora_kit/world/weights/tiny-world/vae] [--n 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusers import AutoencoderKL  # noqa: E402

from lora_kit.world.procedural import HELD_OUT, TRAINED, generate_textured  # noqa: E402
from lora_kit.world.score import fill_labels_of, label_matches, labels_of, score_image  # noqa: E402
from lora_kit.world.shapes import ALL_FILLS, ALL_SHAPES, generate  # noqa: E402


def to_x(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@torch.no_grad()
def round_trip(vae, image) -> tuple[np.ndarray, float]:
    """(decoded uint8 picture, mean absolute error in 0-255 levels)."""
    x = to_x(image)
    y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return ((y[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), float((y - x).abs().mean()) * 127.5


def world_rows(vae, n: int, seed: int) -> tuple[dict, dict]:
    per_fill, per_shape = defaultdict(lambda: defaultdict(float)), defaultdict(lambda: defaultdict(float))
    for image, _, scene in generate(n, seed, shapes=ALL_SHAPES, fills=ALL_FILLS):
        out, mae = round_trip(vae, image)
        got, want, lab = score_image(out), fill_labels_of(scene), labels_of(scene)
        f = per_fill[scene.fill]
        f["n"] += 1
        f["fill"] += got.fill.kind == want["fill"]
        f["orientation"] += label_matches("orientation", got.fill.orientations, want["orientation"])
        f["period"] += label_matches("period", got.fill.period, want["period"])
        f["colour"] += got.color == lab["color"]
        f["mae"] += mae
        s = per_shape[scene.shape]
        s["n"] += 1
        s["shape"] += got.shape == lab["shape"]
    norm = lambda d: {k: {m: (v if m == "n" else round(v / d[k]["n"], 3)) for m, v in d[k].items()} for k in d}  # noqa: E731
    return norm(per_fill), norm(per_shape)


def procedural_rows(vae, n: int, seed: int) -> dict:
    errs = defaultdict(list)
    for kind, image in generate_textured(n * len(TRAINED + HELD_OUT), seed, kinds=TRAINED + HELD_OUT):
        errs[kind].append(round_trip(vae, image)[1])
    return {k: round(float(np.mean(v)), 2) for k, v in errs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", default=str(REPO / "lora_kit/world/weights/tiny-world/vae"))
    ap.add_argument("--n", type=int, default=600, help="world pictures (every shape and fill)")
    ap.add_argument("--n-procedural", type=int, default=40, help="pictures per procedural family")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(a.vae, torch_dtype=torch.float32).eval()
    fills, shapes = world_rows(vae, a.n, 77)
    result = {"fills": fills, "shapes": shapes, "procedural_mae": procedural_rows(vae, a.n_procedural, 99)}
    print("| Fill | n | fill | orientation | period | colour | MAE |\n|---|---|---|---|---|---|---|")
    for k, v in fills.items():
        print(f"| {k} | {v['n']:.0f} | {v['fill']:.2f} | {v['orientation']:.2f} | {v['period']:.2f} | {v['colour']:.2f} | {v['mae']:.1f} |")
    print("| Shape | " + " | ".join(shapes) + " |\n|---" * 1 + "|---" * len(shapes) + "|")
    print("| shape after the round trip | " + " | ".join(f"{v['shape']:.2f}" for v in shapes.values()) + " |")
    print("| Procedural family | " + " | ".join(f"{k}{'' if k in TRAINED else ' (held out)'}" for k in result["procedural_mae"]) + " |")
    print("| mean abs. error (0-255) | " + " | ".join(f"{v:.1f}" for v in result["procedural_mae"].values()) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
