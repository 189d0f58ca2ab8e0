"""Tiny presets, offline tokenizer and model loading."""

from __future__ import annotations

import pytest
import torch

from lora_kit.errors import UserError
from lora_kit.models.loading import detect_family, load_model
from lora_kit.models.presets import build_components


def test_tokenizer_matches_openai_clip_ids(tmp_path):
    from transformers import CLIPTokenizer

    from lora_kit.models.tokenizer import write_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path))
    assert len(tok) == 49408
    # Reference ids of openai/clip-vit-large-patch14 for this text.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_presets_are_deterministic():
    a = build_components("tiny-sd15", seed=0)["unet"].state_dict()
    b = build_components("tiny-sd15", seed=0)["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fixture, family, pred, n_te", [
    ("tiny_sd15_dir", "sd1", "epsilon", 1), ("tiny_sd2v_dir", "sd2v", "v_prediction", 1), ("tiny_sdxl_dir", "sdxl", "epsilon", 2)])
def test_load_saved_presets(request, fixture, family, pred, n_te):
    bundle = load_model(str(request.getfixturevalue(fixture)))
    assert (bundle.family, bundle.prediction_type, len(bundle.text_encoders), bundle.vae_scale_factor) == (family, pred, n_te, 4)


def test_builtin_model_materialises_once(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_KIT_CACHE", str(tmp_path))
    b = load_model("builtin:tiny-sd15")
    assert b.family == "sd1" and (tmp_path / "models" / "tiny-sd15" / "model_index.json").exists()


def test_offline_hub_id_says_what_to_fetch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hf download some-org/some-model"):
        load_model("some-org/some-model")


def test_pickle_checkpoint_refused(tmp_path):
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="pickle checkpoints are not loaded"):
        load_model(str(p))


def test_unreadable_single_file_names_the_key_that_helps(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = tmp_path / "model.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, str(p))  # a safetensors file diffusers cannot place offline
    with pytest.raises(UserError, match=r"could not build model.safetensors .* as \[model\] single_file_config \(--single-file-config\)"):
        load_model(str(p))


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    """A text file passed as the model was sent after --single-file-config, which cannot help."""
    p = tmp_path / "notes.txt"
    p.write_text("my notes about this model\n")
    with pytest.raises(UserError, match=r"notes.txt: not a model checkpoint \(not a safetensors file\); expected a "
                                        r"\.safetensors checkpoint or a diffusers folder"):
        load_model(str(p))


def test_detect_family():
    assert detect_family({"addition_embed_type": "text_time"}, {}) == "sdxl"
    assert detect_family({"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"}) == "sd2v"
    assert detect_family({"cross_attention_dim": 1024}, {"prediction_type": "epsilon"}) == "sd2"
    assert detect_family({"cross_attention_dim": 768}, {"prediction_type": "epsilon"}) == "sd1"


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_training_conditioning_equals_inference_conditioning(clip_skip):
    """What the U-Net is trained on is what the grid pipeline feeds it (SD1, clip skip 1 and 2)."""
    from lora_kit.infer.pipeline import clip_skip_embeds
    from lora_kit.models.presets import build_pipeline
    from lora_kit.models.text import encode_prompts

    pipe = build_pipeline("tiny-sd15", seed=0)
    prompts = ["ohwx star, a red star", ""]
    train = encode_prompts([pipe.text_encoder], [pipe.tokenizer], prompts, sdxl=False, clip_skip=clip_skip)["prompt_embeds"]
    if clip_skip == 1:
        infer, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    else:
        infer = clip_skip_embeds(pipe, prompts, clip_skip)
    torch.testing.assert_close(train, infer)
    if clip_skip == 2:
        last = encode_prompts([pipe.text_encoder], [pipe.tokenizer], prompts, sdxl=False, clip_skip=1)["prompt_embeds"]
        assert not torch.allclose(train, last)


def test_sdxl_training_conditioning_equals_pipeline():
    from lora_kit.models.presets import build_pipeline
    from lora_kit.models.text import encode_prompts

    pipe = build_pipeline("tiny-sdxl", seed=0)
    ours = encode_prompts([pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2], ["a red circle"], sdxl=True)
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(ours["prompt_embeds"], embeds)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled)


