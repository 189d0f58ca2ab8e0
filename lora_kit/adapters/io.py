"""Reading and writing LoRA files: safetensors only (pickle on an explicit flag), atomic, hashed.

- `load_lora_file` names the problem in one line: not safetensors, truncated, or a pickle checkpoint
  (.ckpt/.pt/.bin), which is only opened with allow_pickle=True and then with torch's weights_only loader.
- `save_lora_file` casts to the chosen precision, adds kohya's sshs_model_hash/sshs_legacy_hash and
  writes through a temp file in the same folder + os.replace, so a crash never leaves half a file.
- `write_kohya_lora` / `write_diffusers_lora` turn a ParsedLora into the two interchange formats;
  `write_adapter_files` is what training calls at the end of a run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from lora_kit.adapters import formats, hashes, lycoris, metadata as md, names
from lora_kit.errors import UserError
from lora_kit.models.family import detect_family
from lora_kit.paths import DIFFUSERS_WEIGHT_NAME
from lora_kit.precision import save_dtype
from lora_kit.utils import atomic_write_bytes, nearest_existing

_ZIP_MAGIC = b"PK\x03\x04"
logger = logging.getLogger(__name__)


def cast_tensors(tensors: dict, precision: str | None) -> dict:
    """Floating tensors to `precision` (None keeps them); scalar alphas stay exact (see formats.alpha_tensor)."""
    dtype = save_dtype(precision)
    out = {}
    for key, t in tensors.items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = formats.alpha_tensor(float(t), dtype) if key.endswith(".alpha") and t.numel() == 1 else t.to(dtype)
        out[key] = t.contiguous()
    return out


def check_target(path: Path, overwrite: bool, inputs: tuple = ()) -> None:
    """Refuse an output LoRA path that cannot or must not be written. Tools call it before their work (an
    SVD of two models takes minutes) with their input files as `inputs`; every write calls it again."""
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: expected the path of a .safetensors file to write (got {path.suffix or 'no extension'})")
    if path.is_dir():  # --force would not help: a file is never renamed over a folder
        raise UserError(f"{path} is a folder; expected the path of the .safetensors file to write")
    if path.exists() and any(Path(p).exists() and path.samefile(p) for p in inputs):
        raise UserError(f"{path} is one of the inputs; write the LoRA to another file")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --force (overwrite=True) to replace it")
    blocker = nearest_existing(path.parent)
    if not blocker.is_dir():  # a file where a folder of the path should be
        raise UserError(f"{path}: cannot create the folder {path.parent}: {blocker} is a file")


def save_lora_file(path, tensors: dict, metadata: dict | None = None, precision: str | None = "fp16",
                   *, overwrite: bool = False, add_hashes: bool = True) -> Path:
    """Write a .safetensors LoRA atomically; metadata values must be str; adds sshs_* hashes."""
    path = Path(path)
    check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = cast_tensors(tensors, precision)
    meta = {k: v for k, v in (metadata or {}).items() if not k.startswith("sshs_")}
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be str: {', '.join(bad)}")
    if add_hashes:
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = hashes.precalculate_hashes(tensors, meta)
    atomic_write_bytes(path, safetensors.torch.save(tensors, meta or None))  # temp + fsync + rename, mode from the umask
    return path


def _sniff(path: Path) -> str:
    """"safetensors", "pickle" or a one-line reason why it is neither."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    # safetensors first: its 8-byte header length may well start with byte 0x80, like a pickle.
    if head[8:9] == b"{" and 1 < n <= 100_000_000:
        return "safetensors" if 8 + n <= size else "truncated (the header runs past the end of the file)"
    if head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "pickle"  # torch.save: a zip archive (torch >= 1.6) or a bare pickle (protocol 2-5)
    if size < 10:
        return "the file is empty or truncated"
    return "not a safetensors file"


