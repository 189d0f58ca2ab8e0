"""Putting LoRA (or LoHa/LoKr) adapters into the U-Net (and optionally the text encoders) with peft.

The adapters are peft `LoraConfig`s added through diffusers' `add_adapter` (U-Net) and transformers'
`add_adapter` (CLIP), so diffusers' `save_lora_weights`/`load_lora_weights` and peft's state-dict helpers
work on them unchanged. Target presets use kohya users' vocabulary:
- "attn":    to_q, to_k, to_v, to_out.0 of every self- and cross-attention (the diffusers-script default);
- "attn-ff": adds proj_in, proj_out and the feed-forward (ff.net.0.proj, ff.net.2) of each transformer
             block: kohya's default set for the U-Net;
- "custom":  `target_modules` as given (peft suffix matching).
`conv_rank` > 0 (kohya's conv_dim, "LoCon") adds the two 3x3 convolutions of every ResNet block, with their
own rank and alpha (peft rank_pattern/alpha_pattern, written per module to both file formats). Attention
layers never see the finest resolution in small U-Nets (and only see it through 1x1 projections in big
ones), so a shape or texture the base never drew needs the convolutions to be drawn at all.
kohya's block lists (`block_dims`, `block_alphas`, `conv_block_*`, and lr weights of 0) become the same
peft patterns, one entry per module (its full path, escaped), and `exclude_modules` for modules of rank 0;
the block of each module comes from lora_kit.adapters.blocks.

`algo` = "loha" / "lokr" (LyCORIS) trains with peft's LoHaConfig / LoKrConfig instead of the
`lycoris-lora` package that kohya and SimpleTuner use. Why: peft's layers hold LyCORIS's own tensors
(same names, shapes, LoKr factorisation and update formulas: tests/test_lycoris.py shows the update of
every trained module equals A1111's and ComfyUI's formulas applied to the exported file, to fp32
rounding), and they are peft tuner layers, so diffusers' add_adapter, peft's state-dict helpers
(checkpoints, exact resume), cast_training_params and the in-process sample grids work unchanged;
lycoris-lora wraps the model in its own network object with its own state dict and save path.
Measured (scripts/bench_lycoris.py, lycoris-lora 4.1.3 installed beside, SD1.5-sized layers, rank 8,
2-core CPU, 1 thread, shared box so +-15 %): the same tensors give the same outputs in both (<= 1e-7
relative) and peft's delta-W equals the A1111 formula exactly; a training step (forward + backward)
took peft 118-288 ms and lycoris-lora 0.96-1.70x that (LoHa linears on par, LoHa 3x3 conv and every
LoKr case 1.45-1.70x slower), so peft is not the slower choice.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch
from diffusers.training_utils import cast_training_params
from peft import (
    LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer

from lora_kit.adapters.blocks import BlockLayout, block_index, block_layout, block_lr_weights, per_block
from lora_kit.adapters.names import layout_from_config
from lora_kit.config.schema import NetworkConfig, OptimizerConfig

ADAPTER_NAME = "default"
UNET_TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn-ff": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
}
CONV_TARGETS = ["conv1", "conv2"]  # ResnetBlock2D's 3x3 convolutions (not conv_shortcut, a 1x1 skip)
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODER_MLP = ["fc1", "fc2"]  # network.text_encoder_target = "attn-mlp"
# network.text_encoder_target = "values": q/k keep the base's attention pattern (which words each word reads) and
# the trigger's meaning travels in what is read. out_proj stays in: diffusers (0.42.1) infers a kohya file's
# text-encoder format from its `to_out_lora` keys and cannot load one without them.
TEXT_ENCODER_VALUES = ["v_proj", "out_proj"]


def text_encoder_targets(net: NetworkConfig) -> list[str]:
    if net.text_encoder_target == "values":
        return list(TEXT_ENCODER_VALUES)
    return TEXT_ENCODER_TARGETS + (TEXT_ENCODER_MLP if net.text_encoder_target == "attn-mlp" else [])


def unet_target_modules(net: NetworkConfig) -> list[str]:
    targets = list(net.target_modules) if net.target == "custom" else list(UNET_TARGETS[net.target])
    convs = net.conv_rank or getattr(net, "conv_block_dims", None)
    return targets + [c for c in CONV_TARGETS if convs and c not in targets]


def conv_alpha(net: NetworkConfig) -> float:
    """The ResNet convolutions' alpha: `conv_alpha`, or `conv_rank` when it is 0 (kohya's default, scale 1)."""
    return net.conv_alpha or float(net.conv_rank)


def text_encoder_dims(net: NetworkConfig) -> tuple[int, float]:
    """The text-encoder LoRA's rank and alpha: its own, or the U-Net's where they are 0."""
    return net.text_encoder_rank or net.rank, net.text_encoder_alpha or net.alpha


def _conv_patterns(net: NetworkConfig) -> tuple[dict, dict]:
    """peft rank_pattern / alpha_pattern giving the ResNet convolutions their own rank and alpha."""
    if not net.conv_rank:
        return {}, {}
    return {c: net.conv_rank for c in CONV_TARGETS}, {c: conv_alpha(net) for c in CONV_TARGETS}


def _init(net: NetworkConfig):
    # peft: True = kaiming A / zero B ("default"); "gaussian" = normal A / zero B (diffusers scripts).
    return {"default": True, "zeros": True}.get(net.init, net.init)


def _lycoris_config(net: NetworkConfig, r: int, alpha: float, targets: list, ranks: dict, alphas: dict, **extra):
    common = dict(r=r, alpha=alpha, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas, **extra)
    if net.algo == "loha":
        return LoHaConfig(**common, init_weights=True)  # hada_w2_b = 0: zero update at step 0
    # LyCORIS's own init (w1 and w2_a random, w2_b or full w2 zero), as kohya users get it.
    return LoKrConfig(**common, decompose_factor=net.factor, init_weights="lycoris")


@dataclass
class BlockPlan:
    """Per-module ranks/alphas from kohya's block lists, as peft patterns; modules of rank 0 left out."""
    blocks: BlockLayout
    layout: dict
    lr_weights: list[float] | None
    ranks: dict = field(default_factory=dict)  # escaped full module path -> rank (where not net.rank)
    alphas: dict = field(default_factory=dict)
    excluded: list = field(default_factory=list)  # full paths of modules with rank 0 (kohya: not created)


