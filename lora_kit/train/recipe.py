"""The LoRA training recipe: setup -> train -> save -> cleanup (torchtune-style, no inheritance).

Read top to bottom: `setup` builds everything from the recipe (accelerator, models, adapters, data,
optimizer, schedule, trackers) and resumes if asked; `train` is the loop; `save` writes the adapter
files. The per-step math lives in step.py and loss.py; file formats in lora_kit.adapters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.models.attention_processor import AttnProcessor2_0

from lora_kit.adapters.embedding import trigger_token_ids
from lora_kit.adapters.inject import adapter_state_dicts, inject_lora, tuner_layers
from lora_kit.config.schema import Recipe
from lora_kit.models.loading import load_for_training
from lora_kit.precision import DTYPES  # accelerate's "no"/"fp16"/"bf16" among the names it maps
from lora_kit.runtime import ThreadGovernor, configure_threads
from lora_kit.train import checkpoint as ckpt
from lora_kit.train.compile import compile_unet
from lora_kit.train.data import build_batch_feed
from lora_kit.train.ema import build_ema
from lora_kit.train.export import export_adapters, run_summary
from lora_kit.train.hooks import register_adapter_hooks
from lora_kit.train.memory import decide_checkpointing
from lora_kit.train.optim import build_lr_scheduler, build_optimizer, param_groups
from lora_kit.train.report import SetupFacts, StepMeter, log_step, print_summary, progress_bar, tracker_config
from lora_kit.train.runfolder import RunFolder
from lora_kit.train.sampling import idle_frozen_modules, render_samples
from lora_kit.train.state import TrainState
from lora_kit.train.step import StepContext, forward_loss
from lora_kit.train.validation import validation_loss


def _cpu_only_multiprocess() -> bool:
    """`accelerate launch --multi_gpu` on a box without GPUs: accelerate only sets up gloo DDP when told
    cpu=True; otherwise every process silently trains alone as rank 0 of 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


