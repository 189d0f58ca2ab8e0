"""State-dict converters, names, metadata, hashes and file I/O (no image generation; see test_formats_pipeline)."""

from __future__ import annotations

import hashlib
import json
import types

import pytest
import torch

from lora_kit.adapters import formats, hashes, io, metadata as md, names
from lora_kit.errors import UserError

SDXL_UNET = dict(
    sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, transformer_layers_per_block=(1, 2, 10),
    projection_class_embeddings_input_dim=2816, cross_attention_dim=2048,
)
SD15_UNET = dict(
    sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
ATTN = ("to_q", "to_k", "to_v", "to_out.0")


def meta_unet(cfg):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**cfg)


def lora_modules(model, kinds=(torch.nn.Linear, torch.nn.Conv2d)):
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def random_peft(model, suffixes, rank, seed, dtype=torch.float32):
    """A peft-layout state dict with random non-zero A and B for the Linear modules ending in `suffixes`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(suffixes):
            sd[f"{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g).to(dtype)
            sd[f"{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g).to(dtype)
    return sd


@pytest.fixture(scope="module")
def tiny15():
    from lora_kit.models.presets import build_components

    return build_components("tiny-sd15", seed=0)


@pytest.fixture(scope="module")
def tinyxl():
    from lora_kit.models.presets import build_components

    return build_components("tiny-sdxl", seed=0)


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("cfg", [SD15_UNET, SDXL_UNET], ids=["sd15", "sdxl"])
def test_every_unet_module_name_round_trips_through_kohya_underscores(cfg):
    mods = lora_modules(meta_unet(cfg))
    assert len(mods) > 250
    for path in mods:
        assert names.underscored_to_path(names.path_to_underscored(path)) == path


def test_every_clip_module_name_round_trips():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        te = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4))
    for path in lora_modules(te, torch.nn.Linear):
        assert names.underscored_to_path(names.path_to_underscored(path)) == path


def test_unknown_name_part_is_an_error():
    with pytest.raises(UserError, match="bogus"):
        names.underscored_to_path("down_blocks_0_bogus_to_q")


@pytest.mark.parametrize("which", ["real", "tiny"])
def test_sgm_names_agree_with_diffusers_reverse_mapping(which, tinyxl):
    """Our diffusers->Stability table, read back by diffusers' own kohya loader code, gives every module back."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers, _maybe_map_sgm_blocks_to_diffusers
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    unet = meta_unet(SDXL_UNET) if which == "real" else tinyxl["unet"]
    layout = names.layout_from_config(dict(unet.config))
    mods = lora_modules(unet)
    sd = {}
    for path in mods:
        sgm = names.diffusers_to_sgm(path, layout)
        assert names.sgm_to_diffusers(sgm, layout) == path
        key = "lora_unet_" + names.path_to_underscored(sgm)
        sd[key + ".lora_down.weight"] = sd[key + ".lora_up.weight"] = torch.zeros(1)
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(sd), types.SimpleNamespace(**unet.config))
    converted = convert_unet_state_dict_to_peft(_convert_non_diffusers_lora_to_diffusers(mapped)[0])
    got = {k.removeprefix("unet.").split(".lora_A")[0] for k in converted if ".lora_A" in k}
    assert got == set(mods)