def uses_blocks(net: NetworkConfig, opt: OptimizerConfig | None) -> bool:
    lr = opt is not None and bool(opt.down_lr_weight or opt.mid_lr_weight or opt.up_lr_weight)
    return lr or bool(net.block_dims or net.block_alphas or net.conv_block_dims or net.conv_block_alphas)


def _targeted(unet, targets: list[str]) -> list[str]:
    # peft's own rule for a list of target_modules: the exact name or a dotted suffix
    return [n for n, _ in unet.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]


def block_plan(unet, net: NetworkConfig, opt: OptimizerConfig | None, sdxl: bool) -> BlockPlan:
    """kohya's create_network for block_dims/block_alphas/conv_block_*/down|mid|up_lr_weight: dims per
    block, alphas per block, and a block whose lr weight is 0 gets no modules at all."""
    layout = layout_from_config(dict(unet.config))
    blocks = block_layout(layout, sdxl)
    lr = block_lr_weights(opt.down_lr_weight, opt.mid_lr_weight, opt.up_lr_weight, blocks) if opt else None
    dims, alphas = per_block(net.block_dims, "block_dims", blocks), per_block(net.block_alphas, "block_alphas", blocks)
    cdims = per_block(net.conv_block_dims, "conv_block_dims", blocks)
    calphas = per_block(net.conv_block_alphas, "conv_block_alphas", blocks)
    plan = BlockPlan(blocks, layout, lr)
    for path in _targeted(unet, unet_target_modules(net)):
        idx = block_index(path, layout, blocks)
        conv = path.rsplit(".", 1)[-1] in CONV_TARGETS and ".resnets." in path
        if conv:
            r = cdims[idx] if cdims and idx is not None else net.conv_rank
            a = calphas[idx] if calphas and idx is not None else (net.conv_alpha or float(r))
        else:
            r = dims[idx] if dims and idx is not None else net.rank
            a = alphas[idx] if alphas and idx is not None else net.alpha
        if r == 0 or (lr is not None and idx is not None and lr[idx] == 0):
            plan.excluded.append(path)
        elif (r, float(a)) != (net.rank, float(net.alpha)):
            plan.ranks[re.escape(path)], plan.alphas[re.escape(path)] = r, float(a)
    return plan


def unet_lora_config(net: NetworkConfig, plan: BlockPlan | None = None):
    ranks, alphas = _conv_patterns(net) if plan is None else (plan.ranks, plan.alphas)
    extra = {"exclude_modules": plan.excluded} if plan is not None and plan.excluded else {}
    if getattr(net, "algo", "lora") != "lora":
        return _lycoris_config(net, net.rank, net.alpha, unet_target_modules(net), ranks, alphas, **extra)
    return LoraConfig(
        r=net.rank,
        lora_alpha=net.alpha,
        lora_dropout=net.dropout,
        init_lora_weights=_init(net),
        target_modules=unet_target_modules(net),
        rank_pattern=ranks,
        alpha_pattern=alphas,
        use_dora=net.use_dora,
        **extra,
    )


