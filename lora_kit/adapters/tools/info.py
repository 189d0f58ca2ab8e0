"""`lora-kit info FILE`: what a LoRA file is, how strong it is, what it says about itself, hash check."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

SUMMARY_KEYS = (
    "modelspec.title", "ss_output_name", "modelspec.architecture", "ss_base_model_version", "ss_sd_model_name",
    "modelspec.trigger_phrase", "ss_steps", "ss_epoch", "ss_resolution", "ss_num_train_images",
    "ss_learning_rate", "ss_optimizer", "ss_network_dim", "ss_network_alpha", "ss_mixed_precision",
    "ss_clip_skip", "modelspec.author", "modelspec.license", "modelspec.date",
)


def add_arguments(parser) -> None:
    parser.add_argument("file", help="a LoRA .safetensors (kohya, diffusers or peft)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--metadata", action="store_true", help="print every metadata key")
    parser.add_argument("--allow-pickle", action="store_true", help="open .ckpt/.pt/.bin files (trusted only)")


def module_group(component: str, module: str) -> str:
    """unet down/mid/up block, or the text encoder."""
    if component != "unet":
        return component
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)", module)
    if m:
        return f"unet {m.group(1).split('_')[0]} {m.group(2)}"
    return "unet mid" if module.startswith("mid_block") else "unet other"


def describe(path, allow_pickle: bool = False) -> dict:
    # lazy: these import torch (seconds); `lora-kit info --help` loads only this module
    from lora_kit.adapters import hashes, io

    path = Path(path)
    tensors, meta = io.load_lora_file(path, allow_pickle=allow_pickle)
    parsed = io.parse_lora(path, tensors, meta)
    groups: dict[str, Counter] = defaultdict(Counter)
    ranks = parsed.ranks  # LoKr with two full factors: None (A1111/ComfyUI then apply scale 1)
    for comp, mod, _ in parsed.modules():
        key = f"{comp}.{mod}"
        groups[module_group(comp, mod)][(ranks[key], parsed.alphas.get(key))] += 1
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in tensors.values())
    info = {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "format": parsed.source_format,
        "family": parsed.family or "unknown",
        "modules": len(parsed.modules()),
        "parameters": parsed.num_parameters(),
        "dtypes": dict(dtypes),
        "dora": parsed.uses_dora,
        "algo": getattr(parsed, "algo", "lora"),  # lora, or LyCORIS loha / lokr
        "groups": {g: [{"rank": r, "alpha": a, "scale": a / r if r and a is not None else 1.0, "modules": n}
                       for (r, a), n in sorted(c.items(), key=lambda x: (x[0][0] or 0, x[0][1] or 0))]
                   for g, c in sorted(groups.items())},
        "metadata": {k: meta[k] for k in SUMMARY_KEYS if k in meta},
        "hashes": hashes.file_hashes(path) if io._sniff(path) == "safetensors" else {"sha256": hashes.sha256_file(path)},
    }
    info["hash_check"] = _hash_check(path, tensors, meta)
    info["all_metadata"] = meta
    return info


def _hash_check(path: Path, tensors: dict, meta: dict) -> dict:
    from lora_kit.adapters import hashes  # lazy: imports torch, kept out of `lora-kit info --help`

    stored = meta.get("sshs_model_hash")
    if not stored:
        return {"status": "absent"}
    actual = hashes.file_addnet_hash(path)
    out = {"stored": stored, "actual": actual, "status": "match" if stored == actual else "MISMATCH"}
    if meta.get("sshs_legacy_hash"):
        legacy = hashes.precalculate_hashes(tensors, meta)[1]
        out["legacy"] = "match" if legacy == meta["sshs_legacy_hash"] else "MISMATCH"
    return out


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def format_text(info: dict, all_metadata: bool = False) -> str:
    lines = [
        f"file        {info['file']}  ({_human(info['size_bytes'])}, {', '.join(f'{k} x{v}' for k, v in info['dtypes'].items())})",
        f"format      {info['format']}   family {info['family']}   algo {info['algo']}" + ("   DoRA" if info["dora"] else ""),
        f"modules     {info['modules']}   parameters {info['parameters']:,}",
        "rank/alpha  (scale = alpha/rank = strength at weight 1.0)",
    ]
    for group, entries in info["groups"].items():
        for e in entries:
            rank, alpha = e["rank"] or "full", "-" if e["alpha"] is None else f"{e['alpha']:g}"
            lines.append(f"  {group:<16} rank {rank:<4} alpha {alpha:<8} scale {e['scale']:<8.4g} x{e['modules']}")
    if info["metadata"]:
        lines.append("metadata")
        lines += [f"  {k:<26} {_short(v)}" for k, v in info["metadata"].items()]
    h = info["hashes"]
    lines.append("hashes      " + "  ".join(f"{k} {v}" for k, v in h.items() if k != "sha256") + f"\n            sha256 {h['sha256']}")
    check = info["hash_check"]
    if check["status"] == "absent":
        lines.append("hash check  no sshs_model_hash stored")
    else:
        extra = f", legacy {check['legacy']}" if "legacy" in check else ""
        lines.append(f"hash check  sshs_model_hash {check['status']}{extra}")
    if all_metadata:
        lines.append("all metadata")
        lines += [f"  {k} = {_short(v, 400)}" for k, v in sorted(info["all_metadata"].items())]
    return "\n".join(lines)


def _short(value: str, n: int = 100) -> str:
    value = str(value).replace("\n", " ")
    return value if len(value) <= n else value[: n - 3] + "..."


def run(args) -> int:
    info = describe(args.file, allow_pickle=args.allow_pickle)
    if args.json:
        if not args.metadata:
            info.pop("all_metadata")
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_text(info, all_metadata=args.metadata))
    return 0 if info["hash_check"]["status"] != "MISMATCH" else 1