def load_lora_file(path, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA file; metadata is {} for pickle files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    kind = _sniff(path)
    if kind == "pickle":
        if not allow_pickle:
            raise UserError(
                f"{path.name} is a pickle checkpoint (.ckpt/.pt/.bin): pickle files can run code when loaded; "
                "convert it to .safetensors or pass --allow-pickle if you trust its source"
            )
        return _load_pickle(path), {}
    if kind != "safetensors":
        raise UserError(f"{path.name}: {kind}")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError: truncated data, bad offsets, invalid JSON
        raise UserError(f"{path.name}: corrupt or truncated safetensors file ({exc})") from exc
    return tensors, meta


def _load_pickle(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path.name}: not a loadable weights-only pickle ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise UserError(f"{path.name}: pickle does not hold a flat tensor state dict")
    return obj


def read_lora_file(path, allow_pickle: bool = False, unet_config: dict | None = None) -> formats.ParsedLora:
    tensors, meta = load_lora_file(path, allow_pickle)
    return parse_lora(path, tensors, meta, unet_config)


# What diffusers' load_lora_weights raises for a file it cannot read or fit (safetensors' own error included).
LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, safetensors.SafetensorError)


def load_failure(path, exc: BaseException, unet_config: dict | None = None, shown: str | None = None) -> UserError:
    """One line for a LoRA file diffusers' load_lora_weights refused: lora-kit's reader names the file's own
    problem (not safetensors, truncated, a broken module) when it has one; else it does not fit the model."""
    shown = shown or Path(path).name
    try:
        read_lora_file(path, unet_config=unet_config)
    except UserError as named:
        return UserError(str(named).replace(Path(path).name, shown, 1))
    text = " ".join(str(exc).split())
    return UserError(f"{shown}: does not load into this model, a LoRA for another base model? "
                     f"({type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''})")


def parse_lora(path, tensors: dict, meta: dict, unet_config: dict | None = None) -> formats.ParsedLora:
    """`formats.read_lora_state_dict` of a loaded file; its one-line problems start with the file's name."""
    try:
        return formats.read_lora_state_dict(tensors, meta, unet_config)
    except UserError as exc:
        raise UserError(f"{Path(path).name}: {exc}") from exc


def _dim_modules(parsed: formats.ParsedLora) -> list[tuple[str, object]]:
    """(module, lora_A) of the modules kohya sizes with network_dim: the U-Net's (every component's without
    a U-Net), less LoCon's k x k convs, which kohya sizes with conv_dim and records in ss_network_args."""
    mods = [(f"{c}.{m}", p["lora_A"]) for c, m, p in parsed.modules()]
    unet = [(k, a) for k, a in mods if k.startswith("unet.")] or mods
    return [(k, a) for k, a in unet if a.ndim < 4 or tuple(a.shape[-2:]) == (1, 1)] or unet


def network_dim(parsed) -> str:
    """ss_network_dim, decided by the file's own tensors: the one source of the key (the metadata builders
    in adapters.metadata never write it), so a caller's metadata cannot contradict the weights.

    What kohya's loader, A1111 and ComfyUI use is the tensor shapes. kohya's trainer writes its network_dim
    argument, which is the rank of every module counted here unless block_dims give blocks their own
    ranks; kohya's resize_lora writes "Dynamic" for per-module ranks (shared/reference/kohya-sd-scripts.md,
    "Utilities"). We follow the file: its one rank, else "Dynamic", also for a block_dims run, where the
    recipe's rank is not the rank of the file's modules (the block_dims themselves are in ss_network_args).
    """
    if isinstance(parsed, lycoris.ParsedLycoris):
        return lycoris.summary_rank_alpha(parsed)[0]
    ranks = {a.shape[0] for _, a in _dim_modules(parsed)}
    return str(ranks.pop()) if len(ranks) == 1 else "Dynamic"  # kohya's word for per-module ranks


def _summary_rank_alpha(parsed: formats.ParsedLora) -> tuple[str, str]:
    """kohya's ss_network_dim / ss_network_alpha of the modules `_dim_modules` counts, "Dynamic" where they differ."""
    alphas = {parsed.alphas[k] for k, _ in _dim_modules(parsed)}
    alpha = str(float(alphas.pop())) if len(alphas) == 1 else "Dynamic"
    return network_dim(parsed), alpha


