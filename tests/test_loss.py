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


# --------------------------------------------------------------------------- loss types, Huber schedules, masks
# An independent re-implementation of kohya-ss/sd-scripts' formulas (train_util.get_huber_threshold_if_needed and
# conditional_loss), scalar by scalar in float64 with `math`, against lora_kit.train.loss's tensor version.

from lora_kit.train.loss import elementwise_loss, huber_threshold, per_sample_loss, resize_mask  # noqa: E402


def _kohya_c(t: int, ac, schedule: str, c: float, scale: float) -> float:
    if schedule == "constant":
        return c * scale
    if schedule == "exponential":
        return math.exp(-(-math.log(c) / len(ac)) * t) * scale
    a = float(ac[t])
    sigma = math.sqrt((1 - a) / a)
    return (1 - c) / (1 + sigma) ** 2 + c  # kohya's snr branch ignores huber_scale


def _kohya_elem(d: float, loss_type: str, c: float) -> float:
    if loss_type == "l2":
        return d * d
    smooth = math.sqrt(d * d + c * c) - c
    return 2 * c * smooth if loss_type == "huber" else 2 * smooth


@pytest.mark.parametrize("schedule", ["constant", "exponential", "snr"])
def test_huber_threshold_matches_kohya(schedule):
    ac = _alphas()
    t = torch.tensor([0, 1, 250, 500, 999])
    got = huber_threshold(t, ac, schedule, 0.1, 2.0)
    want = [_kohya_c(int(x), ac, schedule, 0.1, 2.0) for x in t]
    assert got.dtype == torch.float32 and got.shape == (5,)
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_huber_threshold_pinned():
    ac = _alphas()
    t = torch.tensor([0, 500, 1000 - 1])
    # exponential: scale at t=0, c*scale at t=T (T=1000), geometric in between: 0.1**0.5 at t=500
    assert huber_threshold(t, ac, "exponential", 0.1, 1.0).tolist() == pytest.approx([1.0, 0.1**0.5, 0.1**0.999], rel=1e-5)
    # snr: close to 1 where the image is clean, close to c at pure noise; t=0: a = 1 - 0.00085,
    # sigma = sqrt(0.00085 / 0.99915) = 0.029167, 0.9 / 1.029167^2 + 0.1 = 0.94971
    snr_c = huber_threshold(t, ac, "snr", 0.1).tolist()
    assert snr_c[0] == pytest.approx(0.94971, abs=1e-4) and snr_c[2] == pytest.approx(0.10369, abs=1e-4)  # sigma_999 = 14.6
    assert huber_threshold(t, ac, "constant", 0.1, 3.0).tolist() == pytest.approx([0.3] * 3)


def _reference_typed(pred, target, t, ac, loss_type, schedule, c, scale, mask, gamma, prediction_type):
    total = 0.0
    for i in range(pred.shape[0]):
        ci = _kohya_c(int(t[i]), ac, schedule, c, scale)
        num = den = 0.0
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in pred.shape[1:]]).tolist():
            m = 1.0 if mask is None else float(mask[i, 0, idx[1], idx[2]])
            num += m * _kohya_elem(float(pred[i][tuple(idx)]) - float(target[i][tuple(idx)]), loss_type, ci)
            den += m
        w = 1.0
        if gamma:
            a = float(ac[t[i]])
            snr = a / (1 - a)
            w = min(snr, gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        total += (num / den if den else 0.0) * w
    return total / pred.shape[0]


@pytest.mark.parametrize("loss_type,schedule", [("l2", "snr"), ("huber", "snr"), ("huber", "exponential"),
                                                 ("smooth_l1", "constant"), ("smooth_l1", "snr")])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_types_match_reference(loss_type, schedule, masked):
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g) * 2
    t = torch.tensor([3, 400, 990])
    ac = _alphas()
    mask = torch.rand(3, 1, 4, 4, generator=g) if masked else None
    if masked:
        mask[1] = 0.0  # nothing to learn in sample 1: it adds 0
    got = diffusion_loss(pred, target, t, ac, prediction_type="v_prediction", min_snr_gamma=5.0, loss_type=loss_type,
                         huber_schedule=schedule, huber_c=0.2, huber_scale=1.5, mask=mask)
    want = _reference_typed(pred, target, t, ac, loss_type, schedule, 0.2, 1.5, mask, 5.0, "v_prediction")
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_huber_is_quadratic_near_zero_and_linear_far():
    c = torch.tensor([0.5])
    small, large = torch.tensor([[0.02]]), torch.tensor([[100.0]])
    zero = torch.zeros(1, 1)
    # pseudo-Huber 2c(sqrt(d^2+c^2)-c) ~ d^2 for |d| << c and ~ 2c|d| for |d| >> c; smooth_l1 is that / c
    assert float(elementwise_loss(small, zero, "huber", c)) == pytest.approx(0.02**2, rel=1e-2)  # float32: ~1e-3 off
    assert float(elementwise_loss(large, zero, "huber", c)) == pytest.approx(2 * 0.5 * 100 - 2 * 0.25, rel=1e-4)
    assert float(elementwise_loss(large, zero, "smooth_l1", c)) == pytest.approx(2 * 100 - 1.0, rel=1e-4)


def test_full_mask_is_exactly_the_unmasked_loss():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, ac = torch.tensor([10, 700]), _alphas()
    plain = diffusion_loss(pred, target, t, ac)
    full_latent = diffusion_loss(pred, target, t, ac, mask=torch.ones(2, 1, 8, 8))
    full_pixel = diffusion_loss(pred, target, t, ac, mask=torch.ones(2, 1, 64, 64))  # resized to 8x8 inside
    assert torch.equal(plain, full_latent) and torch.equal(plain, full_pixel)


def test_pixel_mask_is_area_averaged_to_latent_pixels():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :4] = 1.0  # the top-left 8x8 block is half white
    small = resize_mask(mask, (2, 2))
    assert small.flatten().tolist() == [0.5, 0.0, 0.0, 0.0]
    elem = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert per_sample_loss(elem, mask).tolist() == [0.0]  # only the top-left latent pixel (loss 0) is weighted
    assert per_sample_loss(elem + 1, mask).tolist() == [1.0]