def text_encoder_lora_config(net: NetworkConfig, trigger_ids: tuple[int, ...] = ()):
    """`trigger_ids`: token ids whose input embeddings train too (peft's trainable tokens: pivotal tuning)."""
    r, alpha = text_encoder_dims(net)
    if getattr(net, "algo", "lora") != "lora":
        return _lycoris_config(net, r, alpha, text_encoder_targets(net), {}, {})
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=net.dropout,
        init_lora_weights=_init(net),
        target_modules=text_encoder_targets(net),
        use_dora=net.use_dora,
        **({"trainable_token_indices": {"token_embedding": list(trigger_ids)}} if trigger_ids else {}),
    )


@dataclass
class InjectedAdapters:
    unet_params: list
    text_encoder_params: list
    unet_config: object
    text_encoder_config: object | None
    unet_names: list = field(default_factory=list)  # parameter names, aligned with unet_params
    text_encoder_names: list = field(default_factory=list)
    plan: BlockPlan | None = None  # kohya block lists, when the recipe sets any
    ema: object = None  # lora_kit.train.ema.AdapterEMA when [ema] is on: the exported files hold its average

    def unet_param_blocks(self) -> list[int | None]:
        """kohya block index of each U-Net parameter (None without block lists or outside the blocks)."""
        if self.plan is None:
            return [None] * len(self.unet_params)
        return [block_index(n, self.plan.layout, self.plan.blocks) for n in self.unet_names]


def inject_lora(unet, text_encoders: list, net: NetworkConfig, train_dtype, sdxl: bool = False,
                opt: OptimizerConfig | None = None, trigger_ids: tuple[int, ...] = ()) -> InjectedAdapters:
    """Freeze the base (in the training dtype), add adapters, keep adapter parameters in fp32.
    `opt` brings the block lr weights (a block of weight 0 gets no adapters, as in kohya)."""
    modules = [unet] + list(text_encoders)
    for m in modules:
        m.requires_grad_(False)
        if m.dtype != train_dtype:
            m.to(dtype=train_dtype)
    plan = block_plan(unet, net, opt, sdxl) if uses_blocks(net, opt) else None
    ucfg = unet_lora_config(net, plan)
    unet.add_adapter(ucfg, adapter_name=ADAPTER_NAME)
    tcfg = None
    if net.train_text_encoder:
        tcfg = text_encoder_lora_config(net, trigger_ids)
        for te in text_encoders:
            # transformers 5.24's `add_adapter` demands peft >= 0.22 (unreleased); peft's own injection
            # creates the same layers and state-dict keys.
            inject_adapter_in_model(tcfg, te, adapter_name=ADAPTER_NAME)
    trained = [unet] + (list(text_encoders) if net.train_text_encoder else [])
    # fp16/bf16 adapter weights lose small updates; the diffusers scripts upcast them the same way.
    cast_training_params(trained, dtype=torch.float32)
    unet_named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    te_named = [(n, p) for te in text_encoders for n, p in te.named_parameters() if p.requires_grad]
    return InjectedAdapters([p for _, p in unet_named], [p for _, p in te_named], ucfg, tcfg,
                            [n for n, _ in unet_named], [n for n, _ in te_named], plan)


def adapter_state_dicts(unet, text_encoders: list, train_text_encoder: bool) -> tuple[dict, list[dict]]:
    """peft state dicts (keys without adapter name): U-Net, and each text encoder if trained."""
    unet_sd = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    te_sds = [get_peft_model_state_dict(te, adapter_name=ADAPTER_NAME) for te in text_encoders] if train_text_encoder else []
    return unet_sd, te_sds


def load_adapter_state_dicts(unet, text_encoders: list, unet_sd: dict, te_sds: list[dict]) -> None:
    res = set_peft_model_state_dict(unet, unet_sd, adapter_name=ADAPTER_NAME)
    if getattr(res, "unexpected_keys", None):
        raise RuntimeError(f"unexpected adapter keys: {res.unexpected_keys[:5]}")
    for te, sd in zip(text_encoders, te_sds):
        set_peft_model_state_dict(te, sd, adapter_name=ADAPTER_NAME)


def tuner_layers(modules) -> list:
    """Every peft adapter layer (LoRA, LoHa, LoKr) in `modules`: found once, switched by adapters_disabled."""
    return [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(layers):
    """The base model inside the block: the peft adapter layers `layers` (tuner_layers) switched off, then back
    on. peft's `enable_adapters(True)` makes every adapter parameter trainable; the flags each had are put back.
    Takes the layers, not the modules: walking a U-Net's modules costs more than the switch (SD1.5: 2.3 ms)."""
    flags = [(p, p.requires_grad) for layer in layers for name in layer.adapter_layer_names for p in getattr(layer, name).parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)