def kohya_file_metadata(parsed: formats.ParsedLora, metadata: dict | None = None) -> dict:
    """`metadata` plus kohya's minimum keys (kept when given) and the U-Net layout of a non-standard SDXL;
    ss_network_dim and ss_network_alpha always from the tensors (`_summary_rank_alpha`): one source each."""
    out = {**md.minimum_kohya_metadata(parsed.family), **(metadata or {}), **_layout_metadata(parsed)}
    out["ss_network_dim"], out["ss_network_alpha"] = _summary_rank_alpha(parsed)
    out.pop("lora_adapter_metadata", None)
    return {k: str(v) for k, v in out.items()}


def _layout_metadata(parsed: formats.ParsedLora) -> dict:
    if parsed.family == formats.SDXL and parsed.unet_layout and parsed.unet_layout != names.SDXL_UNET_LAYOUT:
        # Lets lora-kit map Stability block names of a smaller U-Net without being given the base model.
        return {"lora_kit.unet_layout": json.dumps(parsed.unet_layout, sort_keys=True)}
    return {}


def write_kohya_lora(path, parsed: formats.ParsedLora, metadata: dict | None = None, precision: str | None = "fp16",
                     *, overwrite: bool = False) -> Path:
    if isinstance(parsed, lycoris.ParsedLycoris):
        return write_lycoris(path, parsed, metadata, precision, overwrite=overwrite)
    tensors = formats.to_kohya_state_dict(formats.ParsedLora(**{**parsed.__dict__, **_cast_parsed(parsed, precision)}))
    return save_lora_file(path, tensors, kohya_file_metadata(parsed, metadata), precision, overwrite=overwrite)


def write_lycoris(path, parsed, metadata: dict | None = None, precision: str | None = "fp16", *, overwrite: bool = False) -> Path:
    """A LoHa/LoKr file in the kohya/LyCORIS layout (A1111/ComfyUI load it natively)."""
    cast = lycoris.ParsedLycoris(**{**parsed.__dict__, **_cast_parsed(parsed, precision)})
    dim, alpha = lycoris.summary_rank_alpha(parsed)
    meta = {**md.minimum_kohya_metadata(parsed.family), **(metadata or {}), **_layout_metadata(parsed),
            "ss_network_dim": dim, "ss_network_alpha": alpha}
    if meta["ss_network_module"] != lycoris.NETWORK_MODULE:  # e.g. converting a file without metadata
        meta = lycoris.network_metadata(meta, parsed.algo)
    meta = {k: str(v) for k, v in meta.items() if k != "lora_adapter_metadata"}
    return save_lora_file(path, lycoris.to_kohya_state_dict(cast), meta, precision, overwrite=overwrite)


def _cast_parsed(parsed: formats.ParsedLora, precision: str | None) -> dict:
    # Cast before building kohya tensors so each alpha's dtype follows its weights' final dtype.
    return {"unet": cast_tensors(parsed.unet, precision), "text_encoders": [cast_tensors(sd, precision) for sd in parsed.text_encoders]}


def diffusers_target(out) -> Path:
    out = Path(out)
    return out if out.suffix == ".safetensors" else out / DIFFUSERS_WEIGHT_NAME


