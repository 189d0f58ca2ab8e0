"""Optimizers by name (bitsandbytes 8-bit by default) and LR schedules from diffusers.optimization."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from lora_kit.config.schema import OptimizerConfig, SchedulerConfig
from lora_kit.errors import missing_extra


def loraplus_ratios(cfg: OptimizerConfig) -> tuple[float, float]:
    """LoRA+ lr ratios (U-Net, text encoders) of lora_up / lora_B; 1 = off (kohya's per-component overrides)."""
    return (cfg.loraplus_unet_lr_ratio or cfg.loraplus_lr_ratio or 1.0,
            cfg.loraplus_text_encoder_lr_ratio or cfg.loraplus_lr_ratio or 1.0)


def _is_up(name: str) -> bool:
    # peft's LoRA "B" matrix is kohya's lora_up (and DoRA/LoHa/LoKr tensors stay in the base group, as in
    # peft's create_loraplus_optimizer, which only moves lora_B)
    return ".lora_B." in name or ".lora_embedding_B." in name


def _split(params: list, names: list, lr: float, name: str, ratio: float) -> list[dict]:
    """One group, or with LoRA+ two: lora_B at lr x ratio (peft.optimizers.create_loraplus_optimizer's
    split, done here per component because that helper builds one optimizer for a whole model)."""
    if ratio == 1.0:
        return [{"params": params, "lr": lr, "name": name}]
    down = [p for p, n in zip(params, names) if not _is_up(n)]
    up = [p for p, n in zip(params, names) if _is_up(n)]
    return [g for g in ({"params": down, "lr": lr, "name": name},
                        {"params": up, "lr": lr * ratio, "name": f"{name}.lora_up"}) if g["params"]]


def param_groups(adapters, cfg: OptimizerConfig) -> list[dict]:
    """Optimizer groups: the U-Net (one per kohya block when block lr weights are set: lr x weight, as
    kohya's prepare_optimizer_params), the text encoders, each split for LoRA+."""
    unet_ratio, te_ratio = loraplus_ratios(cfg)
    names = adapters.unet_names or [""] * len(adapters.unet_params)
    plan = getattr(adapters, "plan", None)
    weights = plan.lr_weights if plan is not None else None
    groups: list[dict] = []
    if weights is None:
        groups += _split(adapters.unet_params, names, cfg.lr, "unet", unet_ratio)
    else:
        by_block: dict = {}
        for p, n, b in zip(adapters.unet_params, names, adapters.unet_param_blocks()):
            by_block.setdefault(b, ([], []))
            by_block[b][0].append(p)
            by_block[b][1].append(n)
        labels = plan.blocks.labels()
        for b, (ps, ns) in sorted(by_block.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            w = 1.0 if b is None else weights[b]  # modules outside the blocks: kohya's weight 1
            groups += _split(ps, ns, cfg.lr * w, "unet" if b is None else f"unet.{labels[b]}", unet_ratio)
    if adapters.text_encoder_params:
        te_names = adapters.text_encoder_names or [""] * len(adapters.text_encoder_params)
        groups += _split(adapters.text_encoder_params, te_names, cfg.text_encoder_lr, "text_encoder", te_ratio)
    return groups


def optimizer_class(name: str):
    if name in ("adamw8bit", "lion8bit"):
        try:
            import bitsandbytes as bnb  # lazy: optional backend (CUDA 8-bit optimizers; slow to import)
        except ImportError as exc:
            raise missing_extra("bitsandbytes", None, f"optimizer {name!r} (or set [optimizer] name = \"adamw\")") from exc
        return bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
    if name == "adamw":
        return torch.optim.AdamW
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy  # lazy: optional backend (the [prodigy] extra)
        except ImportError as exc:
            raise missing_extra("prodigyopt", "prodigy", "the prodigy optimizer") from exc
        return Prodigy
    raise ValueError(f"unknown optimizer {name!r}")


def build_optimizer(groups: list[dict], cfg: OptimizerConfig):
    cls = optimizer_class(cfg.name)
    kwargs = {"weight_decay": cfg.weight_decay, "betas": tuple(cfg.betas)}
    if cfg.name != "lion8bit":
        kwargs["eps"] = cfg.eps  # Lion has no epsilon
    if cfg.name == "adamw" and all(p.is_cuda for g in groups for p in g["params"]):
        # torch's fused CUDA AdamW: one kernel launch for all tensors instead of several per tensor.
        kwargs["fused"] = True
    kwargs.update(cfg.args)
    return cls(groups, lr=cfg.lr, **kwargs)


def describe_optimizer(opt) -> str:
    """kohya-style `module.Class(k=v)` string for ss_optimizer."""
    cls = type(opt)
    d = opt.defaults
    args = ", ".join(f"{k}={d[k]}" for k in ("weight_decay", "betas") if k in d)
    return f"{cls.__module__}.{cls.__name__}({args})"


def build_lr_scheduler(optimizer, cfg: SchedulerConfig, total_steps: int, num_processes: int = 1):
    # Accelerate steps a prepared scheduler once per process per optimizer step, so the schedule is
    # stretched by num_processes (the diffusers example scripts do the same).
    return get_scheduler(
        cfg.name,
        optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps * num_processes,
        num_training_steps=total_steps * num_processes,
        num_cycles=cfg.num_cycles,
        power=cfg.power,
    )


def optimizer_extras(recipe) -> str:
    """The summary screen's additions to the optimizer line: block lr weights, LoRA+, EMA (or "")."""
    o, e = recipe.optimizer, recipe.ema
    parts = []
    if o.down_lr_weight or o.mid_lr_weight or o.up_lr_weight:
        parts.append("block lr weights (a group per block)")
    unet_ratio, te_ratio = loraplus_ratios(o)
    if unet_ratio != 1.0 or (recipe.network.train_text_encoder and te_ratio != 1.0):
        parts.append(f"LoRA+ lora_up lr x{unet_ratio:g}" + (f" (text encoder x{te_ratio:g})" if recipe.network.train_text_encoder else ""))
    if e.enabled:
        parts.append(f"EMA decay {e.decay:g} every {e.every_n_steps} step(s) on {'the CPU' if e.device == 'cpu' else 'the device'} (exported)")
    return "".join(f"; {p}" for p in parts)
