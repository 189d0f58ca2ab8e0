"""LoRA state-dict formats: peft (training), kohya (A1111/ComfyUI/Civitai), diffusers files. Pure functions.

The one internal form is `ParsedLora`: per component ("unet", "text_encoder", "text_encoder_2") a peft
state dict (`<module>.lora_A.weight`, `<module>.lora_B.weight`) plus one alpha per module.

Conventions (also in docs/formats.md):
- U-Net module paths are diffusers paths (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
- Text-encoder module paths start with `text_model.` as in every file format, even though transformers 5
  flattens `CLIPTextModel` (no `text_model` attribute); `state_dict_for_model` strips it for such a model.
- Alpha keys are `<component>.<module path>` ("unet.down_blocks...to_q", "text_encoder.text_model...q_proj");
  a bare U-Net path is accepted as input. Alpha is the trained `lora_alpha`, so the effective weight is
  W + (alpha / rank) * up @ down in every format; a missing alpha means alpha = rank (scale 1).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from lora_kit.adapters import names
from lora_kit.errors import UserError
from lora_kit.models.family import FAMILIES, SD1, SD2, SD2V, SDXL  # noqa: F401 (re-exported: formats.SDXL ...)

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_PEFT_KEY = re.compile(r"^(?P<mod>.+?)\.(?:(?P<ab>lora_[AB])(?:\.[\w-]+)?\.weight|(?P<mag>lora_magnitude_vector)(?:\.[\w-]+)?(?:\.weight)?|(?P<alpha>alpha))$")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
_KOHYA_SUFFIX = {"lora_down.weight": "lora_A", "lora_up.weight": "lora_B", "lora_A.weight": "lora_A", "lora_B.weight": "lora_B"}


@dataclass
class ParsedLora:
    """A LoRA in peft layout, whatever file it came from."""

    unet: dict = field(default_factory=dict)
    text_encoders: list = field(default_factory=list)  # [te] or [te1, te2]; keys start with "text_model."
    alphas: dict = field(default_factory=dict)  # "<component>.<module>" -> float
    family: str | None = None  # sd1 / sd2 / sd2v / sdxl, None when nothing tells
    source_format: str = "peft"  # kohya / diffusers / diffusers-old / peft
    metadata: dict = field(default_factory=dict)  # the file's own safetensors metadata
    unet_layout: dict | None = None  # block layout for Stability names (None = the family's real U-Net)

    @property
    def unet_sd(self) -> dict:
        return self.unet

    @property
    def te_sds(self) -> list:
        return self.text_encoders

    def components(self) -> list[tuple[str, dict]]:
        out = [("unet", self.unet)] if self.unet else []
        return out + [(COMPONENTS[1 + i], sd) for i, sd in enumerate(self.text_encoders) if sd]

    def modules(self) -> list[tuple[str, str, dict]]:
        """(component, module path, {"lora_A", "lora_B"[, "magnitude"]}) for every LoRA module."""
        return [(comp, mod, parts) for comp, sd in self.components() for mod, parts in group_modules(sd).items()]

    @property
    def ranks(self) -> dict:
        return {f"{c}.{m}": p["lora_A"].shape[0] for c, m, p in self.modules()}

    def scale(self, key: str) -> float:
        """alpha / rank of one module ("<component>.<module>")."""
        comp, mod = key.split(".", 1)
        sd = self.unet if comp == "unet" else self.text_encoders[COMPONENTS.index(comp) - 1]
        return self.alphas[key] / sd[f"{mod}.lora_A.weight"].shape[0]

    def num_parameters(self) -> int:
        return sum(t.numel() for _, sd in self.components() for t in sd.values())

    @property
    def uses_dora(self) -> bool:
        return any("magnitude" in p for _, _, p in self.modules())


# ---------------------------------------------------------------- peft state dicts

def split_peft_key(key: str) -> tuple[str, str] | None:
    """`x.to_q.lora_A.weight` -> ("x.to_q", "lora_A"); kinds: lora_A, lora_B, magnitude, alpha; None if not LoRA."""
    m = _PEFT_KEY.match(key)
    if not m:
        return None
    kind = m.group("ab") or ("magnitude" if m.group("mag") else "alpha")
    return m.group("mod"), kind


def group_modules(sd: dict) -> dict[str, dict]:
    """Tensors of a peft state dict grouped per module; unknown or incomplete entries raise UserError."""
    groups: dict[str, dict] = {}
    unknown = []
    for key, value in sd.items():
        split = split_peft_key(key)
        if split is None or split[1] == "alpha":
            unknown.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = value
    incomplete = [m for m, p in groups.items() if "lora_A" not in p or "lora_B" not in p]
    if unknown or incomplete:
        raise UserError(_unknown_message(unknown + [f"{m} (lora_A or lora_B missing)" for m in incomplete]))
    return groups


def _unknown_message(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:12]) + (f" ... ({len(keys)} in all)" if len(keys) > 12 else "")
    return (f"not a LoRA key lora-kit understands (LoCon-CP `lora_mid`, kohya DoRA `dora_scale`, GLoRA and bias "
            f"adapters are not supported): {shown}")


def _te_path(path: str) -> str:
    # CLIPTextModel is flattened in transformers 5 (`encoder.layers...`); files always say `text_model.`.
    return path if path.startswith(("text_model.", "text_projection")) else "text_model." + path


def normalize_peft_sd(sd: dict, text_encoder: bool = False) -> dict:
    """Strip `base_model.model.` and a single adapter name; prefix text-encoder keys with `text_model.`."""
    out = {}
    adapters = set()
    for key, value in sd.items():
        key = key.removeprefix("base_model.model.")
        m = re.match(r"^(.+\.(?:lora_[AB]|lora_magnitude_vector))\.([\w-]+)(\.weight)?$", key)
        if m and m.group(2) != "weight":
            adapters.add(m.group(2))
            key = m.group(1) + (m.group(3) or "")
            key = key if key.endswith(".weight") or "magnitude" in key else key + ".weight"
        out[_te_path(key) if text_encoder else key] = value
    if len(adapters) > 1:
        raise UserError(f"state dict holds several adapters ({', '.join(sorted(adapters))}); pass one")
    return out


def state_dict_for_model(sd: dict, model) -> dict:
    """A text-encoder state dict keyed for `model`: drops `text_model.` when the model has no such attribute."""
    if hasattr(model, "text_model"):
        return dict(sd)
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def alphas_from_lora_config(config, component: str, sd: dict) -> dict:
    """Per-module alphas of a peft LoraConfig (alpha_pattern, rank_pattern, rsLoRA) in lora-kit's convention."""
    if config is None:
        raise ValueError(f"the peft LoraConfig of {component} is needed to know its alphas")
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for mod, parts in group_modules(sd).items():
        rank = parts["lora_A"].shape[0]
        patterns = cfg.get("alpha_pattern") or {}
        default = cfg.get("lora_alpha", rank)
        # Patterns may name text-encoder modules with or without `text_model.` (flattened CLIP).
        alpha = float(_pattern_value(patterns, mod, _pattern_value(patterns, mod.removeprefix("text_model."), default)))
        if cfg.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # peft scales by alpha/sqrt(r); kohya by alpha/r
        out[f"{component}.{mod}"] = alpha
    return out


