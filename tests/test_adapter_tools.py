"""`lora-kit info / convert / merge / resize` through the real CLI entry point (tiny models, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lora_kit.adapters import formats, io, metadata as md
from lora_kit.adapters.tools.merge import parse_lora_arg
from lora_kit.adapters.tools.resize import overall_energy, resize_parsed
from lora_kit.cli import main
from lora_kit.errors import UserError


def random_parsed(model, suffixes, rank, seed, alpha, family="sd1", config=None):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(suffixes):
            sd[f"{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g)
            sd[f"{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g)
    return formats.from_peft(sd, [], alpha, family, config)


@pytest.fixture(scope="module")
def comps():
    from lora_kit.models.presets import build_components

    return {"sd15": build_components("tiny-sd15", 0), "sdxl": build_components("tiny-sdxl", 0)}


@pytest.fixture()
def kohya_file(comps, tmp_path):
    parsed = random_parsed(comps["sd15"]["unet"], ("to_q", "to_k", "to_v", "to_out.0"), 8, 0, 4.0)
    meta = md.build_kohya_metadata({"family": "sd1", "rank": 8, "alpha": 4, "output_name": "cube", "steps": 100})
    return io.write_kohya_lora(tmp_path / "cube.safetensors", parsed, meta, precision="fp32")


def test_info_text_and_json(kohya_file, capsys):
    assert main(["info", str(kohya_file)]) == 0
    text = capsys.readouterr().out
    assert "format      kohya   family sd1" in text
    assert "rank 8    alpha 4        scale 0.5" in text
    assert "sshs_model_hash match, legacy match" in text and "ss_output_name" in text
    assert main(["info", str(kohya_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modules"] == 32 and info["hash_check"]["status"] == "match"
    tensors, _ = io.load_lora_file(kohya_file)
    assert info["parameters"] == sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha"))
    assert {e["scale"] for g in info["groups"].values() for e in g} == {0.5}


def test_info_reports_tampered_tensor_data(kohya_file, capsys):
    raw = bytearray(kohya_file.read_bytes())
    raw[-1] ^= 0xFF  # flip bits of the last tensor byte, header untouched
    kohya_file.write_bytes(bytes(raw))
    assert main(["info", str(kohya_file)]) == 1
    assert "sshs_model_hash MISMATCH" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    torch.save({"a": torch.ones(1)}, tmp_path / "x.ckpt")
    assert main(["info", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pickle" in err and "Traceback" not in err


@pytest.mark.parametrize("break_it, expected", [
    (lambda k, v: v[:, :3].contiguous() if k.endswith("lora_up.weight") else v, "lora_down rank 8 and lora_up rank 3 differ"),
    (lambda k, v: v.to(torch.int32) if "weight" in k else v, "expected floating-point weights (such as float16 or float32), got torch.int32"),
    (lambda k, v: v.flatten() if k.endswith("lora_down.weight") else v, "expected 2-D (linear) or 4-D (conv) weights of the same kind"),
    (lambda k, v: torch.ones(3) if k.endswith(".alpha") else v, ".alpha: expected one number (the module's alpha), got a tensor of shape [3]"),
    (lambda k, v: torch.tensor(float("nan")) if k.endswith(".alpha") else v, ".alpha: expected a finite alpha, got nan"),
    (lambda k, v: v * float("inf") if k.endswith("lora_up.weight") else v, "the weights hold nan or inf (saved from a diverged run?)"),
])
def test_broken_modules_are_named_by_every_reader(kohya_file, tmp_path, capsys, break_it, expected):
    """Mismatched ranks, integer or 1-D weights, a vector or nan alpha: one line naming file and module from
    info, convert and resize (they were an internal ValueError, or a broken file written without a word)."""
    from safetensors.torch import save_file

    tensors, meta = io.load_lora_file(kohya_file)
    bad = tmp_path / "bad.safetensors"
    save_file({k: break_it(k, v) for k, v in tensors.items()}, str(bad), metadata=meta)
    for args in (["info"], ["convert", "--to", "diffusers"], ["resize", "--rank", "2"]):
        out = [str(tmp_path / "out.safetensors")] if args[0] != "info" else []
        assert main([*args, str(bad), *out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lora-kit {args[0]}: error: bad.safetensors: ") and expected in err and err.count("\n") == 1, err
        assert not (tmp_path / "out.safetensors").exists()


def test_convert_round_trip_and_no_silent_overwrite(kohya_file, tmp_path):
    assert main(["convert", str(kohya_file), "--to", "diffusers", str(tmp_path / "d")]) == 0
    dfile = tmp_path / "d" / io.DIFFUSERS_WEIGHT_NAME
    assert main(["convert", str(dfile), "--to", "kohya", str(tmp_path / "k.safetensors")]) == 0
    a, ma = io.load_lora_file(kohya_file)
    b, mb = io.load_lora_file(tmp_path / "k.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert mb["ss_output_name"] == "cube" and mb["sshs_model_hash"] == ma["sshs_model_hash"]
    assert main(["convert", str(dfile), "--to", "kohya", str(tmp_path / "k.safetensors")]) == 2
    assert main(["convert", str(dfile), "--to", "kohya", str(tmp_path / "k.safetensors"), "--force", "--precision", "fp16"]) == 0
    assert io.load_lora_file(tmp_path / "k.safetensors")[0]["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"].dtype == torch.float16


def test_output_path_that_is_a_folder_or_under_a_file_is_one_line(kohya_file, tmp_path, capsys):
    """Was an internal IsADirectoryError (with --force) or FileExistsError / NotADirectoryError; a .ckpt name
    was written as a safetensors file under that name."""
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "folder.safetensors" / "keep.txt").write_text("mine")
    cases = [("folder.safetensors", "folder.safetensors is a folder; expected the path of the .safetensors file to write"),
             ("cube.safetensors/x.safetensors", "cannot create the folder"),
             ("cube.safetensors/sub/x.safetensors", f"{kohya_file} is a file"),
             ("small.ckpt", "small.ckpt: expected the path of a .safetensors file to write (got .ckpt)")]
    for out, expected in cases:
        for cmd in (["convert", "--to", "kohya"], ["resize", "--rank", "2"]):
            assert main([*cmd, str(kohya_file), str(tmp_path / out), "--force"]) == 2
            errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
            assert len(errors) == 1 and expected in errors[0], errors
    assert (tmp_path / "folder.safetensors" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "small.ckpt").exists()


def test_convert_sdxl_layout_from_file_or_base(comps, tiny_sdxl_dir, tmp_path):
    unet = comps["sdxl"]["unet"]
    parsed = random_parsed(unet, ("to_q", "to_out.0"), 4, 1, 2.0, "sdxl", dict(unet.config))
    src = io.write_diffusers_lora(tmp_path / "src.safetensors", parsed, precision="fp32")
    # diffusers -> kohya needs the layout: --base gives it (the real SDXL default would be wrong for tiny)
    assert main(["convert", str(src), "--to", "kohya", str(tmp_path / "k.safetensors"), "--base", str(tiny_sdxl_dir)]) == 0
    k, meta = io.load_lora_file(tmp_path / "k.safetensors")
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in k
    assert json.loads(meta["lora_kit.unet_layout"])["layers_per_block"] == 1
    # ...and the recorded layout makes the way back need no --base
    assert main(["convert", str(tmp_path / "k.safetensors"), "--to", "diffusers", str(tmp_path / "back.safetensors")]) == 0
    back = io.read_lora_file(tmp_path / "back.safetensors")
    assert back.unet.keys() == parsed.unet.keys() and all(torch.equal(back.unet[x], parsed.unet[x]) for x in parsed.unet)
    assert back.alphas == parsed.alphas


def test_parse_lora_arg():
    assert parse_lora_arg("a.safetensors") == ("a.safetensors", 1.0)
    assert parse_lora_arg("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora_arg("C:\\x\\a.safetensors:-1") == ("C:\\x\\a.safetensors", -1.0)
    assert parse_lora_arg("C:\\x\\a.safetensors") == ("C:\\x\\a.safetensors", 1.0)
    for bad in ("nan", "inf", "-inf"):  # merged into a model of nan weights without a word
        with pytest.raises(UserError, match=f"a.safetensors:{bad}: expected a finite strength after the colon, got {bad}"):
            parse_lora_arg(f"a.safetensors:{bad}")


def test_merge_cli_writes_a_loadable_folder(kohya_file, tiny_sd15_dir, tmp_path, capsys):
    import diffusers

    out = tmp_path / "merged"
    assert main(["merge", str(tiny_sd15_dir), f"{kohya_file}:0.0", str(out)]) == 0
    assert main(["merge", str(tiny_sd15_dir), f"{kohya_file}:0.0", str(out)]) == 2  # exists, no --force
    merged = diffusers.UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    base = diffusers.UNet2DConditionModel.from_pretrained(tiny_sd15_dir, subfolder="unet")
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))  # scale 0


def test_merge_of_a_lora_that_does_not_fit_the_base_is_one_line(kohya_file, tiny_sd15_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    tensors, meta = io.load_lora_file(kohya_file)
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[down] = torch.zeros(tensors[down].shape[0], 7)  # in-features of no module of this U-Net
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=meta)
    assert main(["merge", str(tiny_sd15_dir), str(tmp_path / "other.safetensors"), str(tmp_path / "merged")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("lora-kit merge: error: other.safetensors: does not load into this model")
    assert not (tmp_path / "merged").exists()


def _delta(parsed, key):
    comp, mod = key.split(".", 1)
    sd = parsed.unet
    return parsed.scale(key) * (sd[f"{mod}.lora_B.weight"].double() @ sd[f"{mod}.lora_A.weight"].double())


def test_resize_full_rank_is_lossless(comps):
    parsed = random_parsed(comps["sd15"]["unet"], ("to_q", "to_k", "to_v", "to_out.0"), 8, 0, 4.0)
    new, reports = resize_parsed(parsed, 8)
    assert all(r.new_rank == 8 and r.energy == pytest.approx(1.0) for r in reports)
    for key in parsed.alphas:
        assert new.alphas[key] == parsed.alphas[key]
        assert torch.allclose(_delta(new, key), _delta(parsed, key), rtol=0, atol=1e-5 * _delta(parsed, key).abs().max().item())


def test_resize_lower_rank_error_is_within_reported_energy_bound(comps):
    parsed = random_parsed(comps["sd15"]["unet"], ("to_q", "to_k", "to_v", "to_out.0"), 8, 0, 4.0)
    new, reports = resize_parsed(parsed, 3)
    g = torch.Generator().manual_seed(5)
    for r in reports:
        old_d, new_d = _delta(parsed, r.module), _delta(new, r.module)
        assert new.alphas[r.module] / 3 == pytest.approx(parsed.alphas[r.module] / 8)  # strength kept
        err = torch.linalg.matrix_norm(old_d - new_d).item()
        bound = r.rel_error * torch.linalg.matrix_norm(old_d).item()
        assert err <= bound * (1 + 1e-6) + 1e-9 and err >= 0.999 * bound  # the bound is the exact error
        x = torch.randn(old_d.shape[1], 16, generator=g, dtype=torch.float64)
        out_err = torch.linalg.vector_norm((old_d - new_d) @ x, dim=0)
        assert bool((out_err <= bound * torch.linalg.vector_norm(x, dim=0) + 1e-9).all())
    assert 0.3 < overall_energy(reports) < 0.99


def test_resize_dynamic_energy_cli(kohya_file, tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["resize", str(kohya_file), str(out), "--rank", "6", "--dynamic-energy", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "overall energy kept" in printed
    old = io.read_lora_file(kohya_file)
    new = io.read_lora_file(out)
    _, reports = resize_parsed(old, 6, 0.8)
    for r in reports:
        assert r.energy >= 0.8 or r.new_rank == 6
        assert new.ranks[r.module] == r.new_rank <= 6
        assert new.alphas[r.module] / r.new_rank == pytest.approx(0.5)
    _, meta = io.load_lora_file(out)
    assert meta["ss_network_dim"] in ("Dynamic", *map(str, range(1, 7)))
    assert "dimension is dynamic resize" in meta["ss_training_comment"]
    from lora_kit.adapters.hashes import file_addnet_hash

    assert meta["sshs_model_hash"] == file_addnet_hash(out)
    assert math.isclose(sum(r.new_rank for r in reports) / len(reports), sum(new.ranks.values()) / len(new.ranks))
