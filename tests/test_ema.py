"""[ema]: a moving average of the adapter weights (lora_kit.train.ema, diffusers' EMAModel underneath).

The exported files hold the average; checkpoints hold both; a run stopped and resumed exports the same
average bit for bit; the update in the step reads nothing back from the device."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from train_utils import reset_accelerate, run_training

from lora_kit.config.load import load_recipe
from lora_kit.config.schema import EmaConfig
from lora_kit.errors import UserError
from lora_kit.train.ema import EMA_FILE, AdapterEMA

EMA = ["ema.enabled=true", "ema.decay=0.9", "ema.every_n_steps=2", "train.max_steps=6",
       "dataset.caption_dropout=0.2", "dataset.shuffle_tags=true"]


def test_average_follows_diffusers_warmup_formula():
    """Two updates of a 2-element parameter: shadow <- shadow - (1 - d_n) (shadow - p), d_n = min(decay,
    (1 + n') / (10 + n')) with n' = n - 1 (EMAModel.get_decay), written out by hand in float64."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ema = AdapterEMA([p], EmaConfig(enabled=True, decay=0.5, every_n_steps=3))
    assert [ema.due(s) for s in (1, 2, 3, 6)] == [False, False, True, True]
    expect = p.detach().double().clone()
    for n, value in ((1, [3.0, 0.0]), (2, [5.0, 4.0])):
        with torch.no_grad():
            p.copy_(torch.tensor(value))
        ema.update()
        step = n - 1
        d = 0.0 if step <= 0 else min(0.5, (1 + step) / (10 + step))
        expect = expect - (1 - d) * (expect - torch.tensor(value, dtype=torch.float64))
    assert torch.allclose(ema.ema.shadow_params[0].double(), expect, atol=1e-6)
    assert expect.tolist() == [3.0 - (1 - 2 / 11) * (3.0 - 5.0), 0.0 - (1 - 2 / 11) * (0.0 - 4.0)]


def test_ema_export_differs_from_live_and_resume_is_exact(tmp_path):
    full = run_training(tmp_path / "full", EMA)
    live = run_training(tmp_path / "live", EMA[1:] + ["ema.enabled=false"])
    a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "live" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    # the average lags the live weights (3 updates at decay <= 0.9): every trained lora_B differs
    assert all(not torch.equal(a[k], b[k]) for k in a if "lora_B" in k)
    assert full.ema.ema.optimization_step == 3
    part = tmp_path / "part"
    run_training(part, EMA, stop_after=3)  # stops between two EMA updates (steps 2 and 4)
    ckpt = next((part / "checkpoints").glob("checkpoint-*"))
    assert (ckpt / EMA_FILE).is_file()
    resumed = run_training(part, EMA, resume="latest")
    assert resumed.global_step == 6
    c = load_file(str(part / "pytorch_lora_weights.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_cpu_average_equals_same_device_average(tmp_path):
    """device = "cpu" on a CPU run is the same arithmetic (nothing to move): same file as "same"."""
    run_training(tmp_path / "same", EMA)
    run_training(tmp_path / "cpu", EMA + ['ema.device="cpu"'])
    a = load_file(str(tmp_path / "same" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "cpu" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_with_ema_reads_nothing_back(tmp_path):
    from test_step_trace import OpRecorder

    from lora_kit.train.recipe import LoraTrainer

    reset_accelerate()
    r = load_recipe("tiny-smoke", [f'output_dir="{tmp_path}"', "train.max_steps=3", "log.tensorboard=false",
                                   "save.every_n_steps=0", "ema.enabled=true"])
    t = LoraTrainer(r)
    t.setup()
    batches = t.data.batches(0)
    t.step(next(batches))
    batch = next(batches)  # loading a batch reads from the cache files: outside the recorded step
    with OpRecorder() as rec:
        t.step(batch)
    t.cleanup()
    assert rec.ops["_local_scalar_dense"] == 0
    assert rec.ops["_foreach_sub_"] >= 1  # the EMA update ran, as foreach ops
    assert t.ema.ema.optimization_step == 2


def test_ema_keys_are_checked():
    for bad, key in (("ema.decay=1.0", "[ema] decay"), ("ema.every_n_steps=0", "[ema] every_n_steps")):
        try:
            load_recipe("tiny-smoke", [bad])
        except UserError as exc:
            assert f": {key}: " in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError(bad)


def test_text_encoder_adapters_are_averaged_too(tmp_path):
    te = ["network.train_text_encoder=true", "optimizer.text_encoder_lr=1e-2", "train.max_steps=2", "ema.decay=0.5"]
    run_training(tmp_path / "ema", te + ["ema.enabled=true"])
    run_training(tmp_path / "live", te)
    a = load_file(str(tmp_path / "ema" / "tiny-smoke.safetensors"))
    b = load_file(str(tmp_path / "live" / "tiny-smoke.safetensors"))
    ups = [k for k in a if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    assert ups and all(not torch.equal(a[k], b[k]) for k in ups)


def test_resume_from_a_checkpoint_without_ema_starts_the_average_there(tmp_path, capsys):
    base = ["train.max_steps=4", "ema.decay=0.5"]
    run_training(tmp_path, base, stop_after=2)  # [ema] off: the checkpoint has no ema.safetensors
    t = run_training(tmp_path, base + ["ema.enabled=true"], resume="latest")
    assert "holds no EMA weights: the moving average starts from its weights" in capsys.readouterr().out
    assert t.global_step == 4 and t.ema.ema.optimization_step == 2  # steps 3 and 4 only
