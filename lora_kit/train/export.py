"""Writing the trained adapter: kohya file (with ss_* metadata), diffusers file, run summary.

Only the main process writes. File formats and metadata are lora_kit.adapters' job; this module only
gathers what the run knows (steps, dataset stats, hyper-parameters) into the `info` dict they take.
"""

from __future__ import annotations

import time
from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.train.checkpoint import intact_note
from lora_kit.utils import atomic_write_json, describe_write_fault, is_write_fault

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def train_info(trainer) -> dict:
    """Everything the kohya metadata builder and the publisher need to know about the run."""
    from lora_kit.adapters.blocks import kohya_network_args
    from lora_kit.adapters.inject import conv_alpha
    from lora_kit.config.load import recipe_to_dict
    from lora_kit.train.optim import describe_optimizer

    r, b, stats = trainer.recipe, trainer.bundle, trainer.data.stats
    trigger = [w for w in [r.dataset.trigger_word] if w]
    return {
        "output_name": r.name,
        "family": b.family,
        "base_model": b.source,
        "rank": r.network.rank,
        "alpha": r.network.alpha,
        "network_dropout": r.network.dropout,
        "network_args": {"target": r.network.target, "use_dora": r.network.use_dora, "init": r.network.init,
                         "train_text_encoder": r.network.train_text_encoder, "algo": r.network.algo,
                         **({"factor": r.network.factor} if r.network.algo == "lokr" else {}),
                         # kohya's own names, which its tools and Civitai read back
                         **({"conv_dim": r.network.conv_rank, "conv_alpha": conv_alpha(r.network)}
                            if r.network.conv_rank else {}),
                         **kohya_network_args(r.network, r.optimizer)},  # block_dims..., loraplus_lr_ratio
        "training_started_at": trainer.started_at,
        "training_finished_at": time.time(),
        "steps": trainer.global_step,
        "epoch": trainer.epoch + (1 if trainer.batch_in_epoch else 0),  # epochs begun, kohya's 1-based count
        "max_train_steps": trainer.total_steps,
        "learning_rate": r.optimizer.lr,
        "unet_lr": r.optimizer.lr,
        "text_encoder_lr": r.optimizer.text_encoder_lr if r.network.train_text_encoder else 0.0,
        "optimizer": describe_optimizer(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer),
        "lr_scheduler": r.scheduler.name,
        "resolution": r.buckets.resolution,
        "num_train_images": stats.num_train_images,
        "num_reg_images": stats.num_reg_images,
        "batch_size": r.train.batch_size * trainer.accelerator.num_processes,
        "gradient_accumulation_steps": r.train.gradient_accumulation_steps,
        "tag_frequency": stats.tag_frequency,
        "dataset_dirs": stats.folders,
        "seed": r.seed,
        "min_snr_gamma": r.loss.min_snr_gamma,
        "noise_offset": r.loss.noise_offset,
        "clip_skip": r.model.clip_skip,
        "mixed_precision": r.train.mixed_precision,
        "prediction_type": b.prediction_type,
        "title": r.save.title or r.name,
        "author": r.save.author,
        "description": r.save.description,
        "license": r.save.license,
        "tags": list(r.save.tags),
        "trigger_words": trigger,
        "recipe": recipe_to_dict(r),
    }


def export_adapters(trainer, suffix: str = "") -> dict:
    """Write `<name><suffix>.safetensors` (kohya) and the diffusers file; returns their paths."""
    from lora_kit.adapters.inject import adapter_state_dicts
    from lora_kit.adapters.io import write_adapter_files

    acc = trainer.accelerator
    if not acc.is_main_process:
        return {}
    r = trainer.recipe
    unet = acc.unwrap_model(trainer.unet)
    tes = [acc.unwrap_model(te) for te in trainer.text_encoders]
    unet_sd, te_sds = adapter_state_dicts(unet, tes, r.network.train_text_encoder)
    ema = trainer.adapters.ema
    if ema is not None:  # [ema]: the files hold the moving average, training keeps the live weights
        unet_sd, te_sds = ema.averaged(unet_sd), [ema.averaged(sd) for sd in te_sds]
    info = train_info(trainer)
    out = trainer.out if not suffix else trainer.out / "exports"
    try:
        files = write_adapter_files(
            out, f"{r.name}{suffix}", unet_sd, te_sds, info,
            unet_config=trainer.adapters.unet_config, text_encoder_config=trainer.adapters.text_encoder_config,
            unet_model_config=dict(unet.config), precision=r.save.precision,
            diffusers_name=DIFFUSERS_FILE if not suffix else f"{r.name}{suffix}_diffusers.safetensors",
        )
        trainer.run.first_output(r)  # recipe.toml / run.json: the run now has something to show
        if not suffix:
            summary = {k: v for k, v in info.items() if k != "recipe"}
            summary["run_id"] = trainer.run.run_id
            summary["files"] = {k: Path(v).name for k, v in files.items()}
            atomic_write_json(trainer.out / "summary.json", summary)
    except Exception as exc:
        if not is_write_fault(exc):
            raise
        root = trainer.out / "checkpoints"
        raise UserError(f"{describe_write_fault(exc)} while writing the {'export' if suffix else 'adapter files'} "
                        f"{r.name}{suffix} in {out}; {intact_note(root, trainer.run.run_id)}") from exc
    return files