def _pattern_value(patterns: dict, module: str, default):
    # Same matching rule as peft's `get_pattern_key`: a pattern matches a dotted suffix of the module path.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _resolve_alphas(parsed: ParsedLora, alphas) -> dict:
    out, missing = {}, []
    given = {}
    if isinstance(alphas, dict):
        for key, value in alphas.items():
            comp, _, rest = key.partition(".")
            if comp not in COMPONENTS:
                comp, rest = "unet", key
            given[f"{comp}.{_te_path(rest) if comp != 'unet' else rest}"] = float(value)
    for comp, mod, _ in parsed.modules():
        key = f"{comp}.{mod}"
        if isinstance(alphas, (int, float)):
            out[key] = float(alphas)
        elif key in given:
            out[key] = given[key]
        else:
            missing.append(key)
    if missing:
        raise UserError(f"no alpha given for {len(missing)} LoRA modules, e.g. {missing[0]}")
    return out


def from_peft(unet_sd: dict, te_sds: list, alphas, family: str | None, unet_config: dict | None = None) -> ParsedLora:
    """Wrap training state dicts (peft.get_peft_model_state_dict) into a ParsedLora."""
    if family is not None and family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    if len(te_sds or []) > 2 or (len(te_sds or []) == 2 and family not in (SDXL, None)):
        raise UserError("two text-encoder state dicts are only possible for SDXL")
    parsed = ParsedLora(
        unet=normalize_peft_sd(unet_sd or {}),
        text_encoders=[normalize_peft_sd(sd, text_encoder=True) for sd in (te_sds or [])],
        family=family,
        # Only SDXL kohya files use Stability block names, so only they need the layout.
        unet_layout=names.layout_from_config(unet_config) if family == SDXL else None,
    )
    parsed.alphas = _resolve_alphas(parsed, alphas)
    return parsed


