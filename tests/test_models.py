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
