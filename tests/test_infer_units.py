"""Pure pieces of lora_kit.infer: sampler names, A1111 text, Canny, layout arithmetic, axes, CLI parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_kit.errors import UserError
from lora_kit.infer import parameters as P
from lora_kit.infer.axes import apply_axis, discover_checkpoints, value_label
from lora_kit.infer.control import canny, canny_numpy, prepare_control_image, resize_cover
from lora_kit.infer.render import compose_grid, font_size_for, plan_layout, png_bytes
from lora_kit.infer.schedulers import SAMPLERS, canonical_sampler_name, get_sampler, make_scheduler
from lora_kit.infer.spec import Axis, CellParams, ControlRef, LoraRef, cell_from_dict, cell_to_dict

# ---------------------------------------------------------------------------- samplers


@pytest.mark.parametrize(
    "slug,name",
    [("dpm++2m", "DPM++ 2M"), ("DPM++ 2M Karras", "DPM++ 2M Karras"), ("dpmpp_2m_karras", "DPM++ 2M Karras"),
     ("euler_a", "Euler a"), ("Euler a", "Euler a"), ("euler", "Euler"), ("ddim", "DDIM"), ("unipc", "UniPC"),
     ("heun", "Heun"), ("lms", "LMS"), ("pndm", "PNDM"), ("dpm++_2m_sde", "DPM++ 2M SDE")],
)  # fmt: skip
def test_sampler_names_and_slugs(slug, name):
    assert canonical_sampler_name(slug) == name


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(UserError, match="DPM\\+\\+ 2M Karras"):
        get_sampler("dpm++ 9000")


def test_scheduler_classes_and_karras_flag():
    from diffusers import DDPMScheduler

    base = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1).config
    karras = make_scheduler("DPM++ 2M Karras", base)
    plain = make_scheduler("dpm++2m", base)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler" and karras.config.use_karras_sigmas
    assert not plain.config.use_karras_sigmas and plain.config.algorithm_type == "dpmsolver++"
    assert type(make_scheduler("euler_a", base)).__name__ == "EulerAncestralDiscreteScheduler"
    assert make_scheduler("ddim", base).config.beta_schedule == "scaled_linear"  # model config carried over
    assert {"DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a", "DDIM", "UniPC", "Heun", "LMS", "PNDM"} <= set(SAMPLERS)


# ---------------------------------------------------------------------------- A1111 parameters


def test_parameters_format_exact_and_round_trip():
    text = P.format_parameters(
        "a star, glowing", "blurry",
        {"Steps": 20, "Sampler": "DPM++ 2M", "CFG scale": P.fmt_number(7.0), "Seed": 1, "Size": "64x64", "Model": "tiny-sd15"},
        [("style", 0.5, "0123456789"), ("off", 0.0, "ffffffffff"), ("other", 1.0, "abcdefabcd")],
    )  # fmt: skip
    assert text == (
        "a star, glowing <lora:style:0.5> <lora:other:1>\nNegative prompt: blurry\n"
        'Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64, Model: tiny-sd15, '
        'Lora hashes: "style: 0123456789, other: abcdefabcd"'
    )
    parsed = P.parse_parameters(text)
    assert parsed["Prompt"] == "a star, glowing <lora:style:0.5> <lora:other:1>"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "20" and parsed["Sampler"] == "DPM++ 2M" and parsed["CFG scale"] == "7"
    assert parsed["loras"] == {"style": 0.5, "other": 1.0}
    assert parsed["Lora hashes"] == {"style": "0123456789", "other": "abcdefabcd"}
    assert P.strip_lora_tags(parsed["Prompt"]) == "a star, glowing"


def test_parameters_quote_controlnet_field_and_no_negative():
    cn = P.controlnet_field("canny", "cn-tiny", 0.5, 0.0, 0.8, (100, 200))
    text = P.format_parameters("x", "", {"Steps": 4, "Sampler": "Euler", "Seed": 3, "ControlNet 0": cn})
    assert "Negative prompt" not in text
    assert text.splitlines()[1] == 'Steps: 4, Sampler: Euler, Seed: 3, ControlNet 0: "' + cn + '"'
    assert P.parse_parameters(text)["ControlNet 0"] == cn


# ---------------------------------------------------------------------------- control images


def _square(size=64, lo=20, hi=44) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[lo:hi, lo:hi] = 255
    return Image.fromarray(a)


def test_canny_numpy_finds_the_square_outline():
    edges = np.asarray(canny(_square(), 100, 200, backend="numpy"))[..., 0] > 0
    ys, xs = np.nonzero(edges)
    # Every edge pixel lies within 1 px of the square's boundary (rows/cols 19.5 and 43.5).
    dist = np.minimum(np.minimum(np.abs(ys - 19.5), np.abs(ys - 43.5)), np.minimum(np.abs(xs - 19.5), np.abs(xs - 43.5)))
    inside_band = (ys >= 18) & (ys <= 45) & (xs >= 18) & (xs <= 45)
    assert inside_band.all() and (dist <= 1.0).all()
    # All four sides are found along their middle part, and the lines are thin (NMS).
    for line in (edges[19:21, 24:40], edges[43:45, 24:40], edges[24:40, 19:21].T, edges[24:40, 43:45].T):
        assert line.any(axis=0).all()
    assert edges[24:40, 24:40].sum() == 0 and edges[:10].sum() == 0
    assert edges[30, :].sum() == 2  # one pixel per side on a scan line


def test_canny_hysteresis_keeps_weak_edges_only_when_connected():
    # One vertical edge whose contrast fades from 255 (top) to 40 (bottom): after blur + Sobel the
    # magnitude goes from ~554 to ~87, crossing the high threshold (300) around row 34.
    left = np.linspace(0, 215, 64)[:, None].repeat(32, axis=1)  # slow ramp: gradient ~27, below low
    a = np.concatenate([left, np.full((64, 32), 255.0)], axis=1)
    a[40:56, 4:12] += 40  # weak isolated patch (magnitude ~87)
    a = a.round().astype(np.uint8)
    edges = canny_numpy(a, 50, 300)
    assert edges[2:62, 30:34].any(axis=1).all()  # whole edge kept: weak bottom is connected to strong top
    assert not edges[:, :20].any()  # isolated weak patch dropped
    assert canny_numpy(a, 50, 80)[:, :20].any()  # ...kept once it counts as strong itself
    strong_only = canny_numpy(a, 300, 300)
    assert strong_only[2:20, 30:34].any(axis=1).all() and not strong_only[50:62, 30:34].any()


def test_prepare_control_image_crops_and_resizes(tmp_path):
    wide = Image.new("RGB", (200, 100), "white")
    wide.paste((255, 0, 0), (0, 0, 50, 100))  # red band on the far left: cropped away by centre crop
    out = resize_cover(wide, 64, 64)
    assert out.size == (64, 64) and np.asarray(out)[:, :, 1].min() > 200
    path = tmp_path / "mask.png"
    _square(128, 40, 88).save(path)
    img = prepare_control_image(path, 64, 48)
    assert img.size == (64, 48) and img.mode == "RGB"
    edges = prepare_control_image(path, 64, 64, "canny")
    assert set(np.unique(np.asarray(edges))) <= {0, 255} and np.asarray(edges).any()
    with pytest.raises(UserError):
        prepare_control_image(path, 64, 64, "depth-midas")


# ---------------------------------------------------------------------------- layout


def test_font_scales_with_cell():
    assert font_size_for(64, 64) == 12 and font_size_for(512, 512) == 32 and font_size_for(1024, 768) == 48


@pytest.mark.parametrize("cell", [64, 512])
def test_layout_arithmetic_and_cells_pasted_exactly(cell):
    rows, cols = ["seed 1", "a long prompt that has to wrap over several lines"], ["w 0", "w 0.5", "w 1"]
    lay = plan_layout(rows, cols, cell, cell)
    assert lay.label_width > 0 and lay.label_height > 0
    assert (lay.width, lay.height) == (lay.label_width + 3 * cell, lay.label_height + 2 * cell)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (cell, cell, 3), dtype=np.uint8)) for _ in range(6)]
    grid = compose_grid(imgs, lay, rows, cols, corner="rows / cols")
    assert grid.size == (lay.width, lay.height)
    for i, im in enumerate(imgs):
        assert np.array_equal(np.asarray(grid.crop(lay.cell_box(*divmod(i, 3)))), np.asarray(im))
    band = np.asarray(grid.crop((lay.label_width, 0, lay.width, lay.label_height)))
    assert (band < 128).any()  # label text drawn


def test_layout_without_axes_has_no_label_bands():
    lay = plan_layout([""], [""], 64, 64)
    assert (lay.label_width, lay.label_height, lay.width, lay.height) == (0, 0, 64, 64)


def test_png_bytes_carry_parameters_and_are_deterministic():
    im = Image.new("RGB", (8, 8), "red")
    data = png_bytes(im, "a star\nSteps: 1, Sampler: Euler, Seed: 2")
    assert data == png_bytes(im, "a star\nSteps: 1, Sampler: Euler, Seed: 2")
    import io

    assert Image.open(io.BytesIO(data)).text["parameters"].startswith("a star")


# ---------------------------------------------------------------------------- axes and specs


def test_apply_axis_kinds():
    base = CellParams(prompt="p", loras=[LoraRef("a.safetensors"), LoraRef("b.safetensors", 0.3)], controls=[ControlRef("cn", "x.png"), ControlRef("cn2", "y.png")])
    c = apply_axis(base, Axis("weight", [0.0, 0.7], target="b"), 1)
    assert [lo.weight for lo in c.loras] == [1.0, 0.7] and base.loras[1].weight == 0.3
    assert [lo.weight for lo in apply_axis(base, Axis("weight", [0.25]), 0).loras] == [0.25, 0.25]
    assert apply_axis(base, Axis("control_scale", [0.5], target="1"), 0).controls[1].scale == 0.5
    assert apply_axis(base, Axis("sampler", ["euler_a"]), 0).sampler == "Euler a"
    assert apply_axis(base, Axis("cfg", ["4.5"]), 0).cfg == 4.5
    ck = apply_axis(base, Axis("checkpoint", ["x/s-100.safetensors"], target="a", labels=["step 100"]), 0)
    assert ck.loras[0].path == "x/s-100.safetensors" and ck.loras[0].label == "step 100" and ck.loras[0].name == "a"
    with pytest.raises(UserError, match="no LoRA named"):
        apply_axis(base, Axis("weight", [1.0], target="zzz"), 0)
    with pytest.raises(UserError):
        Axis("colour", [1])
    assert value_label(Axis("weight", [0.5], target="style"), 0) == "style: 0.5"
    assert value_label(Axis("cfg", [7.0]), 0) == "CFG 7"


def test_cell_dict_round_trip_uses_relative_paths(tmp_path):
    lora = tmp_path / "loras" / "style.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"x")
    out = tmp_path / "grids" / "g1"
    out.mkdir(parents=True)
    cell = CellParams(prompt="p", loras=[LoraRef(str(lora), 0.5)], controls=[ControlRef("org/hub-controlnet", str(lora))])
    d = cell_to_dict(cell, out)
    assert d["loras"][0]["path"] == "../../loras/style.safetensors"
    assert d["controls"][0]["model"] == "org/hub-controlnet"
    assert not any(str(tmp_path) in v for v in json.dumps(d).split('"'))
    back = cell_from_dict(d, out)
    assert Path(back.loras[0].path).resolve() == lora.resolve() and back.loras[0].weight == 0.5


def _fake_lora(path: Path, keys=("lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight", "lora_unet_x.alpha")):
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(1) for k in keys}, str(path))


def test_discover_checkpoints_orders_steps_and_prefers_kohya(tmp_path):
    run = tmp_path / "run"
    _fake_lora(run / "style.safetensors")  # final kohya file
    _fake_lora(run / "pytorch_lora_weights.safetensors", ("unet.x.lora_A.weight", "unet.x.lora_B.weight"))
    _fake_lora(run / "exports" / "style-step000200.safetensors")
    _fake_lora(run / "exports" / "style-step000200_diffusers.safetensors", ("unet.x.lora_A.weight",))
    _fake_lora(run / "exports" / "style-step000050_diffusers.safetensors", ("unet.x.lora_A.weight",))
    _fake_lora(run / "checkpoint-000100" / "model.safetensors", ("conv_in.weight", "unet.x.lora_A.weight"))  # not a LoRA
    paths, labels = discover_checkpoints(run)
    names = [Path(p).relative_to(run).as_posix() for p in paths]
    assert names == ["exports/style-step000050_diffusers.safetensors", "exports/style-step000200.safetensors", "style.safetensors"]
    assert labels == ["step 50", "step 200", "final"]
    with pytest.raises(UserError):
        discover_checkpoints(tmp_path / "missing")


# ---------------------------------------------------------------------------- CLI parsing


def test_cli_axis_parsing_and_implicit_axes(tmp_path):
    from lora_kit.cli import build_parser
    from lora_kit.infer.command import build_spec, parse_axis, parse_size

    assert parse_size("64x48") == (64, 48) and parse_size("512") == (512, 512)
    with pytest.raises(UserError):
        parse_size("63x64")
    ax = parse_axis("prompt=a star, red|a moon", [], [])
    assert ax.values == ["a star, red", "a moon"]
    assert parse_axis("weight:style=0,0.5", [], []).target == "style"
    assert parse_axis("seed", ["p"], [1, 2]).values == [1, 2]
    lora = tmp_path / "style.safetensors"
    _fake_lora(lora)
    args = build_parser("grid").parse_args(
        ["grid", "--lora", f"{lora}:0.8", "--prompt", "a", "--prompt", "b", "--seed", "1", "--seed", "2", "--out", str(tmp_path / "g")]
    )
    spec = build_spec(args)
    assert spec.base.loras[0].weight == 0.8 and spec.base.loras[0].name == "style"
    assert [a.kind for a in spec.rows] == ["prompt"] and [a.kind for a in spec.cols] == ["weight", "seed"]
    assert spec.cols[0].values == [0.0, 0.5, 1.0]
    with pytest.raises(UserError, match="does not exist"):
        build_spec(build_parser("grid").parse_args(["grid", "--lora", "nope.safetensors", "--out", "x"]))
    with pytest.raises(UserError, match="--prompt"):
        build_spec(build_parser("grid").parse_args(["grid", "--out", "x"]))
    only_axis = build_spec(build_parser("grid").parse_args(["grid", "--y", "prompt=a|b", "--out", "x"]))
    assert only_axis.rows[0].values == ["a", "b"] and only_axis.cols == []
