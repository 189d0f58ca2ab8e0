"""Sample grids during training: delegated to lora_kit.infer, on the main process only.

Sampling must not change what training does next: the grid code uses its own generators inside
`torch.random.fork_rng`, and switches the modules back to train mode afterwards, so a run with sampling
gives the same adapter (and resumes the same) as one without.
"""

from __future__ import annotations

from pathlib import Path


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
    result = render_training_samples(components, r.sample, trainer.global_step, trainer.out / "samples", size, b.family)
    grid_path, grid_image = (result if isinstance(result, tuple) else (result, None))
    if grid_image is not None and r.log.tensorboard:
        import numpy as np

        tracker = acc.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples/grid", np.asarray(grid_image), trainer.global_step, dataformats="HWC")
    unet.train()
    acc.wait_for_everyone()
    return Path(grid_path)
