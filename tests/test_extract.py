"""`lora-kit extract`: a tiny model with a known low-rank update merged in gives that update back."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lora_kit.adapters import io
from lora_kit.cli import main

# (component, module path, rank of the update): a Linear, a 1x1 conv projection, a 3x3 ResNet conv, CLIP
UPDATES = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 2),
    ("unet", "up_blocks.1.attentions.0.proj_in", 1),
    ("unet", "down_blocks.0.resnets.0.conv1", 3),
    ("text_encoder", "encoder.layers.1.self_attn.v_proj", 2),
]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_sd15_dir):
    """The tiny SD1 model with seeded low-rank updates merged into four modules, saved as a diffusers folder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
    gen = torch.Generator().manual_seed(7)
    known = {}
    with torch.no_grad():
        for comp, path, r in UPDATES:
            w = getattr(pipe, comp).get_submodule(path).weight
            flat = w.reshape(w.shape[0], -1)
            delta = (torch.randn(flat.shape[0], r, generator=gen) @ torch.randn(r, flat.shape[1], generator=gen)) * 0.05
            w.add_(delta.reshape(w.shape))
            known[(comp, path)] = delta.reshape(w.shape)
    out = tmp_path_factory.mktemp("tuned") / "model"
    pipe.save_pretrained(out)
    return out, known


def _module_deltas(parsed) -> dict:
    out = {}
    for comp, mod, parts in parsed.modules():
        down, up = parts["lora_A"].float(), parts["lora_B"].float()
        delta = parsed.scale(f"{comp}.{mod}") * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1))
        out[(comp, mod.removeprefix("text_model."))] = (delta.reshape(up.shape[0], *down.shape[1:]), down.shape[0])
    return out


def test_extract_recovers_a_known_low_rank_update(tmp_path, tuned, tiny_sd15_dir, capsys):
    model, known = tuned
    out = tmp_path / "x.safetensors"
    assert main(["extract", str(model), str(tiny_sd15_dir), str(out), "--rank", "4", "--precision", "fp32"]) == 0
    assert "extracted 4 modules" in capsys.readouterr().out
    parsed = io.read_lora_file(out)
    assert parsed.source_format == "kohya" and parsed.family == "sd1"
    got = _module_deltas(parsed)
    assert got.keys() == known.keys()  # unchanged modules are left out
    for key, delta in known.items():
        assert torch.allclose(got[key][0], delta, atol=1e-5 * float(delta.abs().max())), key
        assert got[key][1] == min(4, *delta.reshape(delta.shape[0], -1).shape)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in keys  # kohya names: A1111/ComfyUI map them
    assert "lora_te_text_model_encoder_layers_1_self_attn_v_proj.alpha" in keys
    assert meta["ss_base_model_version"] == "sd_v1" and str(tmp_path) not in str(meta)


