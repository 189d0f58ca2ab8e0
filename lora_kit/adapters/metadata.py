"""safetensors metadata of an exported LoRA: kohya's `ss_*` keys, SAI ModelSpec 1.0.1, lora-kit's recipe.

A1111, Forge, ComfyUI and Civitai read kohya's keys (ss_base_model_version decides SDXL vs SD1,
ss_tag_frequency feeds trigger-word pickers, ss_output_name is the alias...), so the names and value
formats follow `train_network.py` and `library/sai_model_spec.py` of kohya-ss/sd-scripts. Every value is
a str. Nothing published carries an absolute local path or a secret: `scrub_paths` removes them.
"""

from __future__ import annotations

import datetime
import json
import os
import re

from lora_kit import __version__
from lora_kit.models.family import (  # noqa: F401 (the family table, re-exported under its old names)
    ARCHITECTURE,
    BASE_MODEL_VERSION,
    IMPLEMENTATION,
    NATIVE_SIZE as DEFAULT_RESOLUTION,
    SD1,
    SD2,
    SD2V,
    SDXL,
)

MODELSPEC_VERSION = "1.0.1"
RECIPE_KEY = "lora_kit.recipe"
_SECRET = re.compile(r"token|password|passwd|secret|api_?key|credential", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})$")

# info key -> ss_* key, for values written as plain str().
_PLAIN = {
    "output_name": "ss_output_name", "steps": "ss_steps", "epoch": "ss_epoch",
    "max_train_steps": "ss_max_train_steps", "learning_rate": "ss_learning_rate", "unet_lr": "ss_unet_lr",
    "text_encoder_lr": "ss_text_encoder_lr", "optimizer": "ss_optimizer", "lr_scheduler": "ss_lr_scheduler",
    "num_train_images": "ss_num_train_images", "num_reg_images": "ss_num_reg_images",
    "gradient_accumulation_steps": "ss_gradient_accumulation_steps",
    "seed": "ss_seed", "min_snr_gamma": "ss_min_snr_gamma", "noise_offset": "ss_noise_offset",
    "loss_type": "ss_loss_type", "huber_schedule": "ss_huber_schedule", "huber_c": "ss_huber_c",
    "huber_scale": "ss_huber_scale", "masked_loss": "ss_masked_loss",
    "clip_skip": "ss_clip_skip", "mixed_precision": "ss_mixed_precision", "network_dropout": "ss_network_dropout",
    "training_started_at": "ss_training_started_at", "training_finished_at": "ss_training_finished_at",
}


def _looks_absolute(s: str) -> bool:
    return os.path.isabs(s) or s.startswith("~") or bool(re.match(r"^[A-Za-z]:[\\/]", s)) or s.startswith("file://")


def scrub_paths(obj):
    """Copy of `obj` without secrets (keys like token/password/api_key, hf_... values) or absolute paths.

    An absolute path becomes its last component ("/home/me/data/10_dog" -> "10_dog"), so the
    information users need (folder names, file names) survives and the machine layout does not.
    """
    if isinstance(obj, dict):
        return {scrub_paths(k) if isinstance(k, str) else k: scrub_paths(v)
                for k, v in obj.items() if not (isinstance(k, str) and _SECRET.search(k))}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_paths(v) for v in obj if not (isinstance(v, str) and _TOKEN_VALUE.match(v)))
    if isinstance(obj, str):
        if _TOKEN_VALUE.match(obj):
            return "<removed>"
        if _looks_absolute(obj):
            return re.split(r"[\\/]", obj.removeprefix("file://").rstrip("\\/"))[-1] or obj
        return obj
    if isinstance(obj, os.PathLike):
        return scrub_paths(os.fspath(obj))
    return obj


def _resolution(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _json(value) -> str:
    return json.dumps(scrub_paths(value), ensure_ascii=False, sort_keys=True, default=str)


def _folder_names(d: dict) -> dict:
    return {scrub_paths(str(k)) if _looks_absolute(str(k)) else str(k): v for k, v in (d or {}).items()}


def kohya_keys(info: dict) -> dict[str, str]:
    """The ss_* part."""
    family = info.get("family") or SD1
    out = {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family in (SD2, SD2V)),
    }
    # No ss_network_dim / ss_network_alpha here: the written file's tensors decide them (adapters.io.network_dim).
    if info.get("network_args") is not None:
        out["ss_network_args"] = json.dumps({k: str(v) for k, v in info["network_args"].items()}, sort_keys=True)
    for key, ss in _PLAIN.items():
        if info.get(key) is not None:
            out[ss] = str(scrub_paths(info[key]))
    if info.get("resolution") is not None:
        out["ss_resolution"] = str(_resolution(info["resolution"]))  # kohya: "(512, 512)"
    if info.get("tag_frequency") is not None:
        out["ss_tag_frequency"] = _json(_folder_names(info["tag_frequency"]))
    if info.get("dataset_dirs") is not None:
        out["ss_dataset_dirs"] = _json(_folder_names(info["dataset_dirs"]))
    if info.get("base_model"):
        out["ss_sd_model_name"] = str(scrub_paths(str(info["base_model"])))
    if info.get("batch_size") is not None:  # images per optimizer step, all processes and accumulation
        out["ss_total_batch_size"] = str(int(info["batch_size"]) * int(info.get("gradient_accumulation_steps") or 1))
    return out


