"""LoraPipeline on the tiny SD1 model: stacking, fusing, ControlNet, img2img, samplers, clip skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lora_kit.errors import UserError
from lora_kit.infer.pipeline import LoraPipeline
from lora_kit.infer.spec import CellParams, ControlRef, LoraRef
from lora_kit.infer.synthetic import random_controlnet, random_lora_state_dict, write_random_lora

STEPS = 5


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture(scope="module")
def pipe(tiny_sd15_dir):
    return LoraPipeline.load(str(tiny_sd15_dir))


@pytest.fixture(scope="module")
def files(tmp_path_factory, pipe):
    d = tmp_path_factory.mktemp("loras")
    unet, te = pipe.pipe.unet, pipe.pipe.text_encoder
    out = {
        "a": write_random_lora(d / "a.safetensors", unet, rank=4, seed=1, fmt="peft"),
        "a_kohya": write_random_lora(d / "a_kohya.safetensors", unet, rank=4, seed=1, fmt="kohya"),
        "b": write_random_lora(d / "b.safetensors", unet, rank=2, alpha=1, seed=2, fmt="kohya"),
        "te": write_random_lora(d / "te.safetensors", unet, te, rank=4, seed=3, fmt="kohya"),
    }
    # One LoRA whose delta is 0.6 * delta_a + 0.3 * delta_b: ranks concatenated (rank 6, alpha = rank).
    sa = random_lora_state_dict(unet, rank=4, seed=1, fmt="peft")
    sb = random_lora_state_dict(unet, rank=2, alpha=1, seed=2, fmt="peft")  # alpha baked into B
    merged = {}
    for k in sa:
        if k.endswith("lora_A.weight"):
            merged[k] = torch.cat([sa[k], sb[k]], dim=0)
        else:
            merged[k] = torch.cat([0.6 * sa[k], 0.3 * sb[k]], dim=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in merged.items()}, str(d / "merged.safetensors"))
    out["merged"] = d / "merged.safetensors"
    cn = random_controlnet(unet, pipe.pipe.vae_scale_factor, seed=0)
    cn.save_pretrained(d / "cn")
    cn2 = random_controlnet(unet, pipe.pipe.vae_scale_factor, seed=1)
    cn2.save_pretrained(d / "cn2")
    out["cn"], out["cn2"] = d / "cn", d / "cn2"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "control.png")
    out["control"] = d / "control.png"
    return {k: str(v) for k, v in out.items()}


def cell(**kw) -> CellParams:
    return CellParams(**{"prompt": "a red star", "seed": 7, "steps": STEPS, "width": 64, "height": 64, **kw})


def gen(pipe, fuse=True, **kw) -> np.ndarray:
    return arr(pipe.generate([cell(**kw)], fuse=fuse)[0])


def test_fused_equals_unfused_and_unfuse_restores_the_exact_base(pipe, files):
    pipe.reset()
    base = gen(pipe)
    weights = pipe.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    loras = [LoraRef(files["a"], 0.7), LoraRef(files["b"], 0.4)]
    unfused = gen(pipe, fuse=False, loras=loras)
    fused = gen(pipe, fuse=True, loras=loras)
    assert np.abs(unfused - base).mean() > 2.0  # the LoRAs do change the image
    # Stated tolerance: fused and unfused agree within one 8-bit level (float rounding only).
    assert np.abs(fused - unfused).max() <= 1 and np.abs(fused - unfused).mean() < 0.01
    gen(pipe, fuse=True, loras=[LoraRef(files["a"], -1.0)])  # another weight set fused in between
    assert np.array_equal(gen(pipe, fuse=True, loras=loras), fused)  # pristine base + same delta each time
    pipe.unfuse()
    assert not pipe._fused
    q = pipe.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.get_base_layer().weight
    assert torch.equal(q, weights)  # bit-exact, not W + d - d
    assert np.array_equal(gen(pipe, loras=[LoraRef(files["a"], 0.0)]), base)


def test_two_stacked_loras_equal_one_merged_lora(pipe, files):
    pipe.reset()
    stacked = gen(pipe, fuse=False, loras=[LoraRef(files["a"], 0.6), LoraRef(files["b"], 0.3)])
    merged = gen(pipe, fuse=False, loras=[LoraRef(files["merged"], 1.0)])
    assert np.abs(stacked - merged).max() <= 1
    other = gen(pipe, fuse=False, loras=[LoraRef(files["a"], 0.3), LoraRef(files["b"], 0.6)])
    assert np.abs(other - merged).mean() > 1.0  # the weights matter: (a, b) is not (b, a)


def test_kohya_and_diffusers_files_of_one_lora_give_the_same_image(pipe, files):
    pipe.reset()
    peft = gen(pipe, loras=[LoraRef(files["a"], 1.0)])
    kohya = gen(pipe, loras=[LoraRef(files["a_kohya"], 1.0)])
    assert np.abs(peft - kohya).max() <= 1
    assert set(pipe._adapters) == {files["a_kohya"]}  # the unused adapter was unloaded


def test_text_encoder_lora_is_fused_too(pipe, files):
    pipe.reset()
    unfused = gen(pipe, fuse=False, loras=[LoraRef(files["te"], 1.0)])
    fused = gen(pipe, fuse=True, loras=[LoraRef(files["te"], 1.0)])
    assert np.abs(fused - unfused).max() <= 1
    assert "text_encoder" in pipe.pipe.get_list_adapters()


def test_controlnet_scale_zero_equals_no_controlnet(pipe, files):
    pipe.reset()
    plain = gen(pipe)
    net = ControlRef(files["cn"], files["control"], scale=0.0)
    calls = []
    hook = pipe._controlnet(files["cn"]).register_forward_hook(lambda *a: calls.append(1))
    try:
        assert np.array_equal(gen(pipe, controls=[net]), plain)
        assert calls == []  # a net at scale 0 is not run at all
        with_cn = gen(pipe, controls=[ControlRef(files["cn"], files["control"], scale=1.0)])
        assert len(calls) > 0
    finally:
        hook.remove()
    assert np.abs(with_cn - plain).mean() > 1.0
    # Two nets with per-net scales: (1, 0) equals the first net alone.
    multi = gen(pipe, controls=[ControlRef(files["cn"], files["control"], scale=1.0), ControlRef(files["cn2"], files["control"], scale=0.0)])
    assert np.array_equal(multi, with_cn)  # the net at scale 0 is dropped: the first net alone, exactly
    both = gen(pipe, controls=[ControlRef(files["cn"], files["control"], scale=1.0), ControlRef(files["cn2"], files["control"], scale=1.0)])
    assert np.abs(both - with_cn).mean() > 1.0
    # The guidance window matters: the net active only for the first 40% of steps differs from full.
    early = gen(pipe, controls=[ControlRef(files["cn"], files["control"], scale=1.0, start=0.0, end=0.4)])
    assert np.abs(early - with_cn).mean() > 0.5 and np.abs(early - plain).mean() > 0.5


def test_controlnet_with_lora_and_canny(pipe, files, tmp_path):
    pipe.reset()
    sq = np.zeros((64, 64, 3), np.uint8)
    sq[16:48, 16:48] = 255
    Image.fromarray(sq).save(tmp_path / "sq.png")
    c = [ControlRef(files["cn"], str(tmp_path / "sq.png"), preprocess="canny")]
    no_lora = gen(pipe, controls=c)
    with_lora = gen(pipe, controls=c, loras=[LoraRef(files["a"], 1.0)])
    assert np.abs(with_lora - no_lora).mean() > 1.0  # LoRAs reach the ControlNet pipeline (shared U-Net)


def test_img2img_strength(pipe, files, tmp_path):
    pipe.reset()
    init = tmp_path / "init.png"
    Image.new("RGB", (96, 96), (200, 40, 40)).save(init)
    target = arr(Image.open(init).resize((64, 64)))
    low = gen(pipe, init_image=str(init), strength=0.3, steps=10)
    high = gen(pipe, init_image=str(init), strength=0.9, steps=10)
    assert low.shape == (64, 64, 3)
    assert np.abs(low - target).mean() < np.abs(high - target).mean()
    with_cn = gen(pipe, init_image=str(init), strength=0.6, steps=10, controls=[ControlRef(files["cn"], files["control"])])
    assert with_cn.shape == (64, 64, 3)


def test_clip_skip_and_batching(pipe):
    pipe.reset()
    assert np.abs(gen(pipe, clip_skip=2) - gen(pipe)).mean() > 0.5
    batch = pipe.generate([cell(seed=s) for s in (1, 2, 3)])
    alone = [arr(pipe.generate([cell(seed=s)])[0]) for s in (1, 2, 3)]
    for b, a in zip(batch, alone):
        assert np.abs(arr(b) - a).max() <= 1  # batched matmuls round differently: within one level
    assert np.abs(alone[0] - alone[1]).mean() > 5  # different seeds, different images
    with pytest.raises(ValueError):
        pipe.generate([cell(seed=1), cell(seed=2, cfg=3.0)])


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DDIM", "UniPC", "Heun", "PNDM", "DPM++ 2M Karras", "DPM++ 2M SDE"])
def test_samplers_generate(pipe, sampler):
    pipe.reset()
    img = gen(pipe, sampler=sampler, steps=4)
    ref = gen(pipe, sampler="DPM++ 2M", steps=4)
    assert img.shape == (64, 64, 3) and img.std() > 1
    assert not np.array_equal(img, ref)


def test_lms_needs_scipy_or_runs(pipe):
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(UserError, match="scipy"):
            gen(pipe, sampler="LMS", steps=4)
    else:
        assert gen(pipe, sampler="LMS", steps=4).std() > 1


def test_missing_model_offline_names_what_to_fetch():
    with pytest.raises(UserError, match="hf download"):
        LoraPipeline.load("someone/no-such-model-offline")


def test_missing_controlnet_and_lora_are_user_errors(pipe, tmp_path):
    with pytest.raises(UserError, match="hf download"):
        pipe.generate([cell(controls=[ControlRef("someone/no-such-controlnet", "x.png")])])
    with pytest.raises(UserError, match="does not exist"):
        pipe.generate([cell(loras=[LoraRef(str(tmp_path / "missing.safetensors"), 1.0)])])
