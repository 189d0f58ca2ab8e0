"""`lora-kit buckets`: histogram and mean aspect error printed from image headers."""

from __future__ import annotations

import json

from PIL import Image

from lora_kit.cli import main


def _dataset(tmp_path):
    folder = tmp_path / "set" / "3_x"
    folder.mkdir(parents=True)
    for i, size in enumerate([(1200, 500), (500, 500), (640, 480), (480, 640), (500, 500)]):
        Image.new("RGB", size).save(folder / f"{i}.png")
    (folder / "bad.png").write_text("not an image", encoding="utf-8")
    return tmp_path / "set"


def test_buckets_table(tmp_path, capsys):
    assert main(["buckets", str(_dataset(tmp_path)), "--resolution", "512"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "     bucket  aspect  images",
        "  448x576     0.778       1  ###############",
        "  512x512     1.000       2  ##############################",
        "  576x448     1.286       1  ###############",
        "  768x320     2.400       1  ###############",
    ]
    assert lines[5].startswith("5 images in 4 buckets (folder), 1 skipped, mean aspect error 0.0151, ")


def test_buckets_json_no_upscale(tmp_path, capsys):
    assert main(["buckets", str(_dataset(tmp_path)), "--no-upscale", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 5 and out["skipped"] == 1
    # no-upscale: the 500x500 images keep their pixels in a 448x448 bucket (sides rounded down)
    assert [(b["width"], b["height"], b["count"]) for b in out["buckets"]] == [
        (448, 448, 2), (448, 576, 1), (576, 448, 1), (768, 320, 1)
    ]


def test_buckets_user_errors(tmp_path, capsys):
    assert main(["buckets", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["buckets", str(_dataset(tmp_path)), "--resolution", "2048"]) == 2
    assert "must lie between" in capsys.readouterr().err
    # a bucket side of 0 divided by zero; one of 36 made 84x48 buckets (half a latent) with nothing said
    assert main(["buckets", str(tmp_path / "set"), "--min", "0", "--no-upscale"]) == 2
    assert "--min: expected a multiple of 8 (bucket sides are whole latents), got 0" in capsys.readouterr().err
    assert main(["buckets", str(tmp_path / "set"), "--min", "256", "--max", "1020"]) == 2
    assert "--max: expected a multiple of 8 (bucket sides are whole latents), got 1020" in capsys.readouterr().err


def test_cache_command_fills_then_reuses(tmp_path, capsys):
    args = ["cache", "tiny-smoke", f"cache.dir={tmp_path / 'cache'}", "train.mixed_precision=\"no\""]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "20 train + 0 reg + 0 validation images, 3 buckets, 0 skipped" in out
    assert "latents: 20 computed, 0 already cached, 0 failed" in out
    assert main(args) == 0
    assert "latents: 0 computed, 20 already cached, 0 failed" in capsys.readouterr().out
    assert main(["cache", "tiny-smoke", "cache.latents=false"]) == 0
    assert "nothing to cache" in capsys.readouterr().out


def test_buckets_flags_are_the_recipe_schema_and_its_checks(tmp_path, capsys):
    import pytest

    from lora_kit.cli import build_parser
    from lora_kit.config.checks import check_recipe
    from lora_kit.config.schema import BucketConfig, DatasetConfig, Recipe
    from lora_kit.data.bucket_command import bucket_config
    from lora_kit.errors import UserError

    parse = build_parser("buckets").parse_args
    assert bucket_config(parse(["buckets", "x"])) == BucketConfig()  # defaults come from the dataclass
    args = parse(["buckets", "x", "--bucket-reso-steps", "32", "--min-bucket-reso", "128", "--bucket-no-upscale"])
    assert bucket_config(args) == BucketConfig(bucket_reso_steps=32, min_bucket_reso=128, bucket_no_upscale=True)
    # one rule, two spellings of the key: the flag for the command, the recipe key for a recipe
    data = str(_dataset(tmp_path))
    assert main(["buckets", data, "--steps", "60"]) == 2
    assert "--steps: expected a multiple of 8, got 60" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"\[buckets\] bucket_reso_steps: expected a multiple of 8, got 60"):
        check_recipe(Recipe(dataset=DatasetConfig(path="x"), buckets=BucketConfig(bucket_reso_steps=60)))
    # no-upscale sizes buckets per image: min/max do not apply, in a recipe or on the command line
    assert main(["buckets", data, "--no-upscale", "--resolution", "2048", "--json"]) == 0
    check_recipe(Recipe(dataset=DatasetConfig(path="x"), buckets=BucketConfig(resolution=2048, bucket_no_upscale=True)))
