"""The loss against a hand-written reference (element loops in float64), both prediction types."""

from __future__ import annotations

import math

import pytest
import torch

from lora_kit.train.loss import add_noise, diffusion_loss, min_snr_weights, sample_noise, sample_timesteps, target_for


def _alphas():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    return torch.cumprod(1 - betas, 0).float()


def _reference(pred, x0, noise, t, ac, prediction_type, gamma, is_reg, prior_w):
    total = 0.0
    for i in range(pred.shape[0]):
        a = float(ac[t[i]])
        if prediction_type == "epsilon":
            tgt = noise[i].double()
        else:
            tgt = math.sqrt(a) * noise[i].double() - math.sqrt(1 - a) * x0[i].double()
        mse = float(((pred[i].double() - tgt) ** 2).mean())
        w = 1.0
        if gamma:
            snr = a / (1 - a)
            w = min(snr, gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        if is_reg[i]:
            w *= prior_w
        total += mse * w
    return total / pred.shape[0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_loss_matches_reference(prediction_type, gamma):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    pred = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([5, 250, 600, 999])
    ac = _alphas()
    is_reg = torch.tensor([False, True, False, True])
    target = target_for(prediction_type, x0, noise, t, ac)
    got = diffusion_loss(pred, target, t, ac, prediction_type=prediction_type, min_snr_gamma=gamma, is_reg=is_reg, prior_loss_weight=0.5)
    want = _reference(pred, x0, noise, t, ac, prediction_type, gamma, is_reg, 0.5)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_min_snr_weights_pinned():
    ac = _alphas()
    w_eps = min_snr_weights(torch.tensor([0, 999]), ac, 5.0, "epsilon")
    w_v = min_snr_weights(torch.tensor([0, 999]), ac, 5.0, "v_prediction")
    # t=0 has a huge SNR (clipped to 5): eps weight 5/SNR, v weight 5/(SNR+1); t=999 SNR < 5: eps weight 1.
    assert w_eps[1] == pytest.approx(1.0)
    a999 = float(ac[999])
    assert w_v[1] == pytest.approx((a999 / (1 - a999)) / (a999 / (1 - a999) + 1), rel=1e-5)
    assert float(w_eps[0]) == pytest.approx(5.0 / (float(ac[0]) / (1 - float(ac[0]))), rel=1e-4)


def test_v_target_matches_diffusers_get_velocity():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    ours = target_for("v_prediction", x0, noise, t, sched.alphas_cumprod)
    theirs = sched.get_velocity(x0, noise, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(add_noise(x0, noise, t, sched.alphas_cumprod), sched.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_noise_and_timesteps_are_seeded_and_offset_applies():
    lat = torch.zeros(2, 4, 8, 8)
    a = sample_noise(lat, torch.Generator().manual_seed(3), 0.0)
    b = sample_noise(lat, torch.Generator().manual_seed(3), 0.0)
    c = sample_noise(lat, torch.Generator().manual_seed(3), 0.1)
    assert torch.equal(a, b)
    # offset noise adds a per-(sample, channel) constant: the spatial mean shifts, the spatial residual doesn't
    diff = c - a
    assert torch.allclose(diff, diff.mean(dim=(2, 3), keepdim=True), atol=1e-6)
    assert diff.abs().max() > 0
    t = sample_timesteps(1000, torch.Generator().manual_seed(0), 200, 400)
    assert int(t.min()) >= 200 and int(t.max()) < 400
