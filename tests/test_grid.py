"""Evaluation grids on the tiny SD1 model: outputs, arithmetic, A1111 text, reproducibility, axes, metrics."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_kit.errors import UserError
from lora_kit.infer.axes import discover_checkpoints
from lora_kit.infer.grid import load_manifest, render_cell, render_grid
from lora_kit.infer.metrics import pixel_distance
from lora_kit.infer.parameters import parse_parameters
from lora_kit.infer.pipeline import LoraPipeline
from lora_kit.infer.render import plan_layout, png_bytes
from lora_kit.infer.spec import Axis, CellParams, ControlRef, GridSpec, LoraRef
from lora_kit.infer.synthetic import random_controlnet, write_random_lora

STEPS = 4


def autov2(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


@pytest.fixture(scope="module")
def pipe(tiny_sd15_dir):
    return LoraPipeline.load(str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def assets(tmp_path_factory, pipe):
    d = tmp_path_factory.mktemp("assets")
    unet = pipe.pipe.unet
    out = {
        "a": write_random_lora(d / "style.safetensors", unet, rank=4, seed=1, fmt="peft"),
        "b": write_random_lora(d / "detail.safetensors", unet, rank=2, alpha=1, seed=2, fmt="kohya"),
    }
    run = d / "run"
    for i, step in enumerate((100, 200)):
        write_random_lora(run / "exports" / f"style-step{step:06d}.safetensors", unet, rank=4, seed=10 + i, fmt="kohya")
    write_random_lora(run / "style.safetensors", unet, rank=4, seed=12, fmt="kohya")
    out["run"] = run
    random_controlnet(unet, pipe.pipe.vae_scale_factor, seed=0).save_pretrained(d / "cn")
    out["cn"] = d / "cn"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "control.png")
    out["control"] = d / "control.png"
    return {k: str(v) for k, v in out.items()}


def base_cell(**kw) -> CellParams:
    return CellParams(**{"prompt": "a star", "steps": STEPS, "seed": 1, **kw})


@pytest.fixture(scope="module")
def main_grid(tmp_path_factory, pipe, assets):
    """2 prompts (rows) x LoRA-a weight 0/0.5/1 (outer cols) x 2 seeds (inner cols), LoRA b at 0.5 throughout."""
    spec = GridSpec(
        model="builtin:tiny-sd15",
        base=base_cell(negative_prompt="blurry", loras=[LoraRef(assets["a"], 1.0, name="style"), LoraRef(assets["b"], 0.5, name="detail")]),
        rows=[Axis("prompt", ["a star", "a moon, at night"])],
        cols=[Axis("weight", [0.0, 0.5, 1.0], target="style"), Axis("seed", [1, 2])],
        batch_size=2,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("grids") / "main"
    return render_grid(spec, out, pipeline=pipe, progress=False)


def test_grid_png_size_is_exact_arithmetic(main_grid):
    lay, m = main_grid.layout, main_grid.manifest
    assert (lay.rows, lay.cols, lay.cell_width, lay.cell_height) == (2, 6, 64, 64)
    assert lay.label_width > 0 and lay.label_height > 0
    grid = Image.open(main_grid.grid_path)
    assert grid.size == (lay.label_width + 6 * 64, lay.label_height + 2 * 64)
    rows = [c["row_label"] for c in m["cells"] if c["col"] == 0]
    cols = [c["col_label"] for c in m["cells"] if c["row"] == 0]
    assert rows == ["a star", "a moon, at night"]
    assert cols == ["style: 0, seed 1", "style: 0, seed 2", "style: 0.5, seed 1", "style: 0.5, seed 2", "style: 1, seed 1", "style: 1, seed 2"]
    assert plan_layout(rows, cols, 64, 64) == lay  # pure: the same labels give the same bands
    for c in m["cells"]:
        cell = np.asarray(Image.open(main_grid.out_dir / c["file"]).convert("RGB"))
        assert np.array_equal(np.asarray(grid.crop(lay.cell_box(c["row"], c["col"]))), cell)


def test_manifest_and_parameters_match_what_was_rendered(main_grid, assets, tmp_path):
    m = main_grid.manifest
    text = main_grid.manifest_path.read_text()
    assert str(Path(assets["a"]).parent) not in text  # no absolute local paths
    assert len(m["cells"]) == 12 and m["model"]["family"] == "sd1" and m["fused"] is True
    for c in m["cells"]:
        p = c["params"]
        prompt = ["a star", "a moon, at night"][c["row"]]
        weight, seed = [0.0, 0.5, 1.0][c["col"] // 2], [1, 2][c["col"] % 2]
        assert (p["prompt"], p["loras"][0]["weight"], p["loras"][1]["weight"], p["seed"]) == (prompt, weight, 0.5, seed)
        assert (main_grid.out_dir / p["loras"][0]["path"]).resolve() == Path(assets["a"]).resolve()
        png = Image.open(main_grid.out_dir / c["file"])
        assert png.text["parameters"] == c["parameters"]
        parsed = parse_parameters(c["parameters"])
        assert parsed["Negative prompt"] == "blurry"
        assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Seed"], parsed["Size"], parsed["Model"]) == (
            str(STEPS), "DPM++ 2M", "7", str(seed), "64x64", "tiny-sd15")
        expected = {"style": weight, "detail": 0.5} if weight else {"detail": 0.5}
        assert parsed["loras"] == expected
        assert parsed["Lora hashes"] == {n: autov2(assets["a"] if n == "style" else assets["b"]) for n in expected}
        assert c["batch"]["seeds"] == [1, 2] and c["batch"]["position"] == seed - 1


def test_base_distance_uses_weight_zero_references(main_grid, pipe):
    m = main_grid.manifest
    assert len(m["references"]) == 4  # LoRA "detail" is active everywhere: no all-zero cell in the grid
    for r in m["references"]:
        assert r["params"]["loras"] == [] and "<lora:" not in r["parameters"]
    ref0 = m["references"][0]
    alone = pipe.generate([CellParams(**{**ref0["params"], "seed": ref0["params"]["seed"]})])[0]
    saved = Image.open(main_grid.out_dir / ref0["file"])
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(saved.convert("RGB"), np.int16)).max() <= 1
    for c in m["cells"]:
        ref = Image.open(main_grid.out_dir / c["reference"])
        cell = Image.open(main_grid.out_dir / c["file"])
        assert c["metrics"]["base_distance"] == pytest.approx(pixel_distance(cell, ref), abs=1e-6)
        assert c["metrics"]["base_distance"] > 0.002
    d = {(c["row"], c["col"]): c["metrics"]["base_distance"] for c in m["cells"]}
    assert d[(0, 4)] > d[(0, 0)] and d[(1, 5)] > d[(1, 1)]  # style at 1 moves the image further than at 0


def test_cells_reproduce_byte_for_byte(main_grid, pipe, assets, tiny_sd15_dir, tmp_path):
    for index in (0, 7):  # recorded batch re-run: identical bytes
        image, text = render_cell(main_grid.manifest_path, index, pipeline=pipe)
        assert png_bytes(image, text) == (main_grid.out_dir / main_grid.cells[index]["file"]).read_bytes()
    # A batch_size=1 grid: each cell re-rendered alone, from a freshly loaded pipeline.
    spec = GridSpec(model=str(tiny_sd15_dir), base=base_cell(loras=[LoraRef(assets["a"], 0.8)]), cols=[Axis("seed", [3, 4])],
                    batch_size=1, base_distance=False)  # fmt: skip
    result = render_grid(spec, tmp_path / "single", pipeline=pipe, progress=False)
    image, text = render_cell(result.manifest_path, 1, alone=True)
    assert png_bytes(image, text) == (result.out_dir / "cells/001.png").read_bytes()


def test_existing_grid_is_not_overwritten_without_the_flag(main_grid, pipe):
    spec = GridSpec(base=base_cell(), cols=[Axis("seed", [1])])
    before = main_grid.grid_path.read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        render_grid(spec, main_grid.out_dir, pipeline=pipe, progress=False)
    assert main_grid.grid_path.read_bytes() == before


@pytest.mark.parametrize("axis, message", [
    (Axis("steps", [4, 0]), r"grid cell 0 steps: steps must be >= 1, got 0"),
    (Axis("cfg", [-1.0]), r"cfg must be >= 0"),
    (Axis("seed", [3, -1]), r"grid cell seed -1: seed must be >= 0"),
    (Axis("clip_skip", [0]), r"clip_skip must be >= 1"),
    (Axis("cfg", [7.0, float("inf")]), r"cfg must be >= 0 and finite, got inf"),  # rendered nan (black) pictures
    (Axis("seed", ["1", ""]), r"grid axis seed: expected an integer for each value, got ''"),  # was an internal ValueError
    (Axis("steps", ["4", "1e9"]), r"grid axis steps: expected an integer for each value, got '1e9'"),
    (Axis("control_scale", ["0.5"], target="abc"), r"grid axis control_scale:abc: no such ControlNet"),
])
def test_a_cell_no_pipeline_can_render_is_refused_before_the_old_grid_goes(main_grid, pipe, axis, message):
    """0 steps gave noise, a negative CFG no guidance, clip skip 0 clip skip 1, all silently: refused, naming the
    cell, and the grid already in the folder (replaced only with --overwrite) is left as it was."""
    before = sorted((main_grid.out_dir / "cells").glob("*.png"))
    with pytest.raises(UserError, match=message):
        render_grid(GridSpec(base=base_cell(), cols=[axis]), main_grid.out_dir, pipeline=pipe, overwrite=True, progress=False)
    assert sorted((main_grid.out_dir / "cells").glob("*.png")) == before
    with pytest.raises(UserError, match="batch size must be >= 1"):
        render_grid(GridSpec(base=base_cell(), cols=[Axis("seed", [1])], batch_size=0), main_grid.out_dir, pipeline=pipe,
                    overwrite=True, progress=False)


def test_broken_or_foreign_lora_files_are_one_line_naming_the_file(tiny_sd15_dir, assets, tmp_path):
    """diffusers' loader raised SafetensorError, RuntimeError (a shape of another model) or, for a file without
    tensors, ValueError from set_adapters: each was an internal error of `lora-kit grid`."""
    from safetensors.torch import load_file, save_file

    fresh = LoraPipeline.load(str(tiny_sd15_dir))  # a failed load may leave a half-injected adapter behind
    good = Path(assets["b"])
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    save_file({}, str(tmp_path / "none.safetensors"))
    tensors = load_file(str(good))
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[down] = torch.zeros(tensors[down].shape[0], 7)  # rank fine, in-features of no module of this U-Net
    save_file(tensors, str(tmp_path / "other.safetensors"))
    for name, message in (("cut", "corrupt or truncated safetensors file"), ("none", "the file holds no tensors"),
                          ("other", "does not load into this model, a LoRA for another base model? (RuntimeError: ")):
        path = str(tmp_path / f"{name}.safetensors")
        with pytest.raises(UserError) as err:
            fresh.apply_loras([LoraRef(path, 1.0, name=name)])
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_lora_that_fails_to_load_mid_grid_leaves_no_folder_and_keeps_the_old_grid(pipe, assets, main_grid, tmp_path):
    """The checkpoint axis loads its files as it advances: a truncated second file failed after the old cells were
    removed and the --out folder made, so an empty folder (or a grid.json naming missing cells) was left behind."""
    good = Path(assets["b"])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    spec = GridSpec(base=base_cell(), cols=[Axis("checkpoint", [str(good), str(cut)], "", ["good", "cut"])], base_distance=False)
    with pytest.raises(UserError, match="corrupt or truncated safetensors file"):
        render_grid(spec, tmp_path / "new" / "grid", pipeline=pipe, progress=False)
    assert not (tmp_path / "new").exists()
    old = shutil.copytree(main_grid.out_dir, tmp_path / "old")
    before = {p.relative_to(old): p.read_bytes() for p in Path(old).rglob("*.png")}
    with pytest.raises(UserError, match="corrupt or truncated safetensors file"):
        render_grid(spec, old, pipeline=pipe, overwrite=True, progress=False)
    assert {p.relative_to(old): p.read_bytes() for p in Path(old).rglob("*.png")} == before and len(before) > 1
    # The pipeline was unfused and the good file dropped when the cut one came in: the same good cell again must
    # load and fuse it, not take the old state as still in place.
    pipe.apply_loras([LoraRef(str(good), 1.0)])
    assert pipe._fused and len(pipe._adapters) == 1


def test_a_nan_lora_weight_is_refused(pipe, assets, tmp_path):
    spec = GridSpec(base=base_cell(loras=[LoraRef(assets["a"], 1.0, name="style")]), cols=[Axis("weight", ["0", "nan"])])
    with pytest.raises(UserError, match=r"LoRA style: weight must be a finite number, got nan"):
        render_grid(spec, tmp_path / "g", pipeline=pipe, progress=False)
    assert not (tmp_path / "g").exists()


def test_an_out_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for out in ("notes.txt", "notes.txt/grid"):  # was an internal FileExistsError / NotADirectoryError
        with pytest.raises(UserError, match=r"notes.txt is a file; expected a folder for grid.png"):
            render_grid(GridSpec(base=base_cell()), tmp_path / out, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_html_is_self_contained(main_grid):
    html = main_grid.html_path.read_text()
    for c in main_grid.cells:
        assert f'src="{c["file"]}"' in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    assert "loaded " in html and 'href="grid.png"' in html


def test_controlnet_scale_axis_zero_equals_no_controlnet(pipe, assets, tmp_path):
    net = ControlRef(assets["cn"], assets["control"], scale=1.0)
    with_cn = render_grid(GridSpec(base=base_cell(controls=[net]), cols=[Axis("control_scale", [0.0, 1.0])]), tmp_path / "cn", pipeline=pipe, progress=False)
    plain = render_grid(GridSpec(base=base_cell(), cols=[Axis("seed", [1])]), tmp_path / "plain", pipeline=pipe, progress=False)
    zero, one = (np.asarray(Image.open(with_cn.out_dir / f"cells/00{i}.png").convert("RGB"), np.int16) for i in (0, 1))
    ref = np.asarray(Image.open(plain.out_dir / "cells/000.png").convert("RGB"), np.int16)
    assert np.array_equal(zero, ref) and np.abs(one - ref).mean() > 1.0
    parsed = parse_parameters(with_cn.cells[1]["parameters"])
    assert parsed["ControlNet 0"].startswith("Module: none, Model: cn, Weight: 1,")
    assert with_cn.cells[0]["col_label"] == "control 0"


def test_checkpoint_axis_compares_the_files_of_a_run(pipe, assets, tmp_path):
    paths, labels = discover_checkpoints(assets["run"])
    assert labels == ["step 100", "step 200", "final"]
    spec = GridSpec(base=base_cell(loras=[LoraRef("", 1.0, name="style")]), cols=[Axis("checkpoint", paths, "style", labels)], base_distance=False)
    result = render_grid(spec, tmp_path / "ck", pipeline=pipe, progress=False)
    assert [c["col_label"] for c in result.cells] == labels
    for c, path in zip(result.cells, paths):
        parsed = parse_parameters(c["parameters"])
        stem = Path(path).stem
        assert parsed["loras"] == {stem: 1.0} and parsed["Lora hashes"] == {stem: autov2(path)}
    imgs = [np.asarray(Image.open(result.out_dir / c["file"]), np.int16) for c in result.cells]
    assert np.abs(imgs[0] - imgs[1]).mean() > 1.0 and np.abs(imgs[1] - imgs[2]).mean() > 1.0
    assert len(pipe._adapters) == 1  # earlier checkpoints unloaded as the axis advanced
    assert str(Path(assets["run"])) not in result.manifest_path.read_text()  # checkpoint paths stored relative


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from lora_kit.models.tokenizer import write_clip_tokenizer

    d = tmp_path_factory.mktemp("clip")
    import torch

    torch.manual_seed(5)  # a seed whose random projections give positive similarities (the score clamps at 0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(d)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(d / "tok"))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(d)
    return str(d)


def test_clip_score_per_cell(pipe, tiny_clip, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    spec = GridSpec(base=base_cell(), rows=[Axis("prompt", ["a red star", "a blue moon"])], clip_model=tiny_clip)
    result = render_grid(spec, tmp_path / "clip", pipeline=pipe, progress=False)
    model, proc = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    images = [Image.open(result.out_dir / c["file"]).convert("RGB") for c in result.cells]
    with torch.no_grad():
        res = model(**proc(text=["a red star", "a blue moon"], images=images, return_tensors="pt", padding=True))
    cos = torch.nn.functional.cosine_similarity(res.image_embeds, res.text_embeds).clamp(min=0) * 100
    got = [c["metrics"]["clip_score"] for c in result.cells]
    assert got == pytest.approx(cos.tolist(), abs=1e-3) and min(got) > 10
    swapped = torch.nn.functional.cosine_similarity(res.image_embeds, res.text_embeds.flip(0)).clamp(min=0) * 100
    assert got != pytest.approx(swapped.tolist(), abs=1e-3)  # each image is scored against its own prompt


def test_cli_grid_and_rerender(tiny_sd15_dir, assets, tmp_path, capsys):
    from lora_kit.cli import main

    out = tmp_path / "cli"
    argv = ["grid", "--model", str(tiny_sd15_dir), "--lora", f"{assets['a']}:0.8", "--prompt", "a star",
            "--seed", "1", "--seed", "2", "--steps", "3", "--sampler", "euler_a", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = load_manifest(out)
    assert [c["col_label"] for c in m["cells"]] == ["weight 0, seed 1", "weight 0, seed 2", "weight 0.5, seed 1",
                                                    "weight 0.5, seed 2", "weight 1, seed 1", "weight 1, seed 2"]  # fmt: skip
    assert parse_parameters(m["cells"][5]["parameters"])["Sampler"] == "Euler a"
    assert json.loads((out / "grid.json").read_text())["model"]["source"].startswith("..")
    assert main(argv) == 2 and "overwrite" in capsys.readouterr().err
    assert main([*argv[:-2], "--out", str(tmp_path / "zero"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err and not (tmp_path / "zero").exists()
    assert main([*argv[:-2], "--out", str(tmp_path / "odd"), "--size", "60x64"]) == 2
    assert "--size '60x64': width must be a multiple of 8" in capsys.readouterr().err and not (tmp_path / "odd").exists()
    assert main(["grid", "--out", str(out), "--rerender", "3"]) == 0
    assert "identical bytes" in capsys.readouterr().out


def test_a_batch_mixes_prompts_and_each_cell_still_reproduces(pipe, assets, tmp_path):
    """Cells that differ by prompt share one pipeline call (the demo renders a whole column at once); the
    manifest records each batch's prompts, so a cell re-renders byte-for-byte, and a cell's image matches
    the same cell rendered in a batch of one prompt within one pixel level."""
    spec = GridSpec(model=pipe.model.source, base=base_cell(loras=[LoraRef(assets["a"], 0.8)]),
                    rows=[Axis("prompt", ["a star", "a red circle"])], cols=[Axis("seed", [3, 4])],
                    batch_size=4, base_distance=False)
    result = render_grid(spec, tmp_path / "mixed", pipeline=pipe, progress=False)
    batch = result.manifest["cells"][0]["batch"]
    assert len(batch["seeds"]) == 4 and {p[0] for p in batch["prompts"]} == {"a star", "a red circle"}
    for index in range(4):
        image, text = render_cell(result.manifest_path, index, pipeline=pipe)
        assert png_bytes(image, text) == (result.out_dir / result.cells[index]["file"]).read_bytes()
    alone, _ = render_cell(result.manifest_path, 3, alone=True, pipeline=pipe)
    saved = Image.open(result.out_dir / result.cells[3]["file"]).convert("RGB")
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(saved, np.int16)).max() <= 1