# ---------------------------------------------------------------- kohya

def _kohya_te_prefix(index: int, family: str | None) -> str:
    if family == SDXL:
        return ("lora_te1_", "lora_te2_")[index]
    if index > 0:
        raise UserError("a second text encoder exists only in SDXL LoRAs")
    return "lora_te_"


def _sgm_layout(parsed: ParsedLora) -> dict:
    if parsed.unet_layout:
        return parsed.unet_layout
    return names.SDXL_UNET_LAYOUT if parsed.family == SDXL else names.SD1_UNET_LAYOUT


def kohya_module_name(parsed, comp: str, mod: str) -> str:
    """`lora_unet_<path>` / `lora_te[12]_<path>` of one module (SDXL U-Net in Stability block names)."""
    if comp == "unet":
        path = names.diffusers_to_sgm(mod, _sgm_layout(parsed)) if parsed.family == SDXL else mod
        return "lora_unet_" + names.path_to_underscored(path)
    return _kohya_te_prefix(COMPONENTS.index(comp) - 1, parsed.family) + names.path_to_underscored(mod)


def split_kohya_name(name: str) -> tuple[str, str] | None:
    """`lora_te1_text_model_...` -> ("lora_te1_", "text_model_..."); None when no kohya prefix."""
    prefix = next((p for p in _KOHYA_PREFIXES if name.startswith(p)), None)
    return None if prefix is None else (prefix, name[len(prefix):])


def kohya_module_path(parsed, prefix: str, raw: str) -> tuple[str, str]:
    """(component, diffusers/peft module path) of a kohya module name split by `split_kohya_name`."""
    comp = _KOHYA_PREFIXES[prefix]
    path = names.underscored_to_path(raw)
    if comp == "unet" and names.is_sgm_path(path):
        path = names.sgm_to_diffusers(path, _sgm_layout(parsed))
    return comp, path


def to_kohya_state_dict(parsed: ParsedLora) -> dict:
    """kohya keys: `lora_unet_<path>.lora_down.weight/.lora_up.weight/.alpha`; SDXL U-Net in Stability names."""
    if parsed.uses_dora:
        # PEFT normalises DoRA per output row; A1111 normalises kohya `dora_scale` per input column and
        # diffusers drops it, so no kohya file would load at the trained strength. Refuse rather than lie.
        raise UserError("DoRA adapters cannot be written as kohya files that load exactly; export the diffusers format")
    out = {}
    for comp, mod, parts in parsed.modules():
        name = kohya_module_name(parsed, comp, mod)
        down = parts["lora_A"]
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = parts["lora_B"]
        out[f"{name}.alpha"] = alpha_tensor(parsed.alphas[f"{comp}.{mod}"], down.dtype)
    return out


def alpha_tensor(alpha: float, dtype):
    """A scalar alpha in the weights' dtype when that is exact (fp16 files stay bit-identical), else fp32."""
    t = torch.tensor(float(alpha), dtype=dtype if dtype.is_floating_point else torch.float32)
    return t if float(t) == float(alpha) else torch.tensor(float(alpha), dtype=torch.float32)


def peft_to_kohya(unet_sd: dict, te_sds: list, alphas, family: str, unet_config: dict | None = None) -> dict:
    """Training state dicts -> kohya state dict (alpha = trained alpha, never rank)."""
    return to_kohya_state_dict(from_peft(unet_sd, te_sds, alphas, family, unet_config))


