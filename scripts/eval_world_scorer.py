"""Accuracy of the world's model-free scorer (docs/world.md, "Measured accuracy").

Scenes from the world's generator, scored as rendered and after a Gaussian blur plus pixel noise
(`lora_kit.world.score.degrade`): first the demo's world (every base shape, the star, solid and "/" stripes),
then every shape and fill the generator draws. Prints one markdown row per setting.

  python scripts/eval_world_scorer.py [--n 600] [--seed 123]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lora_kit.world.score import LABELS, degrade, fill_labels_of, labels_of, score_batch  # noqa: E402
from lora_kit.world.shapes import ALL_FILLS, ALL_SHAPES, FILLS, SHAPES, generate  # noqa: E402

SETTINGS = {  # name -> (shapes, fills, [(blur, noise), ...])
    "demo world": (SHAPES, FILLS, [(0, 0), (1.0, 8.0), (1.5, 12.0), (2.0, 0.0)]),
    "every kind": (ALL_SHAPES, ALL_FILLS, [(0, 0), (1.0, 8.0), (1.5, 12.0), (0.5, 25.0), (2.0, 16.0)]),
}


def rows(n: int, seed: int) -> list[str]:
    out = ["| Images | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|"]
    for name, (shapes, fills, degradations) in SETTINGS.items():
        scenes = generate(n, seed=seed, shapes=shapes, fills=fills)
        expected = [{**labels_of(s), **fill_labels_of(s)} for _, _, s in scenes]
        for blur, noise in degradations:
            rng = np.random.default_rng(7)
            images = [im if blur == noise == 0 else degrade(im, rng, blur, noise) for im, _, _ in scenes]
            rates = score_batch(images, expected)
            what = "ground truth" if blur == noise == 0 else f"blur {blur}, noise {noise:g}" if noise else f"blur {blur}, no noise"
            out.append(f"| {name}, {what} | " + " | ".join(f"{rates[k]:.3f}" for k in LABELS) + " |")
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    print("\n".join(rows(a.n, a.seed)))


if __name__ == "__main__":
    main()
