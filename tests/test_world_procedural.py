"""The procedural textures the tiny VAE's decoder is tuned on (lora_kit.world.procedural)."""

import numpy as np
import pytest

from lora_kit.world.procedural import HELD_OUT, TRAINED, generate_textured, pattern
from lora_kit.world.shapes import CANVAS_SIZES, COLORS, BACKGROUNDS


def test_seeded_and_in_world_sizes():
    a, b = generate_textured(8, seed=3), generate_textured(8, seed=3)
    assert [k for k, _ in a] == list(TRAINED) * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b))
    assert all(im.size in CANVAS_SIZES for _, im in a)
    assert not np.array_equal(np.asarray(a[0][1]), np.asarray(generate_textured(1, seed=4)[0][1]))


def test_held_out_families_are_never_drawn_for_training():
    assert not set(HELD_OUT) & set(TRAINED)
    assert {k for k, _ in generate_textured(40, seed=0)} == set(TRAINED)


@pytest.mark.parametrize("kind", TRAINED + HELD_OUT)
def test_every_family_is_two_coloured_and_periodic(kind):
    band = pattern(kind, np.random.default_rng(1), 64, 64)
    assert band.shape == (256, 256) and 0.1 < band.mean() < 0.9  # both colours show


def test_pictures_use_world_backgrounds_and_shape_colours():
    palette = {tuple(c) for c in COLORS.values()}
    for _, im in generate_textured(12, seed=5):
        px = np.asarray(im).reshape(-1, 3)
        corner = tuple(int(v) for v in np.asarray(im)[0, 0])
        assert corner in {tuple(c) for c in BACKGROUNDS.values()}
        colours = np.unique(px, axis=0)
        assert any(tuple(int(v) for v in c) in palette for c in colours)  # pure pixels of a palette colour (edges are blended)
    with pytest.raises(ValueError, match="unknown procedural texture"):
        pattern("swirl", np.random.default_rng(0), 8, 8)