def test_threshold_gives_each_module_its_own_rank_and_merges_back(tmp_path, tuned, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    from lora_kit.adapters.tools.merge import merge_loras

    model, known = tuned
    out = tmp_path / "t.safetensors"
    assert main(["extract", str(model), str(tiny_sd15_dir), str(out), "--threshold", "1e-3", "--precision", "fp32"]) == 0
    parsed = io.read_lora_file(out)
    ranks = {k: v[1] for k, v in _module_deltas(parsed).items()}
    assert ranks == {(c, p): r for c, p, r in UPDATES}  # the true ranks, found by the threshold
    assert parsed.metadata["ss_network_dim"] == "Dynamic"
    merged = merge_loras(str(tiny_sd15_dir), [(str(out), 1.0)], tmp_path / "merged")
    a = StableDiffusionPipeline.from_pretrained(merged, safety_checker=None, requires_safety_checker=False)
    b = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    for comp, path, _ in UPDATES:  # base + extracted LoRA, through diffusers' loader = the tuned model
        wa, wb = getattr(a, comp).get_submodule(path).weight, getattr(b, comp).get_submodule(path).weight
        assert torch.allclose(wa, wb, atol=1e-5), path


def test_extract_refuses_bad_arguments(tmp_path, tiny_sd15_dir, capsys):
    out = str(tmp_path / "o.safetensors")
    assert main(["extract", str(tiny_sd15_dir), str(tiny_sd15_dir), out]) == 2
    assert "--rank R, --threshold T" in capsys.readouterr().err
    assert main(["extract", str(tiny_sd15_dir), str(tiny_sd15_dir), out, "--rank", "2"]) == 2
    assert "identical" in capsys.readouterr().err


@pytest.mark.parametrize("min_diff", ["-1", "nan"])
def test_extract_refuses_a_negative_min_diff(tmp_path, tiny_sd15_dir, capsys, min_diff):
    """--min-diff -1 (or nan) kept every module: the same model twice gave a file of 97 all-zero modules
    reported as 'energy kept 1.0000' instead of 'identical'."""
    out = tmp_path / "o.safetensors"
    assert main(["extract", str(tiny_sd15_dir), str(tiny_sd15_dir), str(out), "--rank", "2", "--min-diff", min_diff]) == 2
    assert f"--min-diff must be a number >= 0 (0: leave out identical modules), got {float(min_diff)}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("out, extra, message", [
    ("lora.ckpt", [], "lora.ckpt: expected the path of a .safetensors file to write (got .ckpt)"),
    ("lora", [], "lora: expected the path of a .safetensors file to write (got no extension)"),
    ("folder.safetensors", ["--force"], "folder.safetensors is a folder; expected the path of the .safetensors file to write"),
    ("notes.txt/lora.safetensors", [], "notes.txt is a file"),
    ("model.safetensors", ["--force"], "model.safetensors is one of the inputs; write the LoRA to another file"),
])
def test_extract_checks_out_before_loading_the_models(tmp_path, tiny_sd15_dir, capsys, out, extra, message):
    """These were found after both models loaded and the SVD ran (or, for a .ckpt name, not at all: a
    safetensors file named .ckpt was written), and OUT = TUNED with --force replaced the user's model."""
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "model.safetensors").write_bytes(b"a model")
    tuned = tmp_path / "model.safetensors" if out == "model.safetensors" else tiny_sd15_dir
    assert main(["extract", str(tuned), str(tiny_sd15_dir), str(tmp_path / out), "--rank", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "extracting" not in err
    assert (tmp_path / "model.safetensors").read_bytes() == b"a model" and not (tmp_path / "lora.ckpt").exists()


def test_sdxl_extract_writes_stability_names_that_read_back(tmp_path):
    from types import SimpleNamespace

    from lora_kit.adapters.io import write_kohya_lora
    from lora_kit.adapters.tools.extract import extract
    from lora_kit.models.presets import build_components

    base, tuned = build_components("tiny-sdxl", seed=0), build_components("tiny-sdxl", seed=0)
    mods = [("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"), ("unet", "up_blocks.0.resnets.1.time_emb_proj"),
            ("unet", "down_blocks.0.downsamplers.0.conv"), ("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1")]  # CLIPTextModelWithProjection keeps text_model
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for comp, path in mods:
            w = tuned[comp].get_submodule(path).weight
            w.add_(torch.randn(w.shape, generator=gen) * 0.01)
    bundle = lambda c: SimpleNamespace(unet=c["unet"], text_encoders=[c["text_encoder"], c["text_encoder_2"]], family="sdxl")  # noqa: E731
    parsed, report = extract(bundle(tuned), bundle(base), rank=2, threshold=None, conv_rank=None)
    assert {k for k, *_ in report} == {f"{c}.{p}" for c, p in mods}
    out = write_kohya_lora(tmp_path / "xl.safetensors", parsed, precision="fp32")
    keys = {k.split(".")[0] for k in io.load_lora_file(out)[0]}
    # tiny SDXL: layers_per_block 1, so down block i layer j is input_blocks.{1 + 2i + j} (docs/formats.md)
    assert keys == {"lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k", "lora_unet_output_blocks_1_0_emb_layers_1",
                    "lora_unet_input_blocks_2_0_op", "lora_te2_text_model_encoder_layers_0_mlp_fc1"}
    back = io.read_lora_file(out)  # the tiny layout is recorded in the file
    assert {(c, m) for c, m, _ in back.modules()} == {(c, m) for c, m, _ in parsed.modules()}
