"""`lora-kit extract TUNED BASE --rank R | --threshold T OUT`: a LoRA from the difference of two models.

What kohya's networks/extract_lora_from_models.py does: per module, delta-W = W_tuned - W_base (reshaped to
out x in*k*k for convolutions) is factorised by SVD and truncated to rank k; the file gets
lora_up = U_k sqrt(S_k), lora_down = sqrt(S_k) V_k^T (split evenly so both stay in fp16 range) and
alpha = k, so scale 1 and up @ down is the best rank-k approximation of delta-W (Eckart-Young). The kept
share of ||delta-W||_F^2 ("energy") is reported per module, as `resize` does.

Modules, with kohya's LoRANetwork targets: every Linear / 1x1 conv of the U-Net's transformer blocks
(Transformer2DModel), and with `--conv-rank` > 0 also the ResNet blocks (3x3 convs at the conv rank,
time_emb_proj and 1x1 shortcuts at the rank) and the down/upsampler convs; the text encoders' attention
and MLP projections. Modules whose difference is at most `--min-diff` everywhere (0: identical) are left
out, so a model whose text encoder was not fine-tuned gives a U-Net-only file.

`--rank R` is the rank of every module (its maximum with `--threshold`); `--threshold T` keeps the singular
values >= T x the module's largest one (a per-module rank, ss_network_dim "Dynamic").
No library offers this (peft and diffusers have no model-difference extraction), hence the SVD here.
"""

from __future__ import annotations

import math
from pathlib import Path

from tqdm.auto import tqdm

from lora_kit.adapters import names
from lora_kit.errors import UserError

_TE_PARTS = (".self_attn.", ".mlp.")
_RESNET_PARTS = (".resnets.", ".downsamplers.", ".upsamplers.")


