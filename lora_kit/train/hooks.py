"""accelerate save/load hooks so checkpoints hold the adapter weights, not the frozen base.

`accelerator.save_state` would otherwise write the whole U-Net (3.4 GB for SD1.5) at every checkpoint.
Same pattern as diffusers' train_*_lora.py: pop the models from accelerate's lists and write/read the
peft state dicts ourselves (safetensors).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

UNET_FILE = "adapter_unet.safetensors"
TE_FILE = "adapter_text_encoder_{i}.safetensors"


def register_adapter_hooks(trainer) -> None:
    from lora_kit.adapters.inject import adapter_state_dicts, load_adapter_state_dicts

    acc = trainer.accelerator
    train_te = trainer.recipe.network.train_text_encoder

    def _unwrapped():
        unet = acc.unwrap_model(trainer.unet)
        tes = [acc.unwrap_model(te) for te in trainer.text_encoders]
        return unet, tes

    def save_hook(models, weights, output_dir):
        if not acc.is_main_process:
            return
        while weights:
            weights.pop()
        unet, tes = _unwrapped()
        unet_sd, te_sds = adapter_state_dicts(unet, tes, train_te)
        out = Path(output_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in unet_sd.items()}, str(out / UNET_FILE))
        for i, sd in enumerate(te_sds):
            save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(out / TE_FILE.format(i=i)))
        if getattr(trainer, "ema", None) is not None:
            trainer.ema.save(out)  # the moving average next to the live weights (lora_kit.train.ema)

    def load_hook(models, input_dir):
        while models:
            models.pop()
        unet, tes = _unwrapped()
        d = Path(input_dir)
        te_sds = [load_file(str(d / TE_FILE.format(i=i))) for i in range(len(tes))] if train_te else []
        load_adapter_state_dicts(unet, tes if train_te else [], load_file(str(d / UNET_FILE)), te_sds)
        if getattr(trainer, "ema", None) is not None and not trainer.ema.load(d):
            acc.print(f"{d.name} holds no EMA weights: the moving average starts from its weights")

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)
