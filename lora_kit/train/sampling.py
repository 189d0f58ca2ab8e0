"""Sample grids during training: delegated to lora_kit.infer, on the main process only.

Sampling must not change what training does next: the grid code uses its own generators inside
`torch.random.fork_rng`, and switches the modules back to train mode afterwards, so a run with sampling
gives the same adapter (and resumes the same) as one without.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def idle_frozen_modules(data, bundle, recipe) -> list:
    """Frozen modules the training steps never call: the VAE when latents are cached, the text encoders
    when their embeddings are (never when they are trained). Validation reads the same caches."""
    idle = [bundle.vae] if data.latents_cached else []
    if data.text_cached and not recipe.network.train_text_encoder:
        idle += list(bundle.text_encoders)
    return idle


@contextmanager
def on_device(modules: list, device):
    """Modules moved to `device` for a block (sampling), then back to the CPU."""
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


def render_samples(trainer) -> Path | None:
    acc, r = trainer.accelerator, trainer.recipe
    if not acc.is_main_process or not r.sample.prompts:
        acc.wait_for_everyone()
        return None
    from lora_kit.infer.training import render_training_samples

    b = trainer.bundle
    unet = acc.unwrap_model(trainer.unet)
    tes = [acc.unwrap_model(te) for te in trainer.text_encoders]
    components = {"unet": unet, "vae": b.vae, "scheduler": b.noise_scheduler, "text_encoders": tes, "tokenizers": b.tokenizers}
    size = (r.sample.width or r.buckets.resolution, r.sample.height or r.buckets.resolution)
    with on_device(trainer.offloaded, acc.device):
        result = render_training_samples(components, r.sample, trainer.global_step, trainer.out / "samples", size, b.family)
    grid_path, grid_image = (result if isinstance(result, tuple) else (result, None))
    if grid_image is not None and r.log.tensorboard:
        import numpy as np

        tracker = acc.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples/grid", np.asarray(grid_image), trainer.global_step, dataformats="HWC")
    unet.train()
    acc.wait_for_everyone()
    return Path(grid_path)
