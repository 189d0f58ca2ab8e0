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