def kohya_to_peft(sd: dict, metadata: dict | None = None, unet_config: dict | None = None) -> ParsedLora:
    """kohya state dict -> ParsedLora (SDXL Stability names mapped with `unet_config`, default real SDXL)."""
    metadata = dict(metadata or {})
    groups: dict[tuple[str, str], dict] = {}
    unknown = []
    for key, value in sd.items():
        name, _, suffix = key.partition(".")
        prefix = next((p for p in _KOHYA_PREFIXES if name.startswith(p)), None)
        kind = _KOHYA_SUFFIX.get(suffix) or ("alpha" if suffix == "alpha" else None)
        if prefix is None or kind is None:
            unknown.append(key)
            continue
        groups.setdefault((prefix, name[len(prefix):]), {})[kind] = value
    if unknown:
        raise UserError(_unknown_message(unknown))
    family = detect_family_from_kohya(groups, metadata)
    layout = _layout_for_reading(unet_config, metadata)
    parsed = ParsedLora(family=family, source_format="kohya", metadata=metadata, unet_layout=layout)
    tes: dict[int, dict] = {}
    for (prefix, raw), parts in groups.items():
        comp = _KOHYA_PREFIXES[prefix]
        path = names.underscored_to_path(raw)
        if comp == "unet" and names.is_sgm_path(path):
            path = names.sgm_to_diffusers(path, layout or _sgm_layout(parsed))
        target = parsed.unet if comp == "unet" else tes.setdefault(COMPONENTS.index(comp) - 1, {})
        if "lora_A" not in parts or "lora_B" not in parts:
            raise UserError(f"kohya module {prefix}{raw} lacks lora_down or lora_up")
        target[f"{path}.lora_A.weight"] = parts["lora_A"]
        target[f"{path}.lora_B.weight"] = parts["lora_B"]
        rank = parts["lora_A"].shape[0]
        # kohya/A1111/ComfyUI: no alpha tensor means scale 1.0, i.e. alpha = rank.
        parsed.alphas[f"{comp}.{path}"] = alpha_value(parts["alpha"], f"{prefix}{raw}.alpha") if "alpha" in parts else float(rank)
    parsed.text_encoders = [tes.get(i, {}) for i in range(max(tes) + 1)] if tes else []
    return parsed


def _layout_for_reading(unet_config, metadata: dict) -> dict | None:
    if unet_config is not None:
        return names.layout_from_config(unet_config)
    if metadata.get("lora_kit.unet_layout"):
        return names.layout_from_config(json.loads(metadata["lora_kit.unet_layout"]))
    return None


def detect_family_from_kohya(groups: dict, metadata: dict) -> str | None:
    fam = family_from_metadata(metadata)
    if fam:
        return fam
    if any(p in ("lora_te1_", "lora_te2_") for p, _ in groups) or any(
        names.is_sgm_path(names.underscored_to_path(r)) for p, r in groups if p == "lora_unet_"
    ):
        return SDXL
    return _family_from_shapes({f"{_KOHYA_PREFIXES[p]}.{r}": g.get("lora_A") for (p, r), g in groups.items()})


def family_from_metadata(metadata: dict) -> str | None:
    version = metadata.get("ss_base_model_version", "")
    arch = metadata.get("modelspec.architecture", "")
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return SDXL
    if version == "sd_v2_v" or arch.startswith("stable-diffusion-v2-768-v"):
        return SD2V
    if version.startswith("sd_v2") or arch.startswith("stable-diffusion-v2") or metadata.get("ss_v2") == "True":
        return SD2
    if version.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return SD1
    return None


def _family_from_shapes(downs: dict) -> str | None:
    # Real models only: cross-attention context width (768 / 1024 / 2048) and CLIP width (768 / 1024).
    for key, down in downs.items():
        if down is None or down.ndim != 2:
            continue
        if key.startswith("unet.") and ("attn2_to_k" in key or "attn2.to_k" in key):
            return {768: SD1, 1024: SD2, 2048: SDXL}.get(down.shape[1])
        if key.startswith("text_encoder.") and ("q_proj" in key):
            return {768: SD1, 1024: SD2}.get(down.shape[1])
    return None


# ---------------------------------------------------------------- diffusers / plain peft reading