def test_adapter_export_infers_family_from_unet_config(tmp_path):
    """Without info["family"], an SDXL adapter is written as SDXL (Stability key names, sdxl metadata), not sd_v1."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors import safe_open

    from lora_kit.adapters import io

    unet = build_components("tiny-sdxl", seed=0)["unet"]
    cfg = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"])
    unet.add_adapter(cfg)
    sd = get_peft_model_state_dict(unet)

    def export(info, sub):
        f = io.write_adapter_files(tmp_path / sub, "x", sd, [], info, unet_config=cfg, unet_model_config=dict(unet.config))
        with safe_open(str(f["kohya"]), "pt") as h:
            return set(h.keys()), h.metadata()

    keys, meta = export({"output_name": "x"}, "inferred")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # sgm names, as A1111 loads SDXL
    given_keys, given_meta = export({"output_name": "x", "family": "sdxl"}, "given")
    assert keys == given_keys and meta["ss_base_model_version"] == given_meta["ss_base_model_version"]


def test_family_table_is_the_one_source():
    from lora_kit.adapters import formats, metadata
    from lora_kit.models import family

    assert formats.SDXL is family.SDXL and formats.FAMILIES == family.FAMILIES
    assert metadata.BASE_MODEL_VERSION["sd2v"] == "sd_v2_v" and metadata.DEFAULT_RESOLUTION == family.NATIVE_SIZE
    assert family.family("sdxl").fp32_vae and not family.family("sd1").fp32_vae
    with pytest.raises(UserError, match="unknown model family 'sd3'"):
        family.family("sd3")
    # an SD1-architecture v-prediction model is sd2v (the tiny SD2-v preset's U-Net is SD1-sized)
    assert family.detect_family({"cross_attention_dim": 32}, {"prediction_type": "v_prediction"}) == "sd2v"
    assert family.model_native_size({"sample_size": [12, 20]}, 4) == (80, 48)


def test_load_for_training_vae_dtype_and_schedule(tiny_sdxl_dir, tiny_sd15_dir):
    """The trainer's and `lora-kit cache`'s loader: SDXL's stock VAE stays fp32 in bf16 training, a given VAE
    (or any other family's) takes the training dtype; zero_terminal_snr rescales the training schedule."""
    from lora_kit.config.schema import ModelConfig
    from lora_kit.models.loading import load_for_training

    xl = load_for_training(ModelConfig(pretrained=str(tiny_sdxl_dir)), "bf16", "cpu")
    assert (xl.family, xl.vae.dtype, xl.vae.training) == ("sdxl", torch.float32, False)
    assert not any(p.requires_grad for p in xl.vae.parameters())
    fixed = load_for_training(ModelConfig(pretrained=str(tiny_sdxl_dir), vae=str(tiny_sdxl_dir / "vae")), "bf16", "cpu")
    assert fixed.vae.dtype == torch.bfloat16
    sd1 = load_for_training(ModelConfig(pretrained=str(tiny_sd15_dir), zero_terminal_snr=True), "fp16", "cpu")
    assert sd1.vae.dtype == torch.float16 and sd1.unet.dtype == torch.float32
    assert sd1.noise_scheduler.alphas_cumprod[-1].item() < 1e-6  # zero terminal SNR
    assert load_for_training(ModelConfig(pretrained=str(tiny_sd15_dir)), "no", "cpu").noise_scheduler.alphas_cumprod[-1].item() > 1e-4
    with pytest.raises(UserError, match="unknown mixed_precision 'fp8'"):
        load_for_training(ModelConfig(pretrained=str(tiny_sd15_dir)), "fp8", "cpu")


def test_model_vae_that_is_no_vae_folder_is_one_line_naming_the_key(tiny_sd15_dir, tmp_path):
    from lora_kit.config.schema import ModelConfig
    from lora_kit.models.loading import load_for_training

    # a whole pipeline folder (the VAE is in vae/), a missing path: both were internal OSErrors
    for vae in (str(tiny_sd15_dir), str(tmp_path / "missing")):
        with pytest.raises(UserError, match=r"^\[model\] vae: .* is not a diffusers VAE folder \(config.json and weights\)"):
            load_for_training(ModelConfig(pretrained=str(tiny_sd15_dir), vae=vae), "no", "cpu")


def test_precision_names():
    from lora_kit import precision

    assert {precision.training_dtype(n) for n in precision.MIXED_PRECISION} == {torch.float32, torch.float16, torch.bfloat16}
    assert [precision.save_dtype(n) for n in ("fp32", "float", "fp16", "bf16", "same", None)] == [
        torch.float32, torch.float32, torch.float16, torch.bfloat16, None, None]
    assert precision.runtime_dtype("auto", "cpu") == torch.float32 and precision.runtime_dtype("auto", "cuda:0") == torch.float16
    assert precision.runtime_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'half'"):
        precision.runtime_dtype("half", "cpu")


def test_init_model_never_replaces_a_file_or_a_folder_of_user_files(tmp_path, capsys):
    """`init-model X --overwrite` turned the file X into a model folder and deleted a folder of the user's
    own files; OUT under a file was an internal error (FileExistsError)."""
    from lora_kit.cli import main

    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"mine")
    cases = [(["notes.txt", "--overwrite"], "notes.txt is a file; expected a folder for the diffusers model"),
             (["photos", "--overwrite"], "photos holds files that are not a diffusers model (no model_index.json)"),
             (["photos"], "photos exists; pass --overwrite to replace it"),
             (["notes.txt/model"], "cannot create the folder"),
             ]
    for argv, message in cases:
        argv = [str(tmp_path / argv[0]), *argv[1:]]
        assert main(["init-model", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and (tmp_path / "photos" / "a.png").read_bytes() == b"mine"
    model = tmp_path / "model"
    assert main(["init-model", str(model)]) == 0 and main(["init-model", str(model), "--overwrite", "--seed", "1"]) == 0
    assert (model / "model_index.json").is_file()  # a model folder is replaced
