#!/usr/bin/env python
"""Throughput of the transformers captioner at batch 1 vs 16 (images/s).

    python scripts/bench_caption.py                      # tiny random BLIP written to a temp folder
    python scripts/bench_caption.py --model DIR --device cuda --images 128

Measures `TransformersCaptioner.caption` on pre-decoded images (model time only: processor +
generate + decode), after one warm-up batch, plus the end-to-end `caption_dataset` rate
(decode, caption, edit, atomic sidecar writes) on the same images saved as PNG files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_images(n: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (48, 64), (56, 56)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in (sizes[i % 3] for i in range(n))]


def model_rate(captioner, images, batch: int) -> float:
    captioner.caption([None] * batch, images[:batch])  # warm-up
    sync = _sync(captioner.device)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        captioner.caption([None] * len(chunk), chunk)
    sync()
    return len(images) / (time.perf_counter() - start)


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def dataset_rate(captioner, images, batch: int, root: Path) -> float:
    from lora_kit.captioning import CaptionOptions, caption_dataset

    folder = root / f"b{batch}" / "10_sks thing"
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        im.save(folder / f"img_{i:04d}.png")
    start = time.perf_counter()
    report = caption_dataset(folder.parent, captioner, CaptionOptions(batch_size=batch, progress=False))
    elapsed = time.perf_counter() - start
    assert report.captioned == len(images), report
    return len(images) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="captioning model folder or Hub id (default: tiny random BLIP)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-beams", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    args = ap.parse_args()

    import torch

    from lora_kit.captioning import create_captioner
    from lora_kit.captioning.tiny import write_tiny_blip

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_tiny_blip(Path(tmp) / "tiny-blip"))
        captioner = create_captioner("transformers", model=model, device=args.device, num_beams=args.num_beams,
                                     max_new_tokens=args.max_new_tokens)
        images = make_images(args.images)
        print(f"model={args.model or 'tiny random BLIP'} device={captioner.device} dtype={captioner.dtype} "
              f"torch threads={torch.get_num_threads()} images={len(images)} num_beams={args.num_beams} "
              f"max_new_tokens={args.max_new_tokens}")
        print(f"{'batch':>5}  {'model img/s':>11}  {'end-to-end img/s':>16}")
        for batch in args.batches:
            m = model_rate(captioner, images, batch)
            e = dataset_rate(captioner, images, batch, Path(tmp))
            print(f"{batch:>5}  {m:>11.1f}  {e:>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