def test_sgm_examples_match_a1111_comfyui_names():
    to = names.diffusers_to_sgm
    assert to("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert to("down_blocks.2.attentions.1.proj_in") == "input_blocks.8.1.proj_in"
    assert to("mid_block.attentions.0.transformer_blocks.3.attn2.to_k") == "middle_block.1.transformer_blocks.3.attn2.to_k"
    assert to("up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2") == "output_blocks.0.1.transformer_blocks.0.ff.net.2"
    assert to("up_blocks.1.attentions.2.proj_out") == "output_blocks.5.1.proj_out"
    assert to("down_blocks.0.resnets.1.conv1") == "input_blocks.2.0.in_layers.2"
    assert to("up_blocks.0.upsamplers.0.conv") == "output_blocks.2.2.conv"


# ---------------------------------------------------------------- peft <-> kohya

def test_peft_to_kohya_sd15_keys_and_trained_alpha(tiny15):
    unet_sd = random_peft(tiny15["unet"], ATTN, 4, 0)
    te_sd = random_peft(tiny15["text_encoder"], ("q_proj", "v_proj"), 2, 1)
    alphas = {**{k.rsplit(".lora_", 1)[0]: 8.0 for k in unet_sd}, **{"text_encoder." + k.rsplit(".lora_", 1)[0]: 3.0 for k in te_sd}}
    alphas["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] = 1.5  # "unet." prefix or bare path
    out = formats.peft_to_kohya(unet_sd, [te_sd], alphas, "sd1")
    n_unet, n_te = len(unet_sd) // 2, len(te_sd) // 2
    assert len(out) == 3 * (n_unet + n_te)
    down = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert torch.equal(out[f"{down}.lora_down.weight"], unet_sd["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"])
    assert float(out[f"{down}.alpha"]) == 1.5 and out[f"{down}.alpha"].ndim == 0
    assert float(out["lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha"]) == 8.0  # not rank 4
    # CLIPTextModel is flattened in transformers 5; kohya names still start with text_model
    assert float(out["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 3.0
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in out)


def test_peft_to_kohya_sdxl_uses_stability_names_and_te1_te2(tinyxl):
    unet_sd = random_peft(tinyxl["unet"], ATTN, 4, 0)
    te1 = random_peft(tinyxl["text_encoder"], ("q_proj",), 2, 1)
    te2 = random_peft(tinyxl["text_encoder_2"], ("q_proj",), 2, 2)
    out = formats.peft_to_kohya(unet_sd, [te1, te2], 4.0, "sdxl", unet_config=dict(tinyxl["unet"].config))
    unet_keys = {k.split(".")[0] for k in out if k.startswith("lora_unet_")}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_v" in unet_keys  # tiny: 1 layer per block
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q" in unet_keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q" in unet_keys
    assert not any("down_blocks" in k or "up_blocks" in k for k in unet_keys)
    assert "lora_te1_text_model_encoder_layers_2_self_attn_q_proj.lora_up.weight" in out
    assert "lora_te2_text_model_encoder_layers_2_self_attn_q_proj.lora_up.weight" in out
    back = formats.kohya_to_peft(out, unet_config=dict(tinyxl["unet"].config))
    assert back.family == "sdxl" and back.unet.keys() == unet_sd.keys()
    assert all(torch.equal(back.unet[k], unet_sd[k]) for k in unet_sd)


def test_missing_alpha_is_an_error_not_a_guess(tiny15):
    unet_sd = random_peft(tiny15["unet"], ("to_q",), 4, 0)
    with pytest.raises(UserError, match="no alpha"):
        formats.peft_to_kohya(unet_sd, [], {}, "sd1")


def test_dora_is_refused_for_kohya(tiny15):
    unet_sd = random_peft(tiny15["unet"], ("to_q",), 4, 0)
    unet_sd.update({k.replace("lora_A.weight", "lora_magnitude_vector"): torch.ones(v.shape[1]) for k, v in unet_sd.items() if "lora_A" in k})
    with pytest.raises(UserError, match="DoRA"):
        formats.peft_to_kohya(unet_sd, [], 4.0, "sd1")


def _kohya_fixture(tiny15, dtype=torch.float16):
    unet_sd = random_peft(tiny15["unet"], ATTN, 4, 3, dtype)
    te_sd = random_peft(tiny15["text_encoder"], ("q_proj", "k_proj", "v_proj", "out_proj"), 2, 4, dtype)
    alphas = {**{k.rsplit(".lora_", 1)[0]: 1.0 for k in unet_sd}, **{"text_encoder." + k.rsplit(".lora_", 1)[0]: 0.5 for k in te_sd}}
    alphas["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"] = 6.0
    return formats.peft_to_kohya(unet_sd, [te_sd], alphas, "sd1")


def test_kohya_diffusers_kohya_round_trip_is_bit_exact(tiny15, tmp_path):
    kohya = _kohya_fixture(tiny15)
    src = io.save_lora_file(tmp_path / "in.safetensors", kohya, {**md.minimum_kohya_metadata("sd1"), "ss_network_dim": "4"}, precision=None)
    parsed = io.read_lora_file(src)
    assert parsed.source_format == "kohya" and parsed.family == "sd1"
    dif = io.write_diffusers_lora(tmp_path / "diff", parsed, precision=None)
    again = io.read_lora_file(dif)
    assert again.source_format == "diffusers" and again.alphas == parsed.alphas
    back_path = io.write_kohya_lora(tmp_path / "back.safetensors", again, precision=None)
    back, _ = io.load_lora_file(back_path)
    assert back.keys() == kohya.keys()
    for k, v in kohya.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def test_ss_network_dim_is_the_files_rank(tiny15, tmp_path):
    """One source: the tensors. A recipe rank in the metadata cannot contradict them; a LoCon 3x3 conv at
    its own rank (kohya's conv_dim) leaves the dim alone; per-module ranks are kohya's "Dynamic"."""
    unet = tiny15["unet"]
    sd = random_peft(unet, ATTN, 4, 0)
    name, conv = next((n, m) for n, m in unet.named_modules()
                      if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and ".resnets." in n)
    sd[f"{name}.lora_A.weight"] = torch.randn(8, conv.in_channels, 3, 3)
    sd[f"{name}.lora_B.weight"] = torch.randn(conv.out_channels, 8, 1, 1)
    meta = {**md.build_kohya_metadata({"family": "sd1", "rank": 16, "alpha": 1.0}), "ss_network_alpha": "8.0"}
    path = io.write_kohya_lora(tmp_path / "locon.safetensors", formats.from_peft(sd, [], 1.0, "sd1"), meta, precision=None)
    assert io.load_lora_file(path)[1]["ss_network_dim"] == "4"
    assert io.load_lora_file(path)[1]["ss_network_alpha"] == "1.0"  # the tensors' alpha, not a caller's key
    mixed = {**random_peft(unet, ATTN[1:], 4, 0), **random_peft(unet, ("to_q",), 2, 1)}  # like block_dims
    path = io.write_kohya_lora(tmp_path / "mixed.safetensors", formats.from_peft(mixed, [], 1.0, "sd1"), meta, precision=None)
    assert io.load_lora_file(path)[1]["ss_network_dim"] == "Dynamic"


def test_alpha_not_representable_in_fp16_is_kept_in_fp32(tiny15, tmp_path):
    unet_sd = random_peft(tiny15["unet"], ("to_q",), 4, 0)
    parsed = formats.from_peft(unet_sd, [], 0.1, "sd1")
    path = io.write_kohya_lora(tmp_path / "a.safetensors", parsed, precision="fp16")
    t, _ = io.load_lora_file(path)
    alphas = [v for k, v in t.items() if k.endswith(".alpha")]
    assert all(a.dtype == torch.float32 and float(a) == float(torch.tensor(0.1)) for a in alphas)
    assert all(v.dtype == torch.float16 for k, v in t.items() if not k.endswith(".alpha"))


def test_reads_old_diffusers_layouts(tiny15):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    unet_sd = random_peft(tiny15["unet"], ATTN, 4, 0)
    te_sd = formats.normalize_peft_sd(random_peft(tiny15["text_encoder"], ("q_proj", "out_proj"), 2, 1), True)
    # diffusers' own "new diffusers" spelling: unet ... .lora.down.weight, text encoder ... lora_linear_layer
    mixed = {**{"unet." + k: v for k, v in convert_state_dict_to_diffusers(unet_sd).items()},
             **{"text_encoder." + k: v for k, v in convert_state_dict_to_diffusers(te_sd).items()}}
    assert any(".lora.down." in k for k in mixed) and any("lora_linear_layer" in k for k in mixed)
    parsed = formats.read_lora_state_dict(mixed)
    assert parsed.unet.keys() == unet_sd.keys() and parsed.text_encoders[0].keys() == te_sd.keys()
    # the attention-processor format of diffusers < 0.21
    old = {}
    for k, v in unet_sd.items():
        mod, ab = k.rsplit(".lora_", 1)
        parent, proj = mod.replace(".to_out.0", ".to_out").rsplit(".", 1)
        old[f"unet.{parent}.processor.{proj}_lora.{'down' if ab.startswith('A') else 'up'}.weight"] = v
    parsed_old = formats.read_lora_state_dict(old)
    assert parsed_old.source_format == "diffusers-old"
    assert all(torch.equal(parsed_old.unet[k], unet_sd[k]) for k in unet_sd)
    assert set(parsed_old.alphas.values()) == {4.0}  # no alpha anywhere: diffusers means scale 1


def test_plain_peft_layout_with_adapter_name(tiny15):
    unet_sd = random_peft(tiny15["unet"], ("to_q",), 4, 0)
    named = {"base_model.model." + k.replace(".weight", ".default.weight"): v for k, v in unet_sd.items()}
    parsed = formats.read_lora_state_dict(named)
    assert parsed.source_format == "peft" and parsed.unet.keys() == unet_sd.keys()


@pytest.mark.parametrize("extra", ["lora_unet_x_to_q.hada_w1_a", "lora_unet_down_blocks_0_attentions_0_proj_in.lora_mid.weight", "model.diffusion_model.x.weight"])
def test_unknown_keys_are_listed_never_dropped(tiny15, extra):
    kohya = _kohya_fixture(tiny15)
    kohya[extra] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        formats.read_lora_state_dict(kohya)
    assert extra in str(err.value)


def test_family_detection_from_real_shapes():
    sd = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 1024),
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)}
    assert formats.read_lora_state_dict(sd).family == "sd2"
    assert formats.read_lora_state_dict(sd, {"ss_base_model_version": "sd_v2_v"}).family == "sd2v"


