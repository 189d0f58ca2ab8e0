"""[loss] prior_target = "base": prior (reg) rows are trained towards the base model's own prediction."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from train_utils import BASE, reset_accelerate, run_training

from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError
from lora_kit.models.text import encode_prompts
from lora_kit.train.step import base_targets

PRIORS = ['dataset.reg_path="builtin:shapes-world"', 'loss.prior_target="base"', "network.train_text_encoder=true"]


def _trainer(tmp_path):
    from lora_kit.train.recipe import LoraTrainer

    reset_accelerate()
    t = LoraTrainer(load_recipe("tiny-smoke", BASE + [f'output_dir="{tmp_path}"', "train.batch_size=4", *PRIORS]))
    t.setup()
    return t


def _lora_b(modules) -> list[torch.nn.Parameter]:
    return [p for m in modules for n, p in m.named_parameters() if "lora_B" in n]


def test_prior_rows_get_the_base_models_prediction_and_the_adapters_stay_trainable(tmp_path):
    t = _trainer(tmp_path)
    ctx, unet, tes = t.ctx, t.ctx.plain[0], t.ctx.plain[1]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters that change the output (lora_B starts at zero)
        for p in _lora_b([unet, *tes]):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    batch = next(b for b in t.data.batches(0, 0) if 0 < int(b["is_reg"].sum()) < len(b["is_reg"]))
    reg = batch["is_reg"].tolist()
    rows = [j for j, r in enumerate(reg) if r]
    n = len(reg)
    noisy = torch.randn((n, 4, *batch["latents"].shape[-2:]), generator=gen)
    steps = torch.randint(0, 1000, (n,), generator=gen)
    target = torch.randn(noisy.shape, generator=gen)
    flags = {name: p.requires_grad for m in (unet, *tes) for name, p in m.named_parameters()}

    def predict(captions, x, ts):
        with torch.no_grad():
            cond = encode_prompts(tes, t.bundle.tokenizers, captions, sdxl=False, clip_skip=1, device=ctx.device)
            return unet(x, ts, encoder_hidden_states=cond["prompt_embeds"]).sample

    with_adapters = predict([batch["caption"][j] for j in rows], noisy[rows], steps[rows])
    got = base_targets(ctx, batch, reg, noisy, steps, target)

    saved = [p.detach().clone() for p in _lora_b([unet, *tes])]
    with torch.no_grad():
        for p in _lora_b([unet, *tes]):
            p.zero_()  # the base: every adapter adds nothing
    base = predict([batch["caption"][j] for j in rows], noisy[rows], steps[rows])
    with torch.no_grad():
        for p, v in zip(_lora_b([unet, *tes]), saved):
            p.copy_(v)

    keep = [j for j in range(n) if j not in rows]
    assert torch.equal(got[keep], target[keep])  # concept rows keep their noise target
    assert torch.allclose(got[rows], base, atol=1e-5), float((got[rows] - base).abs().max())
    assert float((with_adapters - base).abs().max()) > 1e-2  # the adapters matter: the check above can fail
    # afterwards the adapters are on again (same prediction as before) and trainable exactly as before
    assert torch.equal(predict([batch["caption"][j] for j in rows], noisy[rows], steps[rows]), with_adapters)
    assert flags == {name: p.requires_grad for m in (unet, *tes) for name, p in m.named_parameters()}
    assert all(not layer.disable_adapters for m in (unet, *tes) for layer in m.modules() if isinstance(layer, BaseTunerLayer))
    t.cleanup()


def test_prior_target_reaches_training_and_changes_the_adapter(tmp_path, capsys):
    from safetensors.torch import load_file

    image = run_training(tmp_path / "image", [*PRIORS[:1], *PRIORS[2:], "train.max_steps=5"])
    base = run_training(tmp_path / "base", [*PRIORS, "train.max_steps=5"])
    unet_only = run_training(tmp_path / "unet-only", [*PRIORS[:1], *PRIORS[2:], "train.max_steps=5", "loss.prior_trains_text_encoder=false"])
    out = capsys.readouterr().out
    assert "reg x1 towards their images\n" in out and "reg x1 towards the base model" in out
    assert "reg x1 towards their images, U-Net only" in out
    a, b, c = (load_file(str(tmp_path / n / "pytorch_lora_weights.safetensors")) for n in ("image", "base", "unet-only"))
    assert a.keys() == b.keys() == c.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("text_encoder."))
    assert image.global_step == base.global_step == unet_only.global_step == 5


def test_prior_target_base_needs_prior_pictures():
    with pytest.raises(UserError) as e:
        load_recipe("tiny-smoke", BASE + ['loss.prior_target="base"'])
    assert "[loss] prior_target" in str(e.value) and "reg_path" in str(e.value)
    with pytest.raises(UserError) as e:
        load_recipe("tiny-smoke", BASE + ['loss.prior_target="teacher"'])
    assert "prior_target" in str(e.value)


def _rows(batch: dict, rows: list[int]) -> dict:
    pick = torch.tensor(rows)
    return {k: v.index_select(0, pick) if torch.is_tensor(v) else [v[j] for j in rows] for k, v in batch.items()}


def _grads(t, batch: dict) -> tuple[torch.Tensor, float, float]:
    """(loss, |grad| of the text encoder's LoRA, |grad| of the U-Net's) of one forward_loss on `batch`."""
    from lora_kit.train.step import forward_loss

    unet, tes = t.ctx.plain
    params = {"te": _lora_b(tes) + [p for m in tes for n, p in m.named_parameters() if "lora_A" in n],
              "unet": _lora_b([unet]) + [p for n, p in unet.named_parameters() if "lora_A" in n]}
    for ps in params.values():
        for p in ps:
            p.grad = None
    loss, _ = forward_loss(t.ctx, batch, step=3)
    loss.backward()
    norm = {k: float(sum(p.grad.abs().sum() for p in ps if p.grad is not None)) for k, ps in params.items()}
    return loss.detach(), norm["te"], norm["unet"]


def test_prior_rows_can_leave_the_text_encoder_to_the_concept(tmp_path):
    """[loss] prior_trains_text_encoder = false: the prior rows' loss trains the U-Net, not the text-encoder LoRA
    (it could learn to switch the trigger off by words only the prior captions hold); the loss is the same."""
    t = _trainer(tmp_path)
    unet, tes = t.ctx.plain
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero: give every adapter a gradient path
        for p in _lora_b([unet, *tes]):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    batch = next(b for b in t.data.batches(0, 0) if 0 < int(b["is_reg"].sum()) < len(b["is_reg"]))
    reg = [j for j, r in enumerate(batch["is_reg"].tolist()) if r]
    t.ctx.loss.prior_target = "image"
    trained = {name: _grads(t, b) for name, b in (("mixed", batch), ("prior", _rows(batch, reg)))}
    t.ctx.loss.prior_trains_text_encoder = False
    detached = {name: _grads(t, b) for name, b in (("mixed", batch), ("prior", _rows(batch, reg)))}
    for name in ("mixed", "prior"):
        assert torch.equal(trained[name][0], detached[name][0])  # the forward is the same
        assert detached[name][2] > 0 and trained[name][2] == pytest.approx(detached[name][2], rel=1e-5)  # the U-Net learns alike
    assert trained["prior"][1] > 0 and detached["prior"][1] == 0.0  # prior rows alone: no text-encoder gradient
    assert 0 < detached["mixed"][1] < trained["mixed"][1]  # the concept rows still train it
    t.cleanup()
