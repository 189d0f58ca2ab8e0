"""Optimizers by name (bitsandbytes 8-bit by default) and LR schedules from diffusers.optimization."""

from __future__ import annotations

from lora_kit.config.schema import OptimizerConfig, SchedulerConfig
from lora_kit.errors import missing_extra


def param_groups(unet_params: list, te_params: list, cfg: OptimizerConfig) -> list[dict]:
    groups = [{"params": unet_params, "lr": cfg.lr, "name": "unet"}]
    if te_params:
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr, "name": "text_encoder"})
    return groups


def optimizer_class(name: str):
    if name in ("adamw8bit", "lion8bit"):
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise missing_extra("bitsandbytes", None, f"optimizer {name!r} (or set [optimizer] name = \"adamw\")") from exc
        return bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
    if name == "adamw":
        import torch

        return torch.optim.AdamW
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
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
    from diffusers.optimization import get_scheduler

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