def test_sd2_kohya_conv_projections_become_linear_for_diffusers():
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    sd = {f"{name}.lora_down.weight": torch.randn(4, 320, 1, 1), f"{name}.lora_up.weight": torch.randn(320, 4, 1, 1),
          f"{name}.alpha": torch.tensor(2.0)}
    out = formats.to_diffusers_state_dict(formats.read_lora_state_dict(sd, {"ss_base_model_version": "sd_v2"}))
    assert out["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"].shape == (4, 320)
    assert torch.equal(out["unet.down_blocks.0.attentions.0.proj_in.lora_B.weight"], sd[f"{name}.lora_up.weight"][:, :, 0, 0])
    sd1 = formats.to_diffusers_state_dict(formats.read_lora_state_dict(sd, {"ss_base_model_version": "sd_v1"}))
    assert sd1["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"].ndim == 4  # SD1's proj_in is a 1x1 conv


# ---------------------------------------------------------------- metadata

def test_kohya_metadata_fields_and_scrubbing():
    info = {
        "output_name": "dog", "family": "sdxl", "rank": 16, "alpha": 8, "network_args": {"target": "attn"},
        "training_started_at": 1700000000.5, "training_finished_at": 1700000600.0, "steps": 500, "epoch": 5,
        "learning_rate": 1e-4, "optimizer": "AdamW8bit", "resolution": (1024, 768), "num_train_images": 20,
        "tag_frequency": {"/home/me/data/10_dog": {"dog": 20}}, "dataset_dirs": {"10_dog": {"n_repeats": 10, "img_count": 20}},
        "seed": 42, "clip_skip": 2, "mixed_precision": "bf16", "title": "Dog", "author": "me", "trigger_words": ["sks dog"],
        "tags": ["dog"], "base_model": "/mnt/models/sd_xl_base_1.0.safetensors",
        "recipe": {"model": {"path": "/mnt/models/x"}, "hub": {"token": "hf_abcdefghijklmnopqrstuvwxyz"}, "lr": 1e-4},
    }
    m = md.build_kohya_metadata(info)
    assert all(isinstance(v, str) for v in m.values())
    assert m["ss_network_module"] == "networks.lora"
    # the written file's tensors decide both (test_ss_network_dim_is_the_files_rank)
    assert "ss_network_dim" not in m and "ss_network_alpha" not in m
    assert m["ss_base_model_version"] == "sdxl_base_v1-0" and m["ss_v2"] == "False"
    assert m["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert m["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert m["modelspec.resolution"] == "1024x768" and m["ss_resolution"] == "(1024, 768)"
    assert m["modelspec.sai_model_spec"] == "1.0.1" and m["modelspec.encoder_layer"] == "2"
    assert m["modelspec.trigger_phrase"] == "sks dog" and m["modelspec.prediction_type"] == "epsilon"
    assert json.loads(m["ss_tag_frequency"]) == {"10_dog": {"dog": 20}}
    assert m["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"
    recipe = json.loads(m["lora_kit.recipe"])
    assert recipe == {"model": {"path": "x"}, "hub": {}, "lr": 0.0001}
    assert "/mnt" not in "".join(m.values()) and "/home" not in "".join(m.values()) and "hf_" not in "".join(m.values())


@pytest.mark.parametrize("family,arch,version", [("sd1", "stable-diffusion-v1/lora", "sd_v1"),
                                                 ("sd2", "stable-diffusion-v2-512/lora", "sd_v2"),
                                                 ("sd2v", "stable-diffusion-v2-768-v/lora", "sd_v2_v")])
def test_architecture_per_family(family, arch, version):
    m = md.build_kohya_metadata({"family": family})
    assert m["modelspec.architecture"] == arch and m["ss_base_model_version"] == version
    assert m["ss_v2"] == str(family != "sd1") and m["modelspec.implementation"] == "diffusers"
    assert m["modelspec.prediction_type"] == ("v" if family == "sd2v" else "epsilon")


def test_scrub_paths():
    assert md.scrub_paths({"dirs": ["/a/b/10_cat", "rel/dir", "C:\\data\\x"], "API_KEY": "k", "hf_token": "t", "n": 3}) == {
        "dirs": ["10_cat", "rel/dir", "x"], "n": 3}


# ---------------------------------------------------------------- hashes and files

def _file_with_metadata(tmp_path, tensors, extra):
    meta = {"ss_network_dim": "64", "ss_output_name": "x", **extra}
    return io.save_lora_file(tmp_path / f"h{len(extra)}.safetensors", tensors, meta, precision="fp32")


def test_sshs_hashes_recomputed_independently_and_stable_under_metadata_edits(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_a_to_q.lora_down.weight": torch.randn(64, 4096, generator=g), "lora_unet_a_to_q.alpha": torch.tensor(8.0)}
    p1 = _file_with_metadata(tmp_path, tensors, {})
    p2 = _file_with_metadata(tmp_path, tensors, {"modelspec.title": "renamed", "modelspec.description": "x" * 5000})
    raw = p1.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["sshs_model_hash"] == hashlib.sha256(raw[8 + n :]).hexdigest()
    # legacy: 64 KiB at 1 MiB of the file serialised with only ss_* metadata
    import safetensors.torch

    ss_only = safetensors.torch.save(tensors, {"ss_network_dim": "64", "ss_output_name": "x"})
    assert header["__metadata__"]["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000:0x110000]).hexdigest()[:8]
    _, m2 = io.load_lora_file(p2)
    assert m2["sshs_model_hash"] == header["__metadata__"]["sshs_model_hash"]
    assert m2["sshs_legacy_hash"] == header["__metadata__"]["sshs_legacy_hash"]
    assert hashes.file_hashes(p1)["autov2"] == hashlib.sha256(raw).hexdigest()[:10]
    assert hashes.sha256_file(p1) != hashes.sha256_file(p2)


def test_save_is_atomic_and_never_overwrites_by_default(tmp_path):
    t = {"lora_unet_a_to_q.alpha": torch.tensor(1.0)}
    p = io.save_lora_file(tmp_path / "x.safetensors", t, {})
    with pytest.raises(UserError, match="exists"):
        io.save_lora_file(p, t, {})
    io.save_lora_file(p, t, {"ss_output_name": "y"}, overwrite=True)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.safetensors"]  # no temp files left


def test_malformed_inputs_are_clear_user_errors(tmp_path):
    good = io.save_lora_file(tmp_path / "g.safetensors", {"lora_unet_a_to_q.lora_down.weight": torch.zeros(4, 256)}, {})
    raw = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-100])
    (tmp_path / "hdr.safetensors").write_bytes(raw[:40])
    (tmp_path / "text.safetensors").write_text("definitely not tensors\n" * 4)
    torch.save({"lora_unet_a_to_q.lora_down.weight": torch.ones(2, 2)}, tmp_path / "old.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name, msg in [("trunc", "corrupt or truncated"), ("hdr", "truncated"), ("text", "not a safetensors")]:
        with pytest.raises(UserError, match=msg):
            io.load_lora_file(tmp_path / f"{name}.safetensors")
    for name in ("old.pt", "legacy.ckpt"):
        with pytest.raises(UserError, match="pickle"):
            io.load_lora_file(tmp_path / name)
    tensors, meta = io.load_lora_file(tmp_path / "old.pt", allow_pickle=True)
    assert meta == {} and torch.equal(tensors["lora_unet_a_to_q.lora_down.weight"], torch.ones(2, 2))
    with pytest.raises(UserError, match="no such file"):
        io.load_lora_file(tmp_path / "missing.safetensors")


def test_header_length_starting_with_pickle_byte_is_still_safetensors(tmp_path):
    """A header length whose low byte is 0x80 (a pickle's first byte) must not be mistaken for a pickle."""
    t = {"lora_unet_a_to_q.alpha": torch.tensor(1.0)}
    for pad in range(300):
        p = io.save_lora_file(tmp_path / "p.safetensors", t, {"ss_output_name": "x" * pad}, precision=None, overwrite=True)
        if p.read_bytes()[0] == 0x80:
            break
    assert p.read_bytes()[0] == 0x80
    assert io.load_lora_file(p)[1]["ss_output_name"] == "x" * pad


def test_sd15_rank16_attention_lora_size(tmp_path):
    """docs/formats.md states this size: real SD1.5 U-Net, to_q/k/v/out.0, rank 16, fp16 kohya file."""
    unet = meta_unet(SD15_UNET)
    sd = {}
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(ATTN):
            sd[f"{name}.lora_A.weight"] = torch.zeros(16, m.in_features, dtype=torch.float16)
            sd[f"{name}.lora_B.weight"] = torch.zeros(m.out_features, 16, dtype=torch.float16)
    parsed = formats.from_peft(sd, [], 16.0, "sd1")
    assert len(parsed.modules()) == 128 and parsed.num_parameters() == 3_188_736
    path = io.write_kohya_lora(tmp_path / "sd15_r16.safetensors", parsed, md.build_kohya_metadata({"family": "sd1", "rank": 16, "alpha": 16}))
    assert 6_377_472 < path.stat().st_size < 6_377_472 + 64_000  # tensors + alphas + header ~ 6.1 MiB