def add_arguments(parser) -> None:
    parser.add_argument("tuned", help="fine-tuned model: diffusers folder, .safetensors checkpoint, Hub id or builtin:")
    parser.add_argument("base", help="the model it was tuned from (same architecture)")
    parser.add_argument("out", help="output kohya .safetensors")
    parser.add_argument("--rank", type=int, default=None, help="rank of every module (the maximum with --threshold)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="per-module rank: keep singular values >= T x the module's largest (0 < T <= 1)")
    parser.add_argument("--conv-rank", type=int, default=None,
                        help="rank of the ResNet/sampler 3x3 convolutions (kohya conv_dim; default = --rank, 0 = leave them out)")
    parser.add_argument("--min-diff", type=float, default=0.0,
                        help="leave out modules whose weights differ by at most this everywhere (default 0: identical)")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--single-file-config", default=None, help="diffusers folder describing single-file models")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def _targets(model, component: str, conv: bool) -> dict:
    """module path -> Linear/Conv2d that kohya's LoRANetwork would adapt."""
    import torch  # lazy: torch takes seconds; this command module is imported for `lora-kit extract --help`

    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        dotted = f".{name}."
        if component == "unet":
            if ".attentions." in dotted or (conv and any(p in dotted for p in _RESNET_PARTS)):
                out[name] = m
        elif any(p in dotted for p in _TE_PARTS):
            out[name] = m
    return out


def _pick_rank(s, rank: int | None, threshold: float | None) -> int:
    cap = s.numel() if rank is None else min(rank, s.numel())
    if threshold is not None and float(s[0]) > 0:
        cap = min(cap, int((s >= threshold * s[0]).sum()))
    return max(1, cap)


def extract_module(diff, rank: int | None, threshold: float | None):
    """(lora_A, lora_B, k, energy) of one module's difference (fp32, peft/kohya shapes)."""
    import torch  # lazy: kept out of `lora-kit extract --help`

    flat = diff.double().reshape(diff.shape[0], -1)
    U, s, Vh = torch.linalg.svd(flat, full_matrices=False)
    k = _pick_rank(s, rank, threshold)
    total = float((s**2).sum())
    energy = float((s[:k] ** 2).sum()) / total if total > 0 else 1.0
    root = torch.sqrt(s[:k])
    up = (U[:, :k] * root).float()
    down = (root[:, None] * Vh[:k]).float()
    if diff.ndim == 4:  # conv: down [k, in, kh, kw], up [out, k, 1, 1] (kohya and peft agree)
        down = down.reshape(k, *diff.shape[1:])
        up = up.reshape(diff.shape[0], k, 1, 1)
    return down.contiguous(), up.contiguous(), k, energy


def extract(tuned_bundle, base_bundle, rank: int | None, threshold: float | None, conv_rank: int | None,
            min_diff: float = 0.0):
    """(ParsedLora, [(module key, k, energy, ||delta-W||_F)]) from two loaded ModelBundles."""
    # lazy: torch (formats imports it too) kept out of `lora-kit extract --help`
    import torch

    from lora_kit.adapters import formats

    conv = conv_rank is None or conv_rank > 0  # None: the convolutions at --rank (or by --threshold alone)
    conv_cap = rank if conv_rank is None else conv_rank
    pairs = [("unet", tuned_bundle.unet, base_bundle.unet)]
    pairs += [(formats.COMPONENTS[1 + i], t, b) for i, (t, b) in enumerate(zip(tuned_bundle.text_encoders, base_bundle.text_encoders))]
    parsed = formats.ParsedLora(family=base_bundle.family, source_format="kohya",
                                unet_layout=names.layout_from_config(dict(base_bundle.unet.config)) if base_bundle.family == formats.SDXL else None)
    tes: dict[int, dict] = {}
    report = []
    jobs = []
    for comp, tuned, base in pairs:
        tmods, bmods = _targets(tuned, comp, conv), _targets(base, comp, conv)
        if tmods.keys() != bmods.keys():
            raise UserError(f"{comp}: the two models have different modules (not the same architecture)")
        jobs += [(comp, name, tmods[name], bmods[name]) for name in tmods]
    with torch.no_grad():
        for comp, name, t, b in tqdm(jobs, desc="extracting", unit="module"):
            if t.weight.shape != b.weight.shape:
                raise UserError(f"{comp} {name}: weight shapes differ ({tuple(t.weight.shape)} vs {tuple(b.weight.shape)})")
            diff = t.weight.detach().float() - b.weight.detach().float()
            if float(diff.abs().max()) <= min_diff:
                continue
            spatial = diff.ndim == 4 and diff.shape[2:] != (1, 1)
            down, up, k, energy = extract_module(diff, conv_cap if spatial else rank, threshold)
            path = name if comp == "unet" else formats._te_path(name)
            target = parsed.unet if comp == "unet" else tes.setdefault(formats.COMPONENTS.index(comp) - 1, {})
            target[f"{path}.lora_A.weight"], target[f"{path}.lora_B.weight"] = down, up
            parsed.alphas[f"{comp}.{path}"] = float(k)  # scale 1: up @ down is delta-W itself
            report.append((f"{comp}.{path}", k, energy, float(diff.norm())))
    parsed.text_encoders = [tes.get(i, {}) for i in range(max(tes) + 1)] if tes else []
    if not report:
        raise UserError("the two models are identical in every adapted module (nothing to extract)")
    return parsed, report


def _name(spec: str) -> str:
    return spec.split(":", 1)[1] if spec.startswith("builtin:") else Path(spec).name or spec  # never a full path


def run(args) -> int:
    # lazy: torch, diffusers and transformers, kept out of `lora-kit extract --help`
    import torch

    from lora_kit.adapters.io import check_target, write_kohya_lora
    from lora_kit.models.loading import load_model

    if args.rank is None and args.threshold is None:
        raise UserError("give --rank R, --threshold T or both")
    if args.rank is not None and args.rank < 1:
        raise UserError(f"--rank must be at least 1, got {args.rank}")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise UserError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.conv_rank is not None and args.conv_rank < 0:
        raise UserError(f"--conv-rank must be >= 0, got {args.conv_rank}")
    if not args.min_diff >= 0.0:  # also nan: with a negative one, identical modules went in as zero LoRAs
        raise UserError(f"--min-diff must be a number >= 0 (0: leave out identical modules), got {args.min_diff}")
    check_target(Path(args.out), args.force, (args.tuned, args.base))  # before the models load and the SVD runs
    kw = {"dtype": torch.float32, "single_file_config": args.single_file_config}
    tuned, base = load_model(args.tuned, **kw), load_model(args.base, **kw)
    if tuned.family != base.family:
        raise UserError(f"{_name(args.tuned)} is {tuned.family} but {_name(args.base)} is {base.family}")
    parsed, report = extract(tuned, base, args.rank, args.threshold, args.conv_rank, args.min_diff)
    how = f"rank {args.rank}" if args.threshold is None else f"threshold {args.threshold}" + (f", max rank {args.rank}" if args.rank else "")
    meta = {"ss_training_comment": f"extracted from {_name(args.tuned)} - {_name(args.base)} by SVD ({how})",
            "ss_sd_model_name": _name(args.base)}
    out = write_kohya_lora(args.out, parsed, meta, args.precision, overwrite=args.force)
    total = sum(n**2 for *_, n in report)
    kept = sum(n**2 * e for _, _, e, n in report) / total if total else 1.0
    worst = sorted(report, key=lambda r: r[2])[:5]
    for key, k, energy, _ in worst:
        print(f"{key:<72} rank {k:<4} energy {energy:.4f}")
    print(f"extracted {len(report)} modules (ranks {min(r[1] for r in report)}-{max(r[1] for r in report)}), "
          f"energy kept {kept:.4f}, relative error {math.sqrt(max(0.0, 1 - kept)):.4f} -> {out}")
    return 0
