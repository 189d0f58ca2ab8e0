"""`train.compile`: torch.compile of the U-Net, by region or whole.

"regional" compiles every repeated block (the transformer blocks and the ResNet blocks) one by one, through
diffusers' `compile_repeated_blocks` (the PyTorch regional-compilation recipe): blocks of one class share
their compiled code, so compile time grows with the number of distinct block shapes, not with the depth of
the net, and a new bucket resolution recompiles blocks rather than the whole U-Net. "full" compiles the
U-Net's forward as one graph (longer compile, a bucket change recompiles everything).

Modules are compiled in place (`module.compile`), so parameter names, checkpoints and exported files are
unchanged. `compile_mode` is torch.compile's mode ("reduce-overhead" adds CUDA graphs) and
`compile_backend` its backend ("inductor"; the CPU tests use "aot_eager", which traces the same graphs and
autograd without generating kernels).
"""

from __future__ import annotations

REGIONAL_BLOCKS = ["BasicTransformerBlock", "ResnetBlock2D"]
# Distinct block shapes (channels x resolution x whether the input needs a gradient) each take a cache
# entry; torch's default limit of 8 per code object would silently fall back to eager in an SD U-Net.
RECOMPILE_LIMIT = 64


def compile_unet(unet, how: str, mode: str = "default", backend: str = "inductor") -> str:
    """Compile `unet` in place as `how` ("off" / "regional" / "full"); returns a line for the run summary."""
    if how == "off":
        return "off"
    import torch._dynamo  # lazy: dynamo takes seconds to import and compilation is off by default

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 16 * RECOMPILE_LIMIT)
    kwargs = {"backend": backend} if mode == "default" else {"backend": backend, "mode": mode}
    if how == "regional":
        unet._repeated_blocks = list(REGIONAL_BLOCKS)  # diffusers lists only the transformer blocks
        unet.compile_repeated_blocks(**kwargs)
        count = sum(type(m).__name__ in REGIONAL_BLOCKS for m in unet.modules())
        return f"regional ({count} blocks; {backend}, mode {mode})"
    unet.compile(**kwargs)
    return f"full U-Net ({backend}, mode {mode})"
