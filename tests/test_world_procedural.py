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


def test_pictures_use_world_colours_and_backgrounds():
    from lora_kit.world.procedural import _colors
    from lora_kit.world.shapes import MIN_CONTRAST, stripe_tint

    rng = np.random.default_rng(5)
    palette = {tuple(c) for c in COLORS.values()} | {stripe_tint(c) for c in COLORS}
    for _ in range(50):
        a, b, bg = _colors(rng)
        assert tuple(a) in {tuple(c) for c in COLORS.values()} and tuple(b) in palette
        assert tuple(bg) in {tuple(c) for c in BACKGROUNDS.values()}
        assert min(np.linalg.norm(np.subtract(bg, a)), np.linalg.norm(np.subtract(bg, b))) >= MIN_CONTRAST
    for _, im in generate_textured(12, seed=5):
        assert tuple(int(v) for v in np.asarray(im)[0, 0]) in {tuple(c) for c in BACKGROUNDS.values()}
    with pytest.raises(ValueError, match="unknown procedural texture"):
        pattern("swirl", np.random.default_rng(0), 8, 8)
