"""Cross-field checks: each message says which key to change and to what."""

from __future__ import annotations

from pathlib import Path

from lora_kit.adapters.blocks import PRESETS, is_preset
from lora_kit.config.bucket_rules import bucket_problems
from lora_kit.config.schema import MAX_REPEATS, Recipe
from lora_kit.errors import UserError
from lora_kit.paths import DIFFUSERS_WEIGHT_NAME, is_builtin, resolve_dataset_path


def _fail(recipe: Recipe, key: str, msg: str) -> None:
    raise UserError(f"{recipe.source or '<recipe>'}: {key}: {msg}")


def _unit_interval(recipe: Recipe, key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        _fail(recipe, key, f"expected a number between 0 and 1, got {value}")


def check_recipe(r: Recipe) -> None:
    if not r.dataset.path:
        _fail(r, "[dataset] path", "missing: set it to a folder of images (or builtin:NAME)")
    if r.network.rank < 1:
        _fail(r, "[network] rank", f"expected an integer >= 1, got {r.network.rank}")
    if r.network.alpha <= 0:
        _fail(r, "[network] alpha", f"expected a number > 0, got {r.network.alpha}")
    if r.network.conv_rank < 0 or r.network.conv_alpha < 0:
        _fail(r, "[network] conv_rank", f"expected conv_rank >= 0 and conv_alpha >= 0 (0 = off / = conv_rank), got {r.network.conv_rank} and {r.network.conv_alpha}")
    if r.network.conv_rank and r.network.use_dora:
        _fail(r, "[network] conv_rank", "conv_rank with use_dora = true: DoRA files have no kohya layout for convolutions; set conv_rank = 0 or use_dora = false")
    check_name(r)
    check_lycoris(r)
    check_block_weights(r)
    check_ema(r)
    if r.network.target == "custom" and not r.network.target_modules:
        _fail(r, "[network] target_modules", "target = \"custom\" needs a list of module names")
    if r.network.target not in ("attn", "attn-ff", "custom"):
        _fail(r, "[network] target", f"expected \"attn\", \"attn-ff\" or \"custom\", got {r.network.target!r}")
    for key, val in (("tag_dropout", r.dataset.tag_dropout), ("caption_dropout", r.dataset.caption_dropout), ("validation_split", r.dataset.validation_split)):
        _unit_interval(r, f"[dataset] {key}", val)
    if r.dataset.keep_tokens < 0:
        _fail(r, "[dataset] keep_tokens", "expected an integer >= 0")
    for key in ("repeats", "reg_repeats"):
        if not 1 <= getattr(r.dataset, key) <= MAX_REPEATS:
            _fail(r, f"[dataset] {key}", f"expected an integer from 1 to {MAX_REPEATS}, got {getattr(r.dataset, key)}")
    for key, msg in bucket_problems(r.buckets):  # shared with `lora-kit buckets`
        _fail(r, f"[buckets] {key}", msg)
    if not 0 <= r.loss.min_timestep < r.loss.max_timestep <= 1000:
        _fail(r, "[loss] min_timestep/max_timestep", "expected 0 <= min_timestep < max_timestep <= 1000")
    if r.cache.vae_batch_size < 0:
        _fail(r, "[cache] vae_batch_size", "expected 0 (auto: 2 megapixels per encode) or an integer >= 1")
    if r.loss.min_snr_gamma < 0:
        _fail(r, "[loss] min_snr_gamma", "expected 0 (off) or a positive number such as 5")
    if r.train.batch_size < 1 or r.train.gradient_accumulation_steps < 1:
        _fail(r, "[train] batch_size", "batch_size and gradient_accumulation_steps must be >= 1")
    if r.train.max_steps <= 0 and r.train.epochs <= 0:
        _fail(r, "[train] max_steps", "set max_steps > 0 or epochs > 0")
    if r.dataset.reg_path and r.loss.prior_loss_weight <= 0:
        _fail(r, "[loss] prior_loss_weight", "must be > 0 when [dataset] reg_path is set (or remove reg_path)")
    check_class_images(r)
    if r.optimizer.name == "prodigy" and r.optimizer.lr < 0.1:
        _fail(r, "[optimizer] lr", "Prodigy adapts the step size itself: set lr = 1.0")
    if r.sample.control_image and not r.sample.controlnet:
        _fail(r, "[sample] controlnet", "control_image needs a controlnet (folder or hub id)")
    if r.sample.steps < 0 or r.sample.cfg < 0:
        _fail(r, "[sample] steps/cfg", f"expected 0 (the model's default) or a positive number, got steps {r.sample.steps} and cfg {r.sample.cfg}")
    if len(r.optimizer.betas) != 2:
        _fail(r, "[optimizer] betas", "expected two numbers, e.g. [0.9, 0.999]")
    check_validation(r)
    check_ranges(r)


def check_name(r: Recipe) -> None:
    """`name` is the kohya file's name in output_dir: a folder in it would write outside the run folder
    (`../x` next to it, unchecked for an earlier file), and the diffusers file's own name would overwrite it."""
    name = r.name
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        _fail(r, "name", f"expected a plain file name such as \"my-style\" (folders go in output_dir), got {name!r}")
    if name == Path(DIFFUSERS_WEIGHT_NAME).stem:
        _fail(r, "name", f"{name!r} is the diffusers file's name ({DIFFUSERS_WEIGHT_NAME}, written next to <name>.safetensors); choose another")


def check_lycoris(r: Recipe) -> None:
    n = r.network
    if n.algo == "lora":
        if n.factor != -1:
            _fail(r, "[network] factor", f"only used by algo = \"lokr\"; remove it or set algo = \"lokr\" (got {n.factor})")
        return
    if n.use_dora:
        _fail(r, "[network] use_dora", f"DoRA is a LoRA variant; set use_dora = false with algo = \"{n.algo}\"")
    if n.dropout:
        _fail(r, "[network] dropout", f"peft's LoHa/LoKr have no neuron dropout; set dropout = 0 with algo = \"{n.algo}\"")
    if n.init not in ("gaussian", "default", "zeros"):
        _fail(r, "[network] init", f"{n.init!r} initialises LoRA only; remove it with algo = \"{n.algo}\" (LyCORIS's own init is used)")
    if n.factor == 0 or n.factor < -1:
        _fail(r, "[network] factor", f"expected -1 (automatic) or an integer >= 1, got {n.factor}")


def check_block_weights(r: Recipe) -> None:
    """kohya's block lists and LoRA+. Lengths depend on the U-Net (SD1 25, SDXL 23, tiny U-Nets fewer) and
    are checked against it when the adapters are injected (lora_kit.adapters.blocks); here the values."""
    n, o = r.network, r.optimizer
    for key in ("block_dims", "conv_block_dims"):
        if any(v < 0 for v in getattr(n, key)):
            _fail(r, f"[network] {key}", f"expected ranks >= 0 (0 = no LoRA in that block), got {getattr(n, key)}")
    for key in ("block_alphas", "conv_block_alphas"):
        if any(v <= 0 for v in getattr(n, key)):
            _fail(r, f"[network] {key}", f"expected alphas > 0, got {getattr(n, key)}")
    for dims, alphas in (("block_dims", "block_alphas"), ("conv_block_dims", "conv_block_alphas")):
        d, a = getattr(n, dims), getattr(n, alphas)
        if d and a and len(d) != len(a):
            _fail(r, f"[network] {alphas}", f"expected one alpha per block like {dims} ({len(d)} values), got {len(a)}")
    if n.conv_block_alphas and not (n.conv_block_dims or n.conv_rank):
        _fail(r, "[network] conv_block_alphas", "set conv_block_dims (or conv_rank) too: without them no convolution is trained")
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        v = getattr(o, key)
        if isinstance(v, str) and not is_preset(v):
            _fail(r, f"[optimizer] {key}", f"expected a list of numbers or one of {', '.join(PRESETS)} (optionally +BASE), got {v!r}")
        if not isinstance(v, str) and any(w < 0 for w in v):
            _fail(r, f"[optimizer] {key}", f"expected weights >= 0 (0 = no LoRA in that block), got {v}")
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(o, key) < 0:
            _fail(r, f"[optimizer] {key}", f"expected 0 (off) or a ratio > 0 such as 16, got {getattr(o, key)}")
    if n.algo != "lora" and (o.loraplus_lr_ratio or o.loraplus_unet_lr_ratio or o.loraplus_text_encoder_lr_ratio):
        _fail(r, "[optimizer] loraplus_lr_ratio", f"LoRA+ speeds up LoRA's lora_up matrices; set it to 0 with algo = \"{n.algo}\"")


def check_ema(r: Recipe) -> None:
    e = r.ema
    if not 0.0 < e.decay < 1.0:
        _fail(r, "[ema] decay", f"expected a number between 0 and 1 such as 0.999, got {e.decay}")
    if e.every_n_steps < 1:
        _fail(r, "[ema] every_n_steps", f"expected a number of steps >= 1, got {e.every_n_steps}")


def check_paths(r: Recipe) -> None:
    """Paths that must exist before a run starts (separate so shipped templates validate without data)."""
    for key, value in (("[dataset] path", r.dataset.path), ("[dataset] reg_path", r.dataset.reg_path)):
        if value and not resolve_dataset_path(value).exists():
            _fail(r, key, f"{value} does not exist (expected a folder of images, builtin:NAME or a dataset folder)")
    if r.sample.control_image and not Path(r.sample.control_image).exists():
        _fail(r, "[sample] control_image", f"{r.sample.control_image} does not exist")
    m = r.model.pretrained
    if not is_builtin(m) and (m.startswith((".", "/", "~")) or m.endswith(".safetensors")) and not Path(m).expanduser().exists():
        _fail(r, "[model] pretrained", f"{m} does not exist (a diffusers folder, a .safetensors file, a Hub id or builtin:NAME)")


def check_class_images(r: Recipe) -> None:
    d = r.dataset
    if d.reg_count < 0:
        _fail(r, "[dataset] reg_count", f"expected an integer >= 0, got {d.reg_count}")
    if bool(d.reg_prompt.strip()) != (d.reg_count > 0):
        _fail(r, "[dataset] reg_prompt/reg_count", "set both to render class images (e.g. reg_prompt = \"a photo of a dog\", reg_count = 100), or neither")
    if d.reg_prompt and d.reg_path:
        _fail(r, "[dataset] reg_prompt", "set reg_prompt (class images rendered by the base) or reg_path (your own), not both")
    if d.reg_prompt and r.loss.prior_loss_weight <= 0:
        _fail(r, "[loss] prior_loss_weight", "must be > 0 when [dataset] reg_prompt is set")
    check_caption_priors(r)
    if r.loss.prior_target == "base" and not (d.reg_path or d.reg_prompt or d.reg_from_captions):
        _fail(r, "[loss] prior_target", "\"base\" changes what prior (reg) pictures are trained towards: set [dataset] reg_path, reg_prompt or reg_from_captions, or prior_target = \"image\"")


def check_caption_priors(r: Recipe) -> None:
    d = r.dataset
    if d.reg_from_captions < 0:
        _fail(r, "[dataset] reg_from_captions", f"expected 0 (off) or a number of pictures per caption >= 1, got {d.reg_from_captions}")
    if d.reg_from_captions == 0:
        return
    if not d.trigger_word.strip():
        _fail(r, "[dataset] reg_from_captions", "needs [dataset] trigger_word: the word taken out of each caption")
    if d.reg_prompt.strip():
        _fail(r, "[dataset] reg_from_captions", "use one of reg_prompt / reg_from_captions, not both (reg_prompt renders one class prompt, reg_from_captions each caption without the trigger word)")
    if d.kind not in ("auto", "folder"):
        # the rendered pictures are a kohya folder, and [dataset] kind applies to reg_path too
        _fail(r, "[dataset] kind", f"reg_from_captions makes the reg set a kohya folder: set kind = \"auto\" (got {d.kind!r})")
    if r.loss.prior_loss_weight <= 0:
        _fail(r, "[loss] prior_loss_weight", "must be > 0 when [dataset] reg_from_captions is set")


def check_validation(r: Recipe) -> None:
    if r.validation.every_n_steps and r.dataset.validation_split <= 0:
        _fail(r, "[validation] every_n_steps", "needs held-out images: set [dataset] validation_split (e.g. 0.1)")
    if any(not 0 <= t < 1000 for t in r.validation.timesteps) or not r.validation.timesteps:
        _fail(r, "[validation] timesteps", "expected a non-empty list of integers in [0, 1000)")


def _at_least(r: Recipe, key: str, value, low, what: str = "") -> None:
    if value < low:
        _fail(r, key, f"expected {what or f'a value >= {low}'}, got {value}")


def check_ranges(r: Recipe) -> None:
    """Value ranges the sections above do not cover: each would otherwise surface mid-run as a traceback
    or, worse, be accepted silently (a negative keep_last deletes nothing, a negative lr ascends)."""
    o = r.optimizer
    if not o.lr > 0:
        _fail(r, "[optimizer] lr", f"expected a learning rate > 0, got {o.lr}")
    if r.network.train_trigger_embedding and not (r.network.train_text_encoder and r.dataset.trigger_word):
        _fail(r, "[network] train_trigger_embedding", "expected [network] train_text_encoder = true and a "
              "[dataset] trigger_word: the trigger's embedding is trained with the text encoder's LoRA")
    if r.network.train_trigger_embedding and r.network.algo != "lora":
        _fail(r, "[network] train_trigger_embedding", f"expected algo = \"lora\" (peft trains the token rows "
              f"beside a LoRA), got {r.network.algo!r}")
    if r.network.train_text_encoder and not o.text_encoder_lr > 0:
        _fail(r, "[optimizer] text_encoder_lr", f"expected a learning rate > 0 (train_text_encoder = true), got {o.text_encoder_lr}")
    _at_least(r, "[optimizer] weight_decay", o.weight_decay, 0)
    if not o.eps > 0 or any(not 0 <= b < 1 for b in o.betas):
        _fail(r, "[optimizer] betas/eps", f"expected betas in [0, 1) and eps > 0, got {list(o.betas)} and {o.eps}")
    if not 0 <= r.network.dropout < 1:
        _fail(r, "[network] dropout", f"expected a number in [0, 1) (0 = off), got {r.network.dropout}")
    for key, val in (("text_encoder_rank", r.network.text_encoder_rank), ("text_encoder_alpha", r.network.text_encoder_alpha)):
        _at_least(r, f"[network] {key}", val, 0, "0 (same as rank/alpha) or a positive number")
    s = r.save
    _at_least(r, "[save] every_n_steps", s.every_n_steps, 0, "0 (only at the end) or a number of steps >= 1")
    _at_least(r, "[save] keep_last", s.keep_last, 0, "0 (keep every checkpoint) or a count >= 1")
    _at_least(r, "[save] export_every_n_steps", s.export_every_n_steps, 0, "0 (off) or a number of steps >= 1")
    t = r.train
    _at_least(r, "[train] max_steps", t.max_steps, 0, "0 (derived from epochs) or a number of steps >= 1")
    _at_least(r, "[train] epochs", t.epochs, 0)
    _at_least(r, "[train] max_grad_norm", t.max_grad_norm, 0, "0 (no clipping) or a positive number")
    _at_least(r, "[train] num_workers", t.num_workers, 0)
    _at_least(r, "[scheduler] warmup_steps", r.scheduler.warmup_steps, 0)
    _at_least(r, "[scheduler] num_cycles", r.scheduler.num_cycles, 1)
    _at_least(r, "[dataset] max_images", r.dataset.max_images, 0, "0 (all) or a count >= 1")
    _at_least(r, "[loss] noise_offset", r.loss.noise_offset, 0)
    if not 0 < r.loss.huber_c <= 1:  # exponential takes log(c); snr blends 1 and c
        _fail(r, "[loss] huber_c", f"expected a number in (0, 1] such as 0.1, got {r.loss.huber_c}")
    if r.loss.huber_scale <= 0:
        _fail(r, "[loss] huber_scale", f"expected a number > 0 such as 1, got {r.loss.huber_scale}")
    _at_least(r, "[validation] every_n_steps", r.validation.every_n_steps, 0, "0 (off) or a number of steps >= 1")
    _at_least(r, "[log] every_n_steps", r.log.every_n_steps, 1, "a number of steps >= 1")
    sm = r.sample
    _at_least(r, "[sample] every_n_steps", sm.every_n_steps, 0, "0 (off) or a number of steps >= 1")
    _at_least(r, "[sample] steps", sm.steps, 0, "0 (the model's default) or a number of steps >= 1")
    _at_least(r, "[sample] cfg", sm.cfg, 0, "0 (the model's default) or a guidance scale > 0")
    for key, val in (("width", sm.width), ("height", sm.height)):
        if val < 0 or val % 8:
            _fail(r, f"[sample] {key}", f"expected 0 (bucket resolution) or a multiple of 8 (the latent stride), got {val}")
    if sm.prompts and not sm.width and r.buckets.resolution % 8:
        _fail(r, "[buckets] resolution", f"samples render at the bucket resolution, which must be a multiple of 8 (or set [sample] width/height), got {r.buckets.resolution}")
