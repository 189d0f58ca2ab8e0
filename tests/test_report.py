"""The one-screen summary at the start of a run says what a user should fix before the steps start."""

from __future__ import annotations

import re

from train_utils import run_training


def test_summary_warns_about_a_multi_token_trigger_word(tmp_path, capsys):
    run_training(tmp_path / "run", ['dataset.trigger_word="mystyle"', "train.max_steps=1"])
    out = capsys.readouterr().out
    assert "warning: trigger word 'mystyle' is 2 CLIP tokens (my + style)" in out
    assert "warning: single-token alternatives the model has hardly seen: " in out
    assert re.search(r"threads     \d+ torch CPU thread\(s\): ", out) and "compile off" in out


def test_summary_is_quiet_for_a_rare_single_token_trigger(tmp_path, capsys):
    run_training(tmp_path / "run", ['dataset.trigger_word="ohwx"', "train.max_steps=1"])
    assert "warning: trigger word" not in capsys.readouterr().out


def test_huber_loss_reaches_training_and_the_files_metadata(tmp_path, capsys):
    """[loss] type goes from the recipe to the step (a different adapter than l2) and to ss_loss_type."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    l2 = run_training(tmp_path / "l2", ["train.max_steps=2"])
    huber = run_training(tmp_path / "huber", ["train.max_steps=2", 'loss.type="huber"', 'loss.huber_schedule="constant"'])
    assert "loss        huber (constant Huber schedule) on epsilon" in capsys.readouterr().out
    a, b = (load_file(str(tmp_path / n / "pytorch_lora_weights.safetensors")) for n in ("l2", "huber"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(tmp_path / "huber" / "tiny-smoke.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_loss_type"] == "huber" and meta["ss_huber_schedule"] == "constant" and meta["ss_masked_loss"] == "False"
    with safe_open(str(tmp_path / "l2" / "tiny-smoke.safetensors"), "pt") as f:
        assert f.metadata()["ss_loss_type"] == "l2" and "ss_huber_c" not in f.metadata()
    assert l2.global_step == huber.global_step == 2


def test_summary_names_the_text_encoders_own_rank_and_layers():
    from lora_kit.config.schema import NetworkConfig
    from lora_kit.train.report import _text_encoder_words

    assert _text_encoder_words(NetworkConfig(rank=8, alpha=8.0)) == " + text encoder"
    assert _text_encoder_words(NetworkConfig(rank=8, alpha=8.0, text_encoder_rank=8, text_encoder_target="attn-mlp")) == \
        " + text encoder (attention and MLP)"
    values = NetworkConfig(rank=8, alpha=8.0, text_encoder_rank=16, text_encoder_alpha=16.0, text_encoder_target="values")
    assert _text_encoder_words(values) == " + text encoder rank 16 alpha 16 (attention values and outputs)"
    assert _text_encoder_words(NetworkConfig(rank=8, alpha=4.0, text_encoder_alpha=8.0)) == " + text encoder rank 8 alpha 8"
    assert _text_encoder_words(NetworkConfig(rank=8, alpha=8.0, train_trigger_embedding=True)) == \
        " + text encoder + the trigger word's embedding"
