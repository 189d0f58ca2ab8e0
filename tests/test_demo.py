"""`lora-kit demo --quick`: the main job's plumbing end to end, in seconds (the full demo is a script)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_demo_quick_runs_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lora_kit", "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "subject"
    for rel in ("run/demo-star.safetensors", "run/pytorch_lora_weights.safetensors", "grid/grid.png", "grid/grid.json", "grid/grid.html", "scores.json"):
        assert (out / rel).is_file(), rel
    scores = json.loads((out / "scores.json").read_text())
    weights = scores["weights"]
    assert sorted(float(w) for w in weights) == [0.0, 0.5, 1.0]
    assert all(0.0 <= v["concept"] <= 1.0 and 0.0 <= v["bleed"] <= 1.0 for v in weights.values())
    # drift against weight 0 (issue 19 part 5): colour error and area next to shape and colour accuracy
    assert weights["0.0"]["drift"] == {"shape": 0.0, "color": 0.0, "color_error": 0.0, "area_ratio": 1.0}
    assert set(weights["1.0"]["drift"]) == {"shape", "color", "color_error", "area_ratio"}
    assert scores["concept"] == {"shape": "star"} and scores["trigger"] == "ohwx"  # learned from the training images
    assert len(scores["targets"]) == 7 and len(scores["cells"]) == len(json.loads((out / "grid" / "grid.json").read_text())["cells"])
    assert "[4/4] scores" in res.stdout and "everything is under" in res.stdout and "area within +-25 %" in res.stdout
    manifest = json.loads((out / "grid" / "grid.json").read_text())
    assert len(manifest["cells"]) == 2 * 3 * (2 if (out / "control.png").exists() else 1)  # 2 prompts x 3 weights (x control)


def test_demo_style_quick_trains_the_shipped_style_recipe(tmp_path):
    """`--style` runs its own recipe (caption priors rendered by the base, ResNet-conv rank 8) end to end."""
    res = subprocess.run([sys.executable, "-m", "lora_kit", "demo", "--style", "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "style"
    assert (out / "run" / "demo-stripes.safetensors").is_file() and (out / "grid" / "grid.png").is_file()
    assert "+ ResNet convs rank 8 alpha 8 + text encoder;" in res.stdout
    scores = json.loads((out / "scores.json").read_text())
    assert scores["trigger"] == "zyk" and scores["concept"]["fill"] == "periodic"


def test_demo_refuses_to_overwrite(tmp_path):
    (tmp_path / "subject").mkdir()
    res = subprocess.run([sys.executable, "-m", "lora_kit", "demo", "--quick", "--out", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "pass --overwrite" in res.stderr


@pytest.mark.parametrize("argv, message", [(["--seeds", "0"], "--seeds: expected a number >= 1, got 0"),
                                           (["--sample-steps", "0"], "--sample-steps: expected a number >= 1, got 0"),
                                           (["--steps", "-1"], "--steps: expected a number >= 0, got -1"),
                                           (["--seeds", "five"], "--seeds: expected a whole number, got 'five'")])
def test_demo_refuses_bad_counts_before_it_trains(tmp_path, capsys, argv, message):
    """--seeds 0 used to fail after minutes of training, --sample-steps 0 to render noise and score it."""
    from lora_kit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "d"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "d").exists()


def _previous_demo(folder):
    for sub in ("data", "run", "grid"):
        (folder / sub).mkdir(parents=True)
    (folder / "scores.json").write_text("{}\n")
    (folder / "run" / "demo-star.safetensors").write_bytes(b"the last demo's LoRA")


def test_demo_checks_set_and_out_before_it_touches_anything(tmp_path, capsys):
    """A bad --set was found after --overwrite had deleted the previous demo (and, without it, after the data
    was copied, so the corrected command then said 'exists'); --overwrite deleted a folder of the user's own
    files; --out under a file was an internal NotADirectoryError."""
    from lora_kit.cli import main

    _previous_demo(tmp_path / "prev" / "subject")
    (tmp_path / "mine" / "subject").mkdir(parents=True)
    (tmp_path / "mine" / "subject" / "photo.png").write_bytes(b"mine")
    (tmp_path / "notes.txt").write_text("mine\n")
    cases = [(["--out", str(tmp_path / "prev"), "--overwrite", "--set", "optimizer.lr=abc"], "demo-subject: [optimizer] lr: expected a number, got 'abc'"),
             (["--out", str(tmp_path / "new"), "--set", "train.nosuch=1"], "[train] nosuch: unknown key"),
             (["--out", str(tmp_path / "mine"), "--overwrite"], "holds files the demo did not write (photo.png); --overwrite replaces only a previous demo"),
             (["--out", str(tmp_path / "notes.txt")], "notes.txt is a file; expected a folder")]
    for argv, message in cases:
        assert main(["demo", "--quick", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "prev" / "subject" / "run" / "demo-star.safetensors").read_bytes() == b"the last demo's LoRA"
    assert (tmp_path / "mine" / "subject" / "photo.png").read_bytes() == b"mine" and not (tmp_path / "new").exists()
    assert "[1/4]" not in capsys.readouterr().out
