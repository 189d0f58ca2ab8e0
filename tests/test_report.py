"""The one-screen summary at the start of a run says what a user should fix before the steps start."""

from __future__ import annotations

from train_utils import run_training


def test_summary_warns_about_a_multi_token_trigger_word(tmp_path, capsys):
    run_training(tmp_path / "run", ['dataset.trigger_word="mystyle"', "train.max_steps=1"])
    out = capsys.readouterr().out
    assert "warning: trigger word 'mystyle' is 2 CLIP tokens (my + style)" in out
    assert "warning: single-token alternatives the model has hardly seen: " in out
    assert "threads     1 torch CPU thread(s)" in out and "compile off" in out


def test_summary_is_quiet_for_a_rare_single_token_trigger(tmp_path, capsys):
    run_training(tmp_path / "run", ['dataset.trigger_word="ohwx"', "train.max_steps=1"])
    assert "warning: trigger word" not in capsys.readouterr().out
