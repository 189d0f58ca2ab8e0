"""Writing the trained adapter: kohya file (with ss_* metadata), diffusers file, run summary.

Only the main process writes. File formats and metadata are lora_kit.adapters' job; this module only
gathers what the run knows (steps, dataset stats, hyper-parameters) into a `RunSummary` (lora_kit.summary),
from which the files' metadata is built and which is written as summary.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from lora_kit.adapters.blocks import kohya_network_args
from lora_kit.adapters.embedding import embedding_file_name, split_trigger_embedding, write_trigger_embedding
from lora_kit.adapters.inject import conv_alpha
from lora_kit.adapters.io import DIFFUSERS_WEIGHT_NAME as DIFFUSERS_FILE, write_adapter_files
from lora_kit.config.load import recipe_to_dict
from lora_kit.data.dataset import DataStats
from lora_kit.errors import UserError
from lora_kit.summary import FILE as SUMMARY_FILE, RunSummary
from lora_kit.train.checkpoint import intact_note
from lora_kit.train.optim import describe_optimizer
from lora_kit.utils import describe_write_fault, is_write_fault



def run_summary(recipe, bundle, stats: DataStats, state, optimizer, num_processes: int) -> RunSummary:
    """Everything the kohya metadata builder and the publisher need to know about the run."""
    r, b = recipe, bundle
    opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer  # accelerate wraps it
    return RunSummary(
        output_name=r.name,
        family=b.family,
        base_model=b.source,
        rank=r.network.rank,
        alpha=r.network.alpha,
        network_dropout=r.network.dropout,
        network_args={"target": r.network.target, "use_dora": r.network.use_dora, "init": r.network.init,
                      "train_text_encoder": r.network.train_text_encoder, "algo": r.network.algo,
                      **({"factor": r.network.factor} if r.network.algo == "lokr" else {}),
                      # kohya's own names, which its tools and Civitai read back
                      **({"conv_dim": r.network.conv_rank, "conv_alpha": conv_alpha(r.network)}
                         if r.network.conv_rank else {}),
                      **kohya_network_args(r.network, r.optimizer)},  # block_dims..., loraplus_lr_ratio
        training_started_at=state.started_at,
        training_finished_at=time.time(),
        steps=state.global_step,
        epoch=state.epoch + (1 if state.batch_in_epoch else 0),  # epochs begun, kohya's 1-based count
        max_train_steps=state.total_steps,
        learning_rate=r.optimizer.lr,
        unet_lr=r.optimizer.lr,
        text_encoder_lr=r.optimizer.text_encoder_lr if r.network.train_text_encoder else 0.0,
        optimizer=describe_optimizer(opt),
        lr_scheduler=r.scheduler.name,
        resolution=r.buckets.resolution,
        num_train_images=stats.num_train_images,
        num_reg_images=stats.num_reg_images,
        batch_size=r.train.batch_size * num_processes,
        gradient_accumulation_steps=r.train.gradient_accumulation_steps,
        tag_frequency=stats.tag_frequency,
        dataset_dirs=stats.folders,
        seed=r.seed,
        min_snr_gamma=r.loss.min_snr_gamma,
        noise_offset=r.loss.noise_offset,
        loss_type=r.loss.type,
        **({"huber_schedule": r.loss.huber_schedule, "huber_c": r.loss.huber_c, "huber_scale": r.loss.huber_scale}
           if r.loss.type != "l2" else {}),
        masked_loss=r.loss.masked,
        clip_skip=r.model.clip_skip,
        mixed_precision=r.train.mixed_precision,
        prediction_type=b.prediction_type,
        title=r.save.title or r.name,
        author=r.save.author,
        description=r.save.description,
        license=r.save.license,
        tags=list(r.save.tags),
        trigger_words=[w for w in [r.dataset.trigger_word] if w],
    )


def export_adapters(out_dir: Path, recipe, summary: RunSummary, unet_sd: dict, te_sds: list, adapters,
                    unet_model_config: dict, run, suffix: str = "") -> dict:
    """Write `<name><suffix>.safetensors` (kohya) and the diffusers file (main process only); returns their
    paths. The final export (no suffix) also writes summary.json; intermediate ones go to exports/.
    `adapters`: the InjectedAdapters of training (its peft configs carry the alphas); `run`: the RunFolder."""
    r = recipe
    if adapters.ema is not None:  # [ema]: the files hold the moving average, training keeps the live weights
        unet_sd, te_sds = adapters.ema.averaged(unet_sd), [adapters.ema.averaged(sd) for sd in te_sds]
    info = summary.as_info(recipe_to_dict(r))
    out = out_dir if not suffix else out_dir / "exports"
    te_sds, token_rows = split_trigger_embedding(te_sds)  # pivotal tuning: no LoRA format carries the rows
    emb_name = embedding_file_name(r.dataset.trigger_word, suffix) if token_rows else ""
    if emb_name:  # the LoRA names its embedding (relative), so the grid loads the pair
        info = {**info, "embedding": {"token": r.dataset.trigger_word, "file": emb_name}}
    try:
        files = write_adapter_files(
            out, f"{r.name}{suffix}", unet_sd, te_sds, info,
            unet_config=adapters.unet_config, text_encoder_config=adapters.text_encoder_config,
            unet_model_config=unet_model_config, precision=r.save.precision,
            diffusers_name=DIFFUSERS_FILE if not suffix else f"{r.name}{suffix}_diffusers.safetensors",
        )
        if token_rows:
            files["embedding"] = write_trigger_embedding(out / emb_name, token_rows, r.dataset.trigger_word)
        run.first_output(r)  # recipe.toml / run.json: the run now has something to show
        if not suffix:
            summary.run_id = run.run_id
            summary.files = {k: Path(v).relative_to(out).as_posix() for k, v in files.items()}  # embeddings/ is a subfolder
            summary.write(out_dir / SUMMARY_FILE)
    except Exception as exc:
        if not is_write_fault(exc):
            raise
        root = out_dir / "checkpoints"
        raise UserError(f"{describe_write_fault(exc)} while writing the {'export' if suffix else 'adapter files'} "
                        f"{r.name}{suffix} in {out}; {intact_note(root, run.run_id)}") from exc
    return files