class LoraTrainer:
    # The loop's counters live in self.state (TrainState); these read them for callers of a finished trainer.
    global_step = property(lambda self: self.state.global_step, lambda self, v: setattr(self.state, "global_step", v))
    total_steps = property(lambda self: self.state.total_steps)
    last_loss = property(lambda self: self.state.last_loss)
    last_val_loss = property(lambda self: self.state.last_val_loss)

    def __init__(self, recipe: Recipe, resume: str | None = None, stop_after: int = 0, overwrite: bool = False,
                 force_resume: bool = False):
        self.recipe = recipe
        self.resume = resume
        self.stop_after = stop_after  # stop (with a checkpoint) after this many steps in this process' run
        self.out = Path(recipe.output_dir)
        self.run = RunFolder(self.out, resume, overwrite, force_resume)  # lock, run id, resume choice
        self.state = TrainState()  # step, epoch, position, losses: what the loop owns and updates
        self.seen_indices: list[int] = []  # dataset indices this process trained on (this invocation)
        self.offloaded: list = []  # frozen modules moved off the accelerator once the caches cover them

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        r = self.recipe
        self.accelerator = acc = Accelerator(
            cpu=_cpu_only_multiprocess(),
            mixed_precision=r.train.mixed_precision,
            gradient_accumulation_steps=r.train.gradient_accumulation_steps,
            log_with="tensorboard" if r.log.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        set_seed(r.seed)
        self.weight_dtype = DTYPES[acc.mixed_precision]
        self.run.open(r, acc)  # lock, run id, which checkpoint to resume: before the model loads
        self._load_model()
        self.threads = configure_threads()  # (n, why): the cores other processes leave free
        self._inject()
        self._build_data()
        self._place_models()
        self._set_checkpointing()
        t = r.train
        self.compiled = compile_unet(self.unet, t.compile, t.compile_mode, t.compile_backend)  # before DDP wraps it
        self._build_optimizer()
        self._register_checkpoint_hooks()
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(self.unet, self.optimizer, self.lr_scheduler)
        if r.network.train_text_encoder:
            self.text_encoders = [acc.prepare(te) for te in self.text_encoders]
        self.ctx = self._step_context()
        if acc.is_main_process:
            # recipe.toml is written with the run's first checkpoint or export (runfolder.first_output)
            if r.log.tensorboard:
                acc.init_trackers("lora-kit", config=tracker_config(r))
        self._maybe_resume()

    def _load_model(self) -> None:
        r, acc = self.recipe, self.accelerator
        with acc.main_process_first():  # builtin presets materialise once, on the main process
            # model + VAE override + zero-terminal-SNR schedule + VAE dtype rule, the same for `lora-kit cache`
            self.bundle = load_for_training(r.model, acc.mixed_precision, acc.device)
        self.unet = self.bundle.unet
        self.text_encoders = self.bundle.text_encoders

    def _inject(self) -> None:
        r = self.recipe
        if r.train.attention == "sdpa":
            self.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch scaled_dot_product_attention
        # Seed right here: adapter init must not depend on what ran before (e.g. a builtin model being
        # materialised on the main process only, which draws from the global RNG).
        set_seed(r.seed)
        trigger_ids = (trigger_token_ids(self.bundle.tokenizers[0], r.dataset.trigger_word)
                       if r.network.train_trigger_embedding else ())  # pivotal tuning: the trigger's own rows
        self.adapters = inject_lora(self.unet, self.text_encoders, r.network, self.weight_dtype,
                                    sdxl=self.bundle.is_sdxl, opt=r.optimizer, trigger_ids=trigger_ids)
        for te in self.text_encoders:  # on the device for the text cache; the U-Net waits (_place_models)
            te.to(self.accelerator.device)

    def _build_data(self) -> None:
        self.data = build_batch_feed(self.recipe, self.bundle, self.accelerator)  # .data: the TrainData
        r = self.recipe
        per_epoch = math.ceil(len(self.data.sampler) / r.train.gradient_accumulation_steps)
        self.state.steps_per_epoch = max(per_epoch, 1)
        self.state.total_steps = r.train.max_steps or r.train.epochs * self.state.steps_per_epoch

    def _place_models(self) -> None:
        """The U-Net joins the accelerator only after the caches are built, so the VAE's full-resolution
        encode does not share memory with it. Frozen modules whose every output is now cached leave the
        accelerator (kohya's cache_latents / cache_text_encoder_outputs do the same): for SDXL that is
        1.9 GB of text encoders and VAE. Sampling brings them back for its duration."""
        self.unet.to(self.accelerator.device)
        d = self.data
        self.offloaded = idle_frozen_modules(d.latents_cached, d.text_cached, self.bundle, self.recipe.network.train_text_encoder)
        for m in self.offloaded:
            m.to("cpu")

    def _set_checkpointing(self) -> None:
        """Gradient checkpointing as the recipe says, or "auto": measured against the free device memory."""
        r, acc = self.recipe, self.accelerator
        w, h = max(self.data.data.buckets, key=lambda b: b[0] * b[1])
        scale = 2 ** (len(self.bundle.vae.config.block_out_channels) - 1)
        on, why = decide_checkpointing(r.train.gradient_checkpointing, self.unet, (h // scale, w // scale),
                                       r.train.batch_size, acc.device, self.weight_dtype, acc.autocast)
        self.checkpointing = (on, why)
        if on:
            self.unet.enable_gradient_checkpointing()
            if r.network.train_text_encoder:
                for te in self.text_encoders:
                    te.gradient_checkpointing_enable()

    def _build_optimizer(self) -> None:
        r = self.recipe
        groups = param_groups(self.adapters, r.optimizer)  # per block (lr weights) and LoRA+ groups
        self.optimizer = build_optimizer(groups, r.optimizer)
        # None unless [ema] enabled (params are on their device now); export_adapters writes its average
        self.ema = self.adapters.ema = build_ema(self._trained_params(), r.ema)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, r.scheduler, self.state.total_steps, self.accelerator.num_processes)

    def _register_checkpoint_hooks(self) -> None:
        # A callable, not the modules: acc.prepare wraps the U-Net (and a trained text encoder) after this.
        register_adapter_hooks(self.accelerator, lambda: (self.unet, self.text_encoders),
                               self.recipe.network.train_text_encoder, self.ema)

    def _step_context(self) -> StepContext:
        r, b, acc = self.recipe, self.bundle, self.accelerator
        plain = (acc.unwrap_model(self.unet), [acc.unwrap_model(te) for te in self.text_encoders])
        return StepContext(
            unet=self.unet, vae=b.vae, text_encoders=self.text_encoders, tokenizers=b.tokenizers,
            alphas_cumprod=b.noise_scheduler.alphas_cumprod.to(acc.device),
            prediction_type=b.prediction_type, sdxl=b.is_sdxl, clip_skip=r.model.clip_skip,
            weight_dtype=self.weight_dtype, device=acc.device, seed=r.seed,
            loss=r.loss, plain=plain,
            plain_layers=tuner_layers([plain[0], *plain[1]]) if r.loss.prior_target == "base" else None,
        )

    def _maybe_resume(self) -> None:
        self.run.check_data(self.data.data, self.accelerator.print)  # dataset manifest hash vs the checkpoint's
        path = self.run.resume_path  # chosen and verified by run.open (stale partials already removed)
        if path is None:
            return
        state = ckpt.load_checkpoint(self.accelerator, path)
        self.state.restore(state)
        self.accelerator.print(f"resumed from {path.name}: step {self.state.global_step}, epoch {self.state.epoch}, batch {self.state.batch_in_epoch}")

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        acc, r = self.accelerator, self.recipe
        if acc.is_main_process:
            print_summary(r, self.bundle, self.data, acc, self.out, self.state, self.setup_facts())
        bar = progress_bar(self.state.total_steps, self.state.global_step, acc.is_main_process)
        meter = StepMeter()
        governor = ThreadGovernor()
        steps_this_run = 0
        self.unet.train()
        for te in self.text_encoders if r.network.train_text_encoder else []:
            te.train()  # transformers loads in eval mode; LoRA dropout must be live while training
        while not self.state.done:
            for batch in self.data.batches(self.state.epoch, self.state.batch_in_epoch):
                self.state.batch_in_epoch += 1
                loss, batch_size, grad_norm = self.step(batch)
                # Summed on the device; read (and averaged over processes) only at the log interval, so the
                # host never waits for the device inside the loop.
                meter.add(loss, batch_size * acc.num_processes)
                self.seen_indices.extend(batch["index"].tolist())
                if not acc.sync_gradients:
                    continue
                self.state.global_step += 1
                steps_this_run += 1
                self._after_step(meter, grad_norm, bar)
                governor.tick()  # follow the machine's load: threads = cores other processes leave free
                if self.state.done or (self.stop_after and steps_this_run >= self.stop_after):
                    break
            else:  # epoch finished
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            if self.stop_after and steps_this_run >= self.stop_after and not self.state.done:
                self.save_checkpoint()
                bar.close()
                return
            if self.state.done:
                break
        bar.close()

    def step(self, batch: dict, mark=None) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """One micro-batch: forward, backward and, at an accumulation boundary, clipping and the optimizer
        step. Returns (loss, batch size, grad norm or None) as device tensors: nothing here waits for the
        device (tests/test_step_trace.py), the loop reads values at its log interval. `mark(phase)`, if
        given, is called as each phase ends (scripts/profile_train.py times them)."""
        acc, r = self.accelerator, self.recipe
        with acc.accumulate(self.unet):
            loss, info = forward_loss(self.ctx, batch, self.state.global_step)
            mark and mark("forward")
            acc.backward(loss)
            mark and mark("backward")
            grad_norm = None
            if acc.sync_gradients and r.train.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(self._trained_params(), r.train.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None and acc.sync_gradients and self.ema.due(self.state.global_step + 1):
                self.ema.update()  # after the optimizer step; foreach ops, no host read on "same"
            mark and mark("optimizer")
        return loss, info["batch_size"], grad_norm

    def setup_facts(self):
        return SetupFacts(self.threads, self.checkpointing, self.compiled, len(self.offloaded),
                          sum(p.numel() for p in self._trained_params()))

    def _trained_params(self) -> list:
        return self.adapters.unet_params + self.adapters.text_encoder_params

    def _after_step(self, meter, grad_norm, bar) -> None:
        r, s = self.recipe, self.state.global_step
        bar.update(1)
        last = s == self.state.total_steps
        if s % r.log.every_n_steps == 0 or last:
            self.state.last_loss = log_step(self.accelerator, s, meter, grad_norm, self.optimizer, self.lr_scheduler, bar)
        if r.validation.every_n_steps and s % r.validation.every_n_steps == 0:
            self.validate()
        if (r.save.every_n_steps and s % r.save.every_n_steps == 0 and not last) or (last and r.save.state_at_end):
            self.save_checkpoint()
        if r.save.export_every_n_steps and s % r.save.export_every_n_steps == 0 and not last:
            self.export(suffix=f"-step{s:06d}")
        if r.sample.every_n_steps and r.sample.prompts and s % r.sample.every_n_steps == 0:
            self.sample()

    def save_checkpoint(self) -> Path:
        state = {**self.state.checkpoint_dict(), "fingerprint": self.run.fingerprint}
        return ckpt.save_checkpoint(self.accelerator, self.out / "checkpoints", self.state.global_step, state,
                                    self.recipe.save.keep_last, self.run.run_id, lambda: self.run.first_output(self.recipe))

    def validate(self) -> float | None:
        """Held-out loss of the unwrapped modules (no DDP collectives), logged and kept as last_val_loss."""
        acc, r = self.accelerator, self.recipe
        ctx = dataclasses.replace(self.ctx, unet=acc.unwrap_model(self.unet),
                                  text_encoders=[acc.unwrap_model(te) for te in self.text_encoders])
        batches = self.data.validation_batches(r.train.batch_size)
        self.state.last_val_loss = validation_loss(ctx, batches, r.validation, acc.log, self.state.global_step)
        return self.state.last_val_loss

    def sample(self) -> Path | None:
        b = self.bundle
        components = {"unet": self.unet, "vae": b.vae, "scheduler": b.noise_scheduler,
                      "text_encoders": self.text_encoders, "tokenizers": b.tokenizers}
        return render_samples(self.accelerator, components, self.offloaded, self.recipe, self.state.global_step,
                              self.out / "samples", b.family)

    # ------------------------------------------------------------------ save
    def export(self, suffix: str = "") -> dict:
        """The adapter files of the current weights (main process; the others return {})."""
        acc, r = self.accelerator, self.recipe
        if not acc.is_main_process:
            return {}
        unet = acc.unwrap_model(self.unet)
        tes = [acc.unwrap_model(te) for te in self.text_encoders]
        unet_sd, te_sds = adapter_state_dicts(unet, tes, r.network.train_text_encoder)
        summary = run_summary(r, self.bundle, self.data.data.stats, self.state, self.optimizer, acc.num_processes)
        return export_adapters(self.out, r, summary, unet_sd, te_sds, self.adapters, dict(unet.config), self.run, suffix=suffix)

    def save(self) -> dict:
        """Final adapter files (main process), a final sample grid if prompts are set."""
        self.accelerator.wait_for_everyone()
        files = self.export()
        sample = self.recipe.sample
        already = sample.every_n_steps and self.state.global_step % sample.every_n_steps == 0  # rendered by _after_step
        if sample.prompts and not already:
            self.sample()
        return files

    def cleanup(self) -> None:
        # Debug aid (and the multi-process test): which samples each rank trained on.
        dump = os.environ.get("LORA_KIT_DUMP_INDICES")
        if dump:
            Path(dump).mkdir(parents=True, exist_ok=True)
            (Path(dump) / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(self.seen_indices))
        self.accelerator.end_training()
        self.run.close()  # the run lock