def _diffusers_to_peft_keys(sd: dict, text_encoder: bool) -> dict:
    # diffusers keeps its historical key spellings as replacement tables; reuse them instead of regexes.
    # lazy: diffusers costs seconds to import and only diffusers/peft-layout files (not kohya) need it
    from diffusers.utils.state_dict_utils import (
        DIFFUSERS_OLD_TO_PEFT, DIFFUSERS_TO_PEFT, convert_state_dict, convert_unet_state_dict_to_peft,
    )

    if text_encoder:
        if any("_lora." in k for k in sd):
            sd = convert_state_dict(sd, DIFFUSERS_OLD_TO_PEFT)
        sd = convert_state_dict(sd, DIFFUSERS_TO_PEFT)
    return convert_unet_state_dict_to_peft(sd)


def read_lora_state_dict(sd: dict, metadata: dict | None = None, unet_config: dict | None = None) -> ParsedLora:
    """Any supported layout (kohya, diffusers new/old, plain peft) -> ParsedLora. Unknown keys raise."""
    metadata = dict(metadata or {})
    if not sd:
        raise UserError("the file holds no tensors")
    kohya = [k for k in sd if k.startswith(tuple(_KOHYA_PREFIXES))]
    from lora_kit.adapters import lycoris  # lazy: import cycle (lycoris, the LoHa/LoKr reader, imports formats)

    # A file mixing LoRA and LyCORIS modules is not read: its LyCORIS keys are then listed as unknown.
    if kohya and lycoris.is_lycoris_state_dict(sd) and not any(k.endswith(tuple(_KOHYA_SUFFIX)) for k in sd):
        return lycoris.read_kohya(sd, metadata, unet_config)
    if kohya:
        if len(kohya) != len(sd):
            raise UserError(_unknown_message([k for k in sd if k not in kohya]))
        return check_modules(kohya_to_peft(sd, metadata, unet_config))
    prefixed = any(k.split(".", 1)[0] in COMPONENTS for k in sd)
    buckets: dict[str, dict] = {c: {} for c in COMPONENTS}
    alpha_keys: dict[str, float] = {}
    for key, value in sd.items():
        comp, _, rest = key.partition(".")
        if not prefixed or comp not in COMPONENTS:
            rest = key.removeprefix("base_model.model.")
            comp = "text_encoder" if rest.startswith(("text_model.", "encoder.layers.")) else "unet"
        if rest.endswith(".alpha"):
            alpha_keys[f"{comp}.{rest[:-6]}"] = alpha_value(value, key)
        else:
            buckets[comp][rest] = value
    old = any("_lora." in k or ".processor." in k for k in sd)
    parsed = ParsedLora(source_format=("diffusers-old" if old else "diffusers") if prefixed else "peft", metadata=metadata)
    parsed.unet = normalize_peft_sd(_diffusers_to_peft_keys(buckets["unet"], False))
    tes = [normalize_peft_sd(_diffusers_to_peft_keys(buckets[c], True), text_encoder=True) for c in COMPONENTS[1:]]
    parsed.text_encoders = tes[:2] if tes[1] else ([tes[0]] if tes[0] else [])
    parsed.family = family_from_metadata(metadata) or (SDXL if tes[1] else None) or _family_from_shapes(
        {f"{c}.{m}": p["lora_A"] for c, m, p in parsed.modules()}
    )
    parsed.alphas = _diffusers_alphas(parsed, metadata, alpha_keys)
    parsed.unet_layout = _layout_for_reading(unet_config, metadata)
    return check_modules(parsed)


def alpha_value(value, key: str) -> float:
    """One alpha tensor (or number) as a float: one finite number, else the key is named."""
    if getattr(value, "numel", lambda: 1)() != 1:
        raise UserError(f"{key}: expected one number (the module's alpha), got a tensor of shape {list(value.shape)}")
    if not math.isfinite(float(value)):
        raise UserError(f"{key}: expected a finite alpha, got {float(value)}")
    return float(value)


