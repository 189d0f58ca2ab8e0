"""LyCORIS LoHa and LoKr adapters: the kohya/LyCORIS file layout, and the weight update it stands for.

Training uses peft's LoHaConfig/LoKrConfig (inject.py says why), whose parameters carry LyCORIS's own names
and shapes (`hada_w1_a` ... `lokr_w2_b`, same factorisation of LoKr's dimensions), so a peft state dict
becomes a file by giving each module its kohya name (as for LoRA) and adding `.alpha`. One difference in
meaning is fixed on the way out: peft scales every LoKr module by alpha/r, while A1111 (network_lokr.py) and
ComfyUI (weight_adapter/lokr.py) take the rank from `lokr_w2_b` (or `lokr_w1_b`) and use scale 1 when both
Kronecker factors are full matrices; such modules get alpha/r baked into `lokr_w2`.

`delta_weight` is the update A1111 and ComfyUI compute from a file: LoHa (w1a @ w1b) * (w2a @ w2b) *
alpha/dim with dim = rows of `hada_w1_b`; LoKr kron(w1, w2) * alpha/dim (w1, w2 full or a @ b; dim = rows of
`lokr_w2_b`, else `lokr_w1_b`, scale 1 when neither exists or alpha is absent); Tucker cores (`hada_t1/t2`,
`lokr_t2`) as their `make_weight_cp`. lora-kit applies such files with it (grids, merge) because diffusers'
`load_lora_weights` rejects these keys (diffusers #3087, #11943). No diffusers layout exists for them, so
they are only ever written in the kohya/LyCORIS layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

from lora_kit.adapters import formats, names
from lora_kit.errors import UserError

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
KEYS = LOHA + LOKR
NETWORK_MODULE = "lycoris.kohya"  # what kohya's train_network.py records for LyCORIS networks
_ADAPTER_SUFFIX = re.compile(r"^(.+\.(?:%s))\.[\w-]+$" % "|".join(KEYS))


def _split(key: str) -> tuple[str, str] | None:
    mod, _, kind = key.rpartition(".")
    return (mod, kind) if mod and kind in KEYS else None


def is_lycoris_state_dict(sd: dict) -> bool:
    """True when any key is a LoHa/LoKr tensor (kohya `lora_unet_x.hada_w1_a` or peft `x.hada_w1_a`)."""
    return any(_split(_ADAPTER_SUFFIX.sub(r"\1", k)) for k in sd)


def algo_of(parts: dict) -> str:
    return "loha" if any(k.startswith("hada_") for k in parts) else "lokr"


def module_dim(parts: dict) -> int | None:
    """The rank A1111/ComfyUI divide alpha by; None = full LoKr factors (scale 1)."""
    if "hada_w1_b" in parts:
        return parts["hada_w1_b"].shape[0]
    for key in ("lokr_w2_b", "lokr_w1_b"):
        if key in parts:
            return parts[key].shape[0]
    return None


def _check_parts(mod: str, parts: dict) -> None:
    if algo_of(parts) == "loha":
        ok = all(k in parts for k in LOHA[:4]) and not any(k.startswith("lokr_") for k in parts)
    else:
        ok = ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= set(parts)) and (
            "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= set(parts))
    if not ok:
        raise UserError(f"LyCORIS module {mod} is incomplete or mixes LoHa and LoKr tensors: {', '.join(sorted(parts))}")


def group_modules(sd: dict) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    unknown = []
    for key, value in sd.items():
        split = _split(key)
        if split is None:
            unknown.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = value
    if unknown:
        raise UserError(formats._unknown_message(unknown))
    for mod, parts in groups.items():
        _check_parts(mod, parts)
    return groups


# ---------------------------------------------------------------- the update

def _mm(a, b):
    return a.reshape(a.shape[0], -1).float() @ b.reshape(b.shape[0], -1).float()


def _cp(t, wa, wb):
    # A1111 lyco_helpers.make_weight_cp / ComfyUI: Tucker core t [r, r, k, k], wa [r, out], wb [r, in].
    tmp = torch.einsum("i j k l, j r -> i r k l", t.float(), wb.float())
    return torch.einsum("i j k l, i r -> r j k l", tmp, wa.float())


def delta_weight(parts: dict, scale: float, shape=None):
    """The weight update of one module (fp32), reshaped to `shape` (the base weight's) when given."""
    if algo_of(parts) == "loha":
        if "hada_t1" in parts:
            m1 = _cp(parts["hada_t1"], parts["hada_w1_a"], parts["hada_w1_b"])
            m2 = _cp(parts["hada_t2"], parts["hada_w2_a"], parts["hada_w2_b"])
        else:
            m1 = _mm(parts["hada_w1_a"], parts["hada_w1_b"])
            m2 = _mm(parts["hada_w2_a"], parts["hada_w2_b"])
        d = m1 * m2 * scale
    else:
        w1 = parts["lokr_w1"].float() if "lokr_w1" in parts else _mm(parts["lokr_w1_a"], parts["lokr_w1_b"])
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"].float()
        elif "lokr_t2" in parts:
            w2 = _cp(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
        else:
            w2 = _mm(parts["lokr_w2_a"], parts["lokr_w2_b"])
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        d = torch.kron(w1, w2) * scale
    if shape is not None:
        if d.numel() != int(torch.Size(shape).numel()):
            raise UserError(f"LyCORIS update of {tuple(d.shape)} does not fit a weight of {tuple(shape)} (wrong base model?)")
        d = d.reshape(shape)
    return d


# ---------------------------------------------------------------- the parsed form

@dataclass
class ParsedLycoris:
    """A LoHa/LoKr adapter: per component `<module path>.<LyCORIS tensor name>` -> tensor, alphas per module."""

    unet: dict = field(default_factory=dict)
    text_encoders: list = field(default_factory=list)  # keys start with "text_model."
    alphas: dict = field(default_factory=dict)  # "<component>.<module>" -> float; absent = scale 1
    family: str | None = None
    source_format: str = "kohya"
    metadata: dict = field(default_factory=dict)
    unet_layout: dict | None = None
    uses_dora = False

    def components(self) -> list[tuple[str, dict]]:
        out = [("unet", self.unet)] if self.unet else []
        return out + [(formats.COMPONENTS[1 + i], sd) for i, sd in enumerate(self.text_encoders) if sd]

    def modules(self) -> list[tuple[str, str, dict]]:
        return [(comp, mod, parts) for comp, sd in self.components() for mod, parts in group_modules(sd).items()]

    @property
    def algo(self) -> str:
        algos = {algo_of(p) for _, _, p in self.modules()}
        return algos.pop() if len(algos) == 1 else "mixed"

    @property
    def ranks(self) -> dict:
        return {f"{c}.{m}": module_dim(p) for c, m, p in self.modules()}

    def scale(self, key: str) -> float:
        comp, mod = key.split(".", 1)
        sd = dict(self.components())[comp]
        dim = module_dim({k.rpartition(".")[2]: v for k, v in sd.items() if k.rpartition(".")[0] == mod})
        alpha = self.alphas.get(key)
        return alpha / dim if dim and alpha is not None else 1.0

    def num_parameters(self) -> int:
        return sum(t.numel() for _, sd in self.components() for t in sd.values())

    def deltas(self):
        """(component, module path, fp32 update) for every module, scaled as A1111/ComfyUI scale it."""
        for comp, mod, parts in self.modules():
            yield comp, mod, delta_weight(parts, self.scale(f"{comp}.{mod}"))


def _normalize(sd: dict, text_encoder: bool) -> dict:
    out = {}
    for key, value in sd.items():
        key = _ADAPTER_SUFFIX.sub(r"\1", key.removeprefix("base_model.model."))
        out[formats._te_path(key) if text_encoder else key] = value
    return out


def _rank_alpha(config, mod: str) -> tuple[int, float]:
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    short = mod.removeprefix("text_model.")
    r = formats._pattern_value(cfg.get("rank_pattern") or {}, short, cfg["r"])
    alpha = formats._pattern_value(cfg.get("alpha_pattern") or {}, short, cfg["alpha"])
    return int(r), float(alpha)


def from_peft(unet_sd: dict, te_sds: list, unet_config, text_encoder_config, family: str | None,
              unet_model_config: dict | None = None) -> ParsedLycoris:
    """peft LoHa/LoKr training state dicts + their configs -> ParsedLycoris with A1111's scale semantics."""
    parsed = ParsedLycoris(
        unet=_normalize(unet_sd or {}, False), text_encoders=[_normalize(sd, True) for sd in te_sds or []],
        family=family, source_format="peft",
        unet_layout=names.layout_from_config(unet_model_config) if family == formats.SDXL else None,
    )
    for comp, mod, parts in parsed.modules():
        r, alpha = _rank_alpha(unet_config if comp == "unet" else text_encoder_config, mod)
        parsed.alphas[f"{comp}.{mod}"] = alpha
        if module_dim(parts) is None:  # both LoKr factors full: clients use scale 1, peft alpha/r
            sd = dict(parsed.components())[comp]
            sd[f"{mod}.lokr_w2"] = parts["lokr_w2"] * (alpha / r)
    return parsed


def to_kohya_state_dict(parsed: ParsedLycoris) -> dict:
    out = {}
    for comp, mod, parts in parsed.modules():
        name = formats.kohya_module_name(parsed, comp, mod)
        for kind, tensor in sorted(parts.items()):
            out[f"{name}.{kind}"] = tensor
        if f"{comp}.{mod}" in parsed.alphas:
            dtype = next(iter(parts.values())).dtype
            out[f"{name}.alpha"] = formats.alpha_tensor(parsed.alphas[f"{comp}.{mod}"], dtype)
    return out


def read_kohya(sd: dict, metadata: dict | None = None, unet_config: dict | None = None) -> ParsedLycoris:
    """A kohya/LyCORIS LoHa/LoKr state dict -> ParsedLycoris (module names mapped back like LoRA files)."""
    metadata = dict(metadata or {})
    parsed = ParsedLycoris(metadata=metadata, unet_layout=formats._layout_for_reading(unet_config, metadata))
    split = {}
    unknown = []
    for key in sd:
        name, _, kind = key.partition(".")
        pk = formats.split_kohya_name(name)
        if pk is None or (kind not in KEYS and kind != "alpha"):
            unknown.append(key)
        else:
            split[key] = (pk, kind)
    if unknown:
        raise UserError(formats._unknown_message(unknown))
    sgm = any(p == "lora_unet_" and names.is_sgm_path(names.underscored_to_path(raw)) for (p, raw), _ in split.values())
    te2 = any(p in ("lora_te1_", "lora_te2_") for (p, _), _ in split.values())
    parsed.family = formats.family_from_metadata(metadata) or (formats.SDXL if sgm or te2 else None)
    tes: dict[int, dict] = {}
    for key, ((prefix, raw), kind) in split.items():
        comp, path = formats.kohya_module_path(parsed, prefix, raw)
        if kind == "alpha":
            parsed.alphas[f"{comp}.{path}"] = formats.alpha_value(sd[key], key)
            continue
        target = parsed.unet if comp == "unet" else tes.setdefault(formats.COMPONENTS.index(comp) - 1, {})
        target[f"{path}.{kind}"] = sd[key]
    parsed.text_encoders = [tes.get(i, {}) for i in range(max(tes) + 1)] if tes else []
    parsed.modules()  # validates every module
    return parsed


# ---------------------------------------------------------------- metadata

def network_metadata(meta: dict, algo: str, factor: int | None = None) -> dict:
    """kohya's ss_network_module / ss_network_args as LyCORIS runs record them (all args as strings)."""
    out = dict(meta)
    args = json.loads(out.get("ss_network_args") or "{}")
    args["algo"] = algo
    if algo == "lokr" and factor is not None:
        args["factor"] = str(factor)
    out["ss_network_module"] = NETWORK_MODULE
    out["ss_network_args"] = json.dumps({k: str(v) for k, v in args.items()}, sort_keys=True)
    return out


def summary_rank_alpha(parsed: ParsedLycoris) -> tuple[str, str]:
    """ss_network_dim / ss_network_alpha of the U-Net modules ("Dynamic" when they differ)."""
    keys = [k for k in parsed.ranks if k.startswith("unet.")] or list(parsed.ranks)
    dims = {parsed.ranks[k] for k in keys if parsed.ranks[k] is not None}
    alphas = {parsed.alphas[k] for k in keys if k in parsed.alphas}
    dim = str(dims.pop()) if len(dims) == 1 else "Dynamic"
    alpha = str(float(alphas.pop())) if len(alphas) == 1 else "Dynamic"
    return dim, alpha


# ---------------------------------------------------------------- applying to a model

def target_module(root, comp: str, mod: str):
    """The Linear/Conv2d a module path names in a U-Net or text encoder (under any peft wrapper)."""
    # lazy: peft costs seconds to import; reading a LoHa/LoKr file (lora-kit info, publish) never gets here
    from peft.tuners.tuners_utils import BaseTunerLayer

    if comp != "unet" and not hasattr(root, "text_model"):
        mod = mod.removeprefix("text_model.")  # transformers 5 flattens CLIPTextModel
    try:
        module = root.get_submodule(mod)
    except AttributeError:
        raise UserError(f"{comp} has no module {mod} (a LoHa/LoKr file for another model?)") from None
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def target_modules(parsed: ParsedLycoris, roots: dict) -> list:
    """The modules `apply` will change, for snapshots; `roots`: component name -> model."""
    return [target_module(roots[comp], comp, mod) for comp, mod, _ in parsed.modules() if roots.get(comp) is not None]


def apply(parsed: ParsedLycoris, roots: dict, weight: float) -> None:
    """W += weight * delta-W for every module of `parsed` (components absent from `roots` are skipped)."""
    with torch.no_grad():
        for comp, mod, delta in parsed.deltas():
            if roots.get(comp) is None:
                continue
            module = target_module(roots[comp], comp, mod)
            if delta.numel() != module.weight.numel():
                raise UserError(f"LyCORIS update of {comp} {mod} ({tuple(delta.shape)}) does not fit its weight "
                                f"{tuple(module.weight.shape)} (a file for another model?)")
            d = delta.to(module.weight.device).reshape(module.weight.shape)
            module.weight.add_((weight * d).to(module.weight.dtype))
