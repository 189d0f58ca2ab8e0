"""What a person sees during training: the one-screen summary, the progress bar, TensorBoard scalars."""

from __future__ import annotations

import resource
import sys
import time

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lora_kit.adapters.inject import conv_alpha, text_encoder_dims
from lora_kit.config.load import recipe_to_dict
from lora_kit.data.trigger_words import trigger_word_warnings
from lora_kit.train.optim import optimizer_extras


def tracker_config(recipe) -> dict:
    """Flat scalar hyper-parameters for TensorBoard's hparams view."""
    flat = {}
    for section, values in recipe_to_dict(recipe).items():
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, (int, float, str, bool)):
                    flat[f"{section}.{k}"] = v
        elif isinstance(values, (int, float, str, bool)):
            flat[section] = values
    return flat


@dataclass
class SetupFacts:
    """What setup decided, for the summary screen (the recipe and the data say the rest)."""

    threads: tuple[int, str]  # (torch CPU threads, why): lora_kit.runtime
    checkpointing: tuple[bool, str]  # (on, why): lora_kit.train.memory
    compiled: str  # lora_kit.train.compile's line
    offloaded: int  # frozen modules kept off the accelerator until sampling
    trainable_parameters: int


def _text_encoder_words(net) -> str:
    """" + text encoder[ rank R alpha A][ (which layers)]": its own rank and alpha only where they differ."""
    rank, alpha = text_encoder_dims(net)
    own = f" rank {rank} alpha {alpha:g}" if (rank, alpha) != (net.rank, net.alpha) else ""
    where = {"attn-mlp": " (attention and MLP)", "values": " (attention values and outputs)"}.get(net.text_encoder_target, "")
    token = " + the trigger word's embedding" if net.train_trigger_embedding else ""
    return " + text encoder" + own + where + token


def print_summary(recipe, bundle, data, acc, out, state, facts: SetupFacts, file=None) -> None:
    """The one-screen summary at the start of a run (main process)."""
    r, b, d = recipe, bundle, data
    stats = d.data.stats
    hist = ", ".join(f"{w}x{h}:{n}" for (w, h), n in sorted(stats.bucket_histogram.items()))
    global_batch = r.train.batch_size * acc.num_processes * r.train.gradient_accumulation_steps
    lines = [
        "=" * 72,
        f"lora-kit train  {r.name}  ->  {out}",
        f"model       {b.source}  [{b.family}, {b.prediction_type}]",
        f"dataset     {r.dataset.path}: {stats.num_train_files} images"
        + (f" + {stats.num_reg_files} reg" if stats.num_reg_images else "")
        + f", {len(d.data.dataset)} samples/epoch with repeats, {stats.skipped} skipped"
        + (f", {stats.num_validation_images} held out" if stats.num_validation_images else ""),
        f"buckets     {hist}",
        f"steps       {state.total_steps} ({state.steps_per_epoch}/epoch), batch {r.train.batch_size} x "
        f"{acc.num_processes} proc x {r.train.gradient_accumulation_steps} accum = {global_batch}",
        f"precision   {acc.mixed_precision}; grad checkpointing {'on' if facts.checkpointing[0] else 'off'} "
        f"({facts.checkpointing[1]}); attention {r.train.attention}; compile {facts.compiled}",
        f"threads     {facts.threads[0]} torch CPU thread(s): {facts.threads[1]}",
        f"optimizer   {r.optimizer.name} lr {r.optimizer.lr:g}"
        + (f", text encoder lr {r.optimizer.text_encoder_lr:g}" if r.network.train_text_encoder else "")
        + f"; schedule {r.scheduler.name} (warmup {r.scheduler.warmup_steps})" + optimizer_extras(r),
        f"network     {r.network.algo.upper() if r.network.algo != 'lora' else 'LoRA'} rank {r.network.rank} alpha {r.network.alpha:g} on {r.network.target}"
        + (f" + ResNet convs rank {r.network.conv_rank} alpha {conv_alpha(r.network):g}" if r.network.conv_rank else "")
        + (_text_encoder_words(r.network) if r.network.train_text_encoder else "")
        + f"; {facts.trainable_parameters:,} trainable parameters",
        f"loss        {r.loss.type}{' (' + r.loss.huber_schedule + ' Huber schedule)' if r.loss.type != 'l2' else ''}"
        f"{', masked' if r.loss.masked else ''} on {b.prediction_type}; min-SNR {r.loss.min_snr_gamma or 'off'}; noise offset {r.loss.noise_offset or 'off'}; "
        f"timesteps [{r.loss.min_timestep}, {r.loss.max_timestep})"
        + (f"; reg x{r.loss.prior_loss_weight:g} towards {'the base model' if r.loss.prior_target == 'base' else 'their images'}"
           if stats.num_reg_images else ""),
        f"cache       latents {'on' if d.latents_cached else 'off'}; text {'on' if d.text_cached else 'off'}"
        + (f"; {facts.offloaded} frozen module(s) kept on the CPU until sampling" if facts.offloaded and acc.device.type != "cpu" else ""),
        "=" * 72,
    ]
    # A trigger word of several CLIP tokens, or a common one, learns poorly: said before the steps start.
    lines += [f"warning: {w}" for w in trigger_word_warnings(r.dataset.trigger_word, b.tokenizers[0])]
    print("\n".join(lines), file=file or sys.stdout, flush=True)  # sys.stdout now, not at import (capture)


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


class StepMeter:
    """Loss and throughput between two logged steps.

    The loss is summed on the device and read once per log interval: reading it every step (`float(loss)`)
    would make the host wait for the device at every step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss_sum, self.count, self.images, self.t0 = None, 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        loss = loss.detach()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.count += 1
        self.images += images

    def read(self, reduce=None) -> tuple[float, float]:
        """(mean loss, images/s) since the last reset; `reduce` (accelerator.reduce) averages over processes."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        if self.loss_sum is None:
            return float("nan"), 0.0
        mean = self.loss_sum / self.count
        if reduce is not None:
            mean = reduce(mean, reduction="mean")
        return float(mean), self.images / dt


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: peak resident set size of the process (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log_step(acc, step: int, meter: StepMeter, grad_norm, optimizer, lr_scheduler, bar) -> float:
    """Read the meter (every process takes part in the reduction), show it, log it; returns the mean loss."""
    loss, ips = meter.read(acc.reduce if acc.num_processes > 1 else None)
    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.1f}")
    logs = {"train/loss": loss, "perf/images_per_s": ips, "perf/peak_memory_mb": peak_memory_mb(acc.device)}
    for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr()):
        logs[f"lr/{group.get('name', 'group')}"] = lr
    if grad_norm is not None:
        logs["train/grad_norm"] = float(grad_norm)
    acc.log(logs, step=step)
    meter.reset()
    return loss