def check_modules(parsed: ParsedLora) -> ParsedLora:
    """What every writer, merge and loader relies on: finite float weights, lora_down and lora_up both 2-D (linear)
    or 4-D (conv), and one rank >= 1 shared by the pair. A broken module is named instead of failing later."""
    for comp, mod, parts in parsed.modules():
        down, up = parts["lora_A"], parts["lora_B"]
        where, shapes = f"{comp} module {mod}", f"lora_down {list(down.shape)}, lora_up {list(up.shape)}"
        if not (down.is_floating_point() and up.is_floating_point()):
            raise UserError(f"{where}: expected floating-point weights (such as float16 or float32), got {down.dtype} and {up.dtype}")
        if down.ndim not in (2, 4) or up.ndim != down.ndim:
            raise UserError(f"{where}: expected 2-D (linear) or 4-D (conv) weights of the same kind, got {shapes}")
        if down.shape[0] < 1 or down.shape[0] != up.shape[1]:
            raise UserError(f"{where}: lora_down rank {down.shape[0]} and lora_up rank {up.shape[1]} differ or are 0 ({shapes})")
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):  # SVD (resize) fails, merge spreads it
            raise UserError(f"{where}: the weights hold nan or inf (saved from a diverged run?)")
    return parsed


def _diffusers_alphas(parsed: ParsedLora, metadata: dict, alpha_keys: dict) -> dict:
    packed = json.loads(metadata["lora_adapter_metadata"]) if metadata.get("lora_adapter_metadata") else {}
    out = {}
    for comp, mod, parts in parsed.modules():
        key = f"{comp}.{mod}"
        cfg = {k[len(comp) + 1:]: v for k, v in packed.items() if k.startswith(comp + ".")}
        if key in alpha_keys or f"{comp}.{mod.removeprefix('text_model.')}" in alpha_keys:
            out[key] = alpha_keys.get(key, alpha_keys.get(f"{comp}.{mod.removeprefix('text_model.')}"))
        elif cfg:
            out.update(alphas_from_lora_config(cfg, comp, {f"{mod}.lora_A.weight": parts["lora_A"], f"{mod}.lora_B.weight": parts["lora_B"]}))
        else:
            out[key] = float(parts["lora_A"].shape[0])  # diffusers without metadata: scale 1
    return out


# ---------------------------------------------------------------- diffusers writing

def to_diffusers_state_dict(parsed: ParsedLora) -> dict:
    """`unet.` / `text_encoder.` / `text_encoder_2.` + peft keys, as diffusers' save_lora_weights writes."""
    out = {}
    for comp, mod, parts in parsed.modules():
        down, up = parts["lora_A"], parts["lora_B"]
        if parsed.family in (SD2, SD2V) and mod.endswith(("proj_in", "proj_out")) and down.ndim == 4 and down.shape[2:] == (1, 1):
            # kohya trains SD2 on a U-Net with 1x1-conv projections; diffusers' SD2 U-Net has Linear ones.
            down, up = down.flatten(1), up.flatten(1)
        out[f"{comp}.{mod}.lora_A.weight"] = down
        out[f"{comp}.{mod}.lora_B.weight"] = up
        if "magnitude" in parts:
            out[f"{comp}.{mod}.lora_magnitude_vector"] = parts["magnitude"]
    return out


def diffusers_lora_configs(parsed: ParsedLora) -> dict[str, dict]:
    """LoraConfig kwargs per component, for diffusers' `lora_adapter_metadata` (carries alpha != rank)."""
    configs = {}
    for comp, sd in parsed.components():
        groups = group_modules(sd)
        # Text-encoder targets without `text_model.` so they suffix-match flattened and nested CLIP alike.
        mods = {m: m.removeprefix("text_model.") for m in groups}
        ranks = {mods[m]: p["lora_A"].shape[0] for m, p in groups.items()}
        alphas = {mods[m]: parsed.alphas[f"{comp}.{m}"] for m in groups}
        r = Counter(ranks.values()).most_common(1)[0][0]
        a = Counter(alphas.values()).most_common(1)[0][0]
        configs[comp] = {
            "r": r,
            "lora_alpha": a,
            "target_modules": sorted(ranks),
            "rank_pattern": {m: v for m, v in ranks.items() if v != r},
            "alpha_pattern": {m: v for m, v in alphas.items() if v != a},
            "use_dora": any("magnitude" in p for p in groups.values()),
        }
    return configs