def write_diffusers_lora(out, parsed: formats.ParsedLora, precision: str | None = "fp16", metadata: dict | None = None,
                         *, overwrite: bool = False) -> Path:
    """diffusers' own file layout + `lora_adapter_metadata` (LoraConfig per component) so that
    `load_lora_weights` applies the trained alpha; `out` is a folder (-> pytorch_lora_weights.safetensors) or a file."""
    # lazy: diffusers takes seconds to import and only this writer needs it (info/convert/resize read files without it)
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, _pack_dict_with_prefix

    packed = {}
    for comp, cfg in formats.diffusers_lora_configs(parsed).items():
        packed.update(_pack_dict_with_prefix(cfg, comp))
    meta = {k: v for k, v in (metadata or {}).items() if k != LORA_ADAPTER_METADATA_KEY}
    meta.update(_layout_metadata(parsed))
    # Same header as diffusers' write_lora_layers: {"format": "pt", "lora_adapter_metadata": json}.
    meta.update({"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)})
    if parsed.family:
        meta.setdefault("ss_base_model_version", md.BASE_MODEL_VERSION[parsed.family])
    return save_lora_file(diffusers_target(out), formats.to_diffusers_state_dict(parsed), meta, precision, overwrite=overwrite)


def write_adapter_files(out_dir, name: str, unet_sd: dict, te_sds: list, info: dict, *, unet_config=None,
                        text_encoder_config=None, unet_model_config: dict | None = None, precision: str = "fp16",
                        diffusers_name: str = DIFFUSERS_WEIGHT_NAME, overwrite: bool = True) -> dict[str, Path]:
    """End of training: `<name>.safetensors` (kohya + ss_* metadata) and the diffusers file, from peft state dicts.

    `unet_config` / `text_encoder_config` are the peft LoraConfigs used for training (alphas, patterns).
    LoHa/LoKr (peft LoHaConfig/LoKrConfig): the kohya/LyCORIS file only (no diffusers layout exists).
    """
    if lycoris.is_lycoris_state_dict(unet_sd) or any(lycoris.is_lycoris_state_dict(sd) for sd in te_sds or []):
        return _write_lycoris_files(out_dir, name, unet_sd, te_sds, info, unet_config, text_encoder_config,
                                    unet_model_config, precision, overwrite)
    alphas = {}
    if unet_sd:
        alphas.update(formats.alphas_from_lora_config(unet_config, "unet", formats.normalize_peft_sd(unet_sd)))
    for i, sd in enumerate(te_sds or []):
        comp = formats.COMPONENTS[1 + i]
        alphas.update(formats.alphas_from_lora_config(text_encoder_config, comp, formats.normalize_peft_sd(sd, True)))
    # Without a family the U-Net config tells (an SDXL adapter must not be labelled sd_v1 with SD1 key names).
    sched = {"prediction_type": info.get("prediction_type")}  # the scheduler's value, "v_prediction" or "epsilon"
    family = info.get("family") or (detect_family(dict(unet_model_config), sched) if unet_model_config else None)
    parsed = formats.from_peft(unet_sd, te_sds, alphas, family, unet_model_config)
    meta = md.build_kohya_metadata({**info, "family": family} if family else info)
    out_dir = Path(out_dir)
    files = {}
    if parsed.uses_dora:
        # No kohya file loads a peft DoRA exactly (see formats.to_kohya_state_dict): diffusers file only.
        logger.warning("DoRA adapter: writing only the diffusers file (kohya files cannot carry peft DoRA exactly)")
    else:
        files["kohya"] = write_kohya_lora(out_dir / f"{name}.safetensors", parsed, meta, precision, overwrite=overwrite)
    files["diffusers"] = write_diffusers_lora(out_dir / diffusers_name, parsed, precision, _diffusers_side_metadata(meta), overwrite=overwrite)
    return files


def _write_lycoris_files(out_dir, name, unet_sd, te_sds, info, unet_config, text_encoder_config, unet_model_config,
                         precision, overwrite) -> dict[str, Path]:
    parsed = lycoris.from_peft(unet_sd, te_sds, unet_config, text_encoder_config, info.get("family"), unet_model_config)
    factor = getattr(unet_config, "decompose_factor", None)
    meta = lycoris.network_metadata(md.build_kohya_metadata(info), parsed.algo, factor)
    logger.info("%s adapter: writing only the kohya/LyCORIS file (diffusers has no LoHa/LoKr layout)", parsed.algo)
    return {"kohya": write_lycoris(Path(out_dir) / f"{name}.safetensors", parsed, meta, precision, overwrite=overwrite)}


def _diffusers_side_metadata(meta: dict) -> dict:
    # The diffusers file keeps the descriptive keys (title, trigger, recipe) but not kohya's training stats.
    return {k: v for k, v in meta.items() if k.startswith(("modelspec.", "lora_kit."))}