def _date(info: dict) -> str:
    ts = info.get("training_finished_at") or info.get("training_started_at")
    when = datetime.datetime.fromtimestamp(int(ts)) if ts else datetime.datetime.now().replace(microsecond=0)
    return when.isoformat()


def modelspec_keys(info: dict) -> dict[str, str]:
    family = info.get("family") or SD1
    v = family == SD2V or info.get("prediction_type") in ("v", "v_prediction")
    w, h = _resolution(info.get("resolution") or DEFAULT_RESOLUTION[family])
    ts = info.get("training_finished_at") or info.get("training_started_at")
    title = info.get("title") or info.get("output_name") or f"LoRA@{ts or _date(info)}"
    out = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{ARCHITECTURE[family]}/lora",
        "modelspec.implementation": IMPLEMENTATION.get(family, "diffusers"),
        "modelspec.implementation_version": f"lora-kit/{__version__}",
        "modelspec.title": str(title),
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": _date(info),
        "modelspec.prediction_type": "v" if v else "epsilon",
    }
    if info.get("clip_skip") is not None:
        out["modelspec.encoder_layer"] = str(info["clip_skip"])
    for key in ("author", "description", "license"):
        if info.get(key):
            out[f"modelspec.{key}"] = str(info[key])
    if info.get("tags"):
        out["modelspec.tags"] = ", ".join(map(str, info["tags"]))
    if info.get("trigger_words"):
        out["modelspec.trigger_phrase"] = ", ".join(map(str, info["trigger_words"]))
    return out


def build_kohya_metadata(info: dict) -> dict[str, str]:
    """ss_* + modelspec.* + lora_kit.* metadata from what the trainer knows (any subset of keys)."""
    out = {**kohya_keys(info), **modelspec_keys(info)}
    out["lora_kit.version"] = __version__
    if info.get("recipe") is not None:
        out[RECIPE_KEY] = _json(scrub_recipe(info["recipe"]))
    if info.get("trigger_words"):
        out["lora_kit.trigger_words"] = json.dumps(list(info["trigger_words"]), ensure_ascii=False)
    if info.get("embedding"):  # pivotal tuning: the trigger's embedding file, relative to the LoRA
        out["lora_kit.embedding"] = json.dumps(info["embedding"], ensure_ascii=False)
    return {k: str(v) for k, v in out.items()}


def minimum_kohya_metadata(family: str | None) -> dict[str, str]:
    """kohya's SS_METADATA_MINIMUM_KEYS for a converted file (A1111 needs the version keys to pick SD1/SDXL),
    less ss_network_dim / ss_network_alpha, which adapters.io writes from the file's tensors."""
    fam = family or SD1
    return {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": BASE_MODEL_VERSION[fam],
        "ss_v2": str(fam in (SD2, SD2V)),
    }


# Recipe keys that hold a location: published as a name (the last component), never a path. The model
# keys may also be Hub ids ("owner/name"), which are kept.
_LOCAL_KEYS = {"": ("output_dir",), "dataset": ("path", "reg_path"), "cache": ("dir",), "sample": ("control_image",)}
_MODEL_KEYS = {"model": ("pretrained", "vae", "single_file_config"), "sample": ("controlnet",)}


def _last_component(value: str) -> str:
    return re.split(r"[\\/]", value.removeprefix("file://").rstrip("\\/"))[-1]


def _location_name(value: str, maybe_hub: bool) -> str:
    """A local path (absolute or relative: "runs/my-lora", "data/10_dog") -> its last component;
    builtin:NAME and, for model keys, Hub ids ("owner/name" that is no local folder) are kept."""
    if not value or value.startswith("builtin:"):
        return value
    hub_like = (maybe_hub and value.count("/") == 1 and not value.startswith((".", "~", "/"))
                and "\\" not in value and not value.endswith((".safetensors", ".ckpt")) and not os.path.exists(value))
    return value if hub_like else _last_component(value)


def scrub_recipe(recipe: dict) -> dict:
    """A resolved recipe (recipe_to_dict) fit to publish: secrets and absolute paths removed
    (`scrub_paths`), and every location (output_dir, dataset paths, cache dir, local model folders,
    control image) reduced to a name, relative paths included."""
    out = scrub_paths(json.loads(json.dumps(recipe, default=str)))
    if not isinstance(out, dict):
        return out
    for keys_of, maybe_hub in ((_LOCAL_KEYS, False), (_MODEL_KEYS, True)):
        for section, keys in keys_of.items():
            table = out.get(section) if section else out
            for key in keys if isinstance(table, dict) else ():
                if isinstance(table.get(key), str):
                    table[key] = _location_name(table[key], maybe_hub)
    return out
