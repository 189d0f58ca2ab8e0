"""accelerate save/load hooks so checkpoints hold the adapter weights, not the frozen base.

`accelerator.save_state` would otherwise write the whole U-Net (3.4 GB for SD1.5) at every checkpoint.
Same pattern as diffusers' train_*_lora.py: pop the models from accelerate's lists and write/read the
peft state dicts ourselves (safetensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from safetensors.torch import load_file, save_file

from lora_kit.adapters.inject import adapter_state_dicts, load_adapter_state_dicts

UNET_FILE = "adapter_unet.safetensors"
TE_FILE = "adapter_text_encoder_{i}.safetensors"


def register_adapter_hooks(accelerator, models: Callable[[], tuple], train_text_encoder: bool, ema=None) -> None:
    """`models()` -> (U-Net, [text encoders]) as they are when a checkpoint is written or read: a callable
    because `accelerator.prepare` wraps them after the hooks are registered. `ema`: the AdapterEMA
    (lora_kit.train.ema) or None; its average is saved next to the live weights."""
    acc = accelerator

    def _unwrapped():
        unet, tes = models()
        return acc.unwrap_model(unet), [acc.unwrap_model(te) for te in tes]

    def save_hook(_models, weights, output_dir):
        if not acc.is_main_process:
            return
        while weights:
            weights.pop()
        unet, tes = _unwrapped()
        unet_sd, te_sds = adapter_state_dicts(unet, tes, train_text_encoder)
        out = Path(output_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in unet_sd.items()}, str(out / UNET_FILE))
        for i, sd in enumerate(te_sds):
            save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(out / TE_FILE.format(i=i)))
        if ema is not None:
            ema.save(out)

    def load_hook(_models, input_dir):
        while _models:
            _models.pop()
        unet, tes = _unwrapped()
        d = Path(input_dir)
        te_sds = [load_file(str(d / TE_FILE.format(i=i))) for i in range(len(tes))] if train_text_encoder else []
        load_adapter_state_dicts(unet, tes if train_text_encoder else [], load_file(str(d / UNET_FILE)), te_sds)
        if ema is not None and not ema.load(d):
            acc.print(f"{d.name} holds no EMA weights: the moving average starts from its weights")

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)
