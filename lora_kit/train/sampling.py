"""Sample grids during training: the [sample] grid of a step, rendered with lora_kit.infer, main process only.

The U-Net (and maybe the text encoders) carry the peft adapter being trained ("default"). Its weight is
applied per call with `cross_attention_kwargs={"scale": w}`: diffusers' `apply_lora_scale` scales the
U-Net's LoRA layers (and the pipeline scales the text encoders' layers through `lora_scale`) for SD1/SD2
and SDXL alike, with peft-injected adapters (`unet.add_adapter`) as with loaded ones; weight 0 gives
exactly the base model.

Sampling must not change training: it runs inside `torch.random.fork_rng` (plus Python and numpy RNG
state saved and restored) with its own CPU generators, switches the modules to eval mode (LoRA dropout
off) and restores every module's train flag and every adapter's scaling exactly as they were, so a run
with sampling gives the same adapter (and resumes the same) as one without. Frozen modules kept off the
accelerator during training (`idle_frozen_modules`) come back only while a grid renders (`on_device`).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from PIL import Image

from lora_kit.infer.control import load_controlnet
from lora_kit.infer.defaults import GENERIC, components_sampling_defaults, resolve
from lora_kit.infer.grid import render_grid
from lora_kit.infer.pipeline import LoraPipeline
from lora_kit.infer.spec import Axis, CellParams, ControlRef, GridSpec, LoraRef

ADAPTER_NAME = "default"
_CONTROLNETS: dict = {}  # one loaded ControlNet per spec, reused across sampling steps


class TrainingSamples(NamedTuple):
    path: Path  # grid.png
    image: Image.Image  # the grid, for TensorBoard


def _modules(pipe) -> list:
    return [m for m in (getattr(pipe, n, None) for n in ("unet", "vae", "text_encoder", "text_encoder_2")) if m is not None]


@contextlib.contextmanager
def preserved_training_state(modules: list):
    """eval() inside; afterwards every submodule's train flag, every LoRA scaling and all RNGs as before."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    scalings = [(m, dict(m.scaling)) for mod in modules for m in mod.modules() if isinstance(getattr(m, "scaling", None), dict)]
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            for mod in modules:
                mod.eval()
            yield
    finally:
        for m, flag in flags:
            m.training = flag
        for m, scaling in scalings:
            m.scaling.clear()
            m.scaling.update(scaling)
        random.setstate(py_state)
        np.random.set_state(np_state)


def training_grid_spec(sample_cfg, size: tuple[int, int], clip_skip: int = 1, lora_name: str = ADAPTER_NAME, defaults: dict | None = None) -> GridSpec:
    """Rows = prompts; columns = adapter weight (outer) x seed (inner). `lora_name` is only the alias
    shown in labels and in `<lora:name:w>`; the in-memory adapter is scaled whatever its peft name.
    `defaults`: the model's sampling defaults (infer.defaults), for the [sample] keys left at 0 / ""."""
    sampling = resolve({"cfg": sample_cfg.cfg, "steps": sample_cfg.steps, "sampler": sample_cfg.sampler}, defaults or GENERIC)
    base = CellParams(
        prompt=sample_cfg.prompts[0], negative_prompt=sample_cfg.negative_prompt, seed=int(sample_cfg.seeds[0]),
        steps=int(sampling["steps"]), cfg=float(sampling["cfg"]), sampler=sampling["sampler"],
        width=int(size[0]), height=int(size[1]), clip_skip=int(clip_skip),
        loras=[LoraRef(path="", weight=1.0, name=lora_name)],
    )  # fmt: skip
    if sample_cfg.control_image and sample_cfg.controlnet:
        base.controls = [ControlRef(model=sample_cfg.controlnet, image=sample_cfg.control_image)]
    rows = [Axis("prompt", list(sample_cfg.prompts))] if len(sample_cfg.prompts) > 1 else []
    cols = [Axis("weight", [float(w) for w in sample_cfg.weights], target=lora_name)]
    if len(sample_cfg.seeds) > 1:
        cols.append(Axis("seed", [int(s) for s in sample_cfg.seeds]))
    if not rows:
        rows = [Axis("prompt", list(sample_cfg.prompts))]
    # No hidden references: the weight-0 column is the base when the recipe asks for it.
    return GridSpec(base=base, rows=rows, cols=cols, fuse=False, batch_size=len(sample_cfg.seeds), base_distance=False)


def render_training_samples(pipe_or_components, sample_cfg, step: int, out_dir: Path, size: tuple[int, int], family: str | None = None, *, clip_skip: int = 1, model_name: str = "model", lora_name: str = ADAPTER_NAME) -> TrainingSamples:
    """Render the [sample] grid of `step` into out_dir/step-{step:06d}/; returns (grid.png path, grid image).

    `model_name`: the recipe's model spec (shown as `Model:`); `lora_name`: the alias in `<lora:name:w>`."""
    comps = pipe_or_components
    if isinstance(comps, dict) and "unet" in comps:
        comps = {**comps, "unet": extract_model_from_parallel(comps["unet"])}
    lp = LoraPipeline.from_components(comps, family, name=model_name)
    spec = training_grid_spec(sample_cfg, size, clip_skip, lora_name, components_sampling_defaults(comps))
    for c in spec.base.controls:
        if c.model not in _CONTROLNETS:
            _CONTROLNETS.clear()
            _CONTROLNETS[c.model] = load_controlnet(c.model, lp.pipe.unet.dtype).to(lp.device)
        lp.add_controlnet(c.model, _CONTROLNETS[c.model])
    out = Path(out_dir) / f"step-{int(step):06d}"
    with preserved_training_state(_modules(lp.pipe) + list(_CONTROLNETS.values())):
        result = render_grid(spec, out, pipeline=lp, overwrite=True, progress=False)
    return TrainingSamples(result.grid_path, result.image)


def idle_frozen_modules(latents_cached: bool, text_cached: bool, bundle, train_text_encoder: bool) -> list:
    """Frozen modules the training steps never call: the VAE when latents are cached, the text encoders
    when their embeddings are (never when they are trained). Validation reads the same caches."""
    idle = [bundle.vae] if latents_cached else []
    if text_cached and not train_text_encoder:
        idle += list(bundle.text_encoders)
    return idle


@contextlib.contextmanager
def on_device(modules: list, device):
    """Modules moved to `device` for a block (sampling), then back to the CPU."""
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


def render_samples(acc, components: dict, offloaded: list, recipe, step: int, out_dir: Path, family: str | None) -> Path | None:
    """The recipe's [sample] grid of `step` under out_dir (main process; every process waits for it).
    `components`: unet, vae, scheduler, text_encoders, tokenizers (possibly wrapped for DDP)."""
    r = recipe
    if not acc.is_main_process or not r.sample.prompts:
        acc.wait_for_everyone()
        return None
    comps = {**components, "unet": acc.unwrap_model(components["unet"]),
             "text_encoders": [acc.unwrap_model(te) for te in components["text_encoders"]]}
    size = (r.sample.width or r.buckets.resolution, r.sample.height or r.buckets.resolution)
    with on_device(offloaded, acc.device):
        result = render_training_samples(comps, r.sample, step, out_dir, size, family)
    if r.log.tensorboard:
        tracker = acc.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples/grid", np.asarray(result.image), step, dataformats="HWC")
    comps["unet"].train()
    acc.wait_for_everyone()
    return Path(result.path)
