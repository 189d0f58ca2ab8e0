"""The two concept datasets a LoRA learns on top of the shapes world, and how they are written.

- builtin:shapes-star, a *subject*: the five-pointed star, a shape the pretraining world never shows,
  in every colour, background and canvas size. Trigger word "ohwx".
- builtin:shapes-stripes, a *style*: the known shapes filled with diagonal stripes, a texture the
  pretraining world never shows. Trigger word "zyk".
- builtin:shapes-world, the *prior*: plain pictures of the pretraining world with their plain captions,
  the regularisation images (kohya's reg folder, DreamBooth's prior preservation) of both demo recipes.
  Next to them a LoRA learns that the trigger word, not every prompt, asks for the concept: without
  them the demo's LoRA drew stars for "a red circle" too.

Both trigger words are single tokens of the CLIP BPE vocabulary (ohwx = 47993, zyk = 39112), are not
English words, and share no token with the world's captions, so before training they mean nothing to
the model. ohwx is also the rare token kohya users already know from DreamBooth guides.

The folders use kohya's DreamBooth layout: `<name>/<repeats>_<class token>/` holding `<stem>.png` and a
same-stem `<stem>.txt` caption. They are checked in; scripts/make_concept_datasets.py rebuilds them
bit-for-bit from the definitions below, and tests/test_world.py checks the two agree.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lora_kit.errors import UserError
from lora_kit.utils import atomic_dir
from lora_kit.world.shapes import (
    BACKGROUNDS,
    BASE_SHAPES,
    CANVAS_SIZES,
    COLORS,
    SIZE_RANGE,
    Scene,
    describe,
    is_visible,
    render,
    sample_scene,
)

SUBJECT, STYLE, PRIOR = "subject", "style", "prior"


@dataclass(frozen=True)
class Concept:
    name: str  # folder under datasets/ (and `builtin:<name>`)
    kind: str  # SUBJECT, STYLE or PRIOR
    trigger: str  # "" for the prior
    class_token: str  # kohya's class token; also names the image files
    repeats: int
    count: int
    seed: int
    shapes: tuple[str, ...]
    fill: str
    size_range: tuple[float, float]

    @property
    def subset(self) -> str:
        """The kohya subset folder name, `<repeats>_<class token>`."""
        return f"{self.repeats}_{self.class_token}"

    def caption(self, scene: Scene) -> str:
        """Training caption; with another scene's colours it is also the evaluation prompt.

        Subject: "a red ohwx star on a white background": the trigger and class stand where the world's
        captions name the shape. The tiny text encoder is causal, so words put before "a red" change how
        it reads the colour (the demo's stars came out yellow whatever the prompt said); in the noun's
        place the LoRA learns the shape and the colour stays the base's. Style: "a red zyk circle on a
        white background": the trigger stands where the world would say "striped" (the texture is never
        named). "..., in zyk style" at the end, where this text encoder's words barely reach the U-Net,
        taught stripes to 28% of the demo's prompts; in the adjective's place, to all of them. Prior: the
        world's own caption, "a red circle on a white background".
        """
        if self.kind == PRIOR:
            return describe(scene)
        if self.kind == SUBJECT:
            return describe(scene, noun=f"{self.trigger} {self.class_token}")
        return describe(scene, fill_word=self.trigger)

    def scenes(self) -> list[Scene]:
        """`count` scenes that cycle through every shape, colour and canvas size (a random draw of 20
        could miss one); backgrounds, sizes and positions are drawn."""
        rng = np.random.default_rng(self.seed)
        colors = [c for c in COLORS if any(is_visible(c, b, self.fill) for b in BACKGROUNDS)]
        color_order = rng.permutation(len(colors))
        canvas_order = rng.permutation(len(CANVAS_SIZES))
        shape_order = rng.permutation(len(self.shapes))
        out = []
        for i in range(self.count):
            color = colors[color_order[i % len(colors)]]
            canvas = CANVAS_SIZES[canvas_order[i % len(CANVAS_SIZES)]]
            shape = self.shapes[shape_order[i % len(self.shapes)]]
            out.append(sample_scene(rng, shapes=[shape], colors=[color], fills=[self.fill], canvases=[canvas], size_range=self.size_range))
        return out

    def items(self) -> list[tuple[str, Image.Image, str]]:
        """(file stem, image, caption) of every picture of the dataset."""
        return [(f"{self.class_token}_{i:03d}", render(s), self.caption(s)) for i, s in enumerate(self.scenes())]


CONCEPTS: dict[str, Concept] = {
    c.name: c
    for c in (
        Concept("shapes-star", SUBJECT, "ohwx", "star", repeats=10, count=20, seed=1001,
                shapes=("star",), fill="solid", size_range=(0.55, 0.85)),
        Concept("shapes-stripes", STYLE, "zyk", "stripes", repeats=10, count=20, seed=2002,
                shapes=BASE_SHAPES, fill="stripes", size_range=(0.6, 0.85)),
        Concept("shapes-world", PRIOR, "", "shape", repeats=1, count=40, seed=3003,
                shapes=BASE_SHAPES, fill="solid", size_range=SIZE_RANGE),
    )
}


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)  # no timestamp or text chunks: same pixels, same bytes
    return buf.getvalue()


def write_concept_dataset(concept: Concept, root: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `root/<concept.name>/` and return it.

    The folder is built beside its destination and renamed into place, so a reader never sees half a
    dataset; an existing folder is replaced only with `overwrite=True`.
    """
    root = Path(root)
    dest = root / concept.name
    if dest.exists() and not overwrite:
        raise UserError(f"{dest} already exists; pass overwrite=True (--overwrite) to replace it")

    def build(staging: Path) -> None:
        subset = staging / concept.subset
        subset.mkdir(parents=True)  # plain mkdir/open: the files get the user's umask, not mkstemp's 0600
        for stem, image, text in concept.items():
            (subset / f"{stem}.png").write_bytes(png_bytes(image))
            (subset / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")

    return atomic_dir(dest, build)  # the one folder swap (old aside, new in, old deleted)
