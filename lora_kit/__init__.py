"""lora-kit: LoRA fine-tuning for Stable Diffusion U-Nets.

The package is a set of small modules, one concern each (see docs/architecture.md):
config (typed recipes), data (images, captions, buckets, cache), models (loading, tiny presets),
adapters (injection, file formats, tools), train (loop, loss, optimizers, checkpoints),
infer (pipelines, ControlNet, grids), captioning, publish, world (the embedded tiny world) and cli.
Heavy libraries (torch, diffusers) are imported inside the modules that need them so that
`lora-kit --help` stays fast.
"""

__version__ = "0.1.0"
