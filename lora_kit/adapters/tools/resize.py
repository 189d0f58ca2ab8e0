"""`lora-kit resize LORA --rank R OUT`: change a LoRA's rank by SVD, keeping its strength.

Per module, delta-W = (alpha/r) * up @ down is factorised again and truncated to the new rank k, with
new_alpha = alpha / r * k so alpha/rank (the strength users dial in) is unchanged (kohya's
networks/resize_lora.py does the same). The report gives, per module and overall, the share of
delta-W's squared Frobenius norm that is kept ("energy"); the truncation error is then exactly
||delta-W - delta-W_k||_F = sqrt(1 - energy) * ||delta-W||_F, a bound on the error of any output
(||(dW - dW_k) x|| <= ||dW - dW_k||_F * ||x||).

The SVD runs on the r x r core of QR factors (up = Qu Ru, down^T = Qd Rd, up @ down = Qu (Ru Rd^T) Qd^T)
instead of on the full out x in matrix: exact, and fast enough for SDXL's 1280-wide layers on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lora_kit.errors import UserError


@dataclass
class ModuleReport:
    module: str
    old_rank: int
    new_rank: int
    energy: float  # kept share of ||delta-W||_F^2
    norm: float  # ||delta-W||_F (with alpha/rank)

    @property
    def rel_error(self) -> float:
        return math.sqrt(max(0.0, 1.0 - self.energy))


def _factor(down, up):
    """Singular triplets of up @ down (down: [r, in...], up: [out, r...]) in float64."""
    import torch  # lazy: torch takes seconds; this command module is imported for `lora-kit resize --help`

    d = down.reshape(down.shape[0], -1).double()
    u = up.reshape(up.shape[0], -1).double()
    qu, ru = torch.linalg.qr(u)
    qd, rd = torch.linalg.qr(d.T)
    uu, s, vh = torch.linalg.svd(ru @ rd.T)
    return qu @ uu, s, vh @ qd.T


def _pick_rank(s, rank: int, dynamic_energy: float | None) -> int:
    import torch  # lazy: kept out of `lora-kit resize --help`

    total = float((s**2).sum())
    cap = max(1, min(rank, s.numel()))
    if dynamic_energy is None or total == 0.0:
        return cap
    cum = torch.cumsum(s**2, 0) / total
    k = int((cum < dynamic_energy - 1e-12).sum()) + 1
    return max(1, min(k, cap))


def resize_module(down, up, alpha: float, rank: int, dynamic_energy: float | None = None):
    """(new_down, new_up, new_alpha, ModuleReport-less stats) for one module."""
    import torch  # lazy: kept out of `lora-kit resize --help`

    old_rank = down.shape[0]
    U, s, Vh = _factor(down, up)
    k = _pick_rank(s, rank, dynamic_energy)
    total = float((s**2).sum())
    energy = float((s[:k] ** 2).sum()) / total if total > 0 else 1.0
    root = torch.sqrt(s[:k])  # split the singular values evenly: both factors stay in fp16 range
    new_up = (U[:, :k] * root).to(up.dtype).reshape(up.shape[0], k, *up.shape[2:]).contiguous()
    new_down = (root[:, None] * Vh[:k]).to(down.dtype).reshape(k, *down.shape[1:]).contiguous()
    new_alpha = alpha / old_rank * k
    norm = math.sqrt(total) * alpha / old_rank
    return new_down, new_up, new_alpha, k, energy, norm


def resize_parsed(parsed, rank: int, dynamic_energy: float | None = None):
    """(resized ParsedLora, [ModuleReport]); DoRA magnitudes would no longer match, so they are refused."""
    from lora_kit.adapters.formats import ParsedLora  # lazy: imports torch, kept out of `lora-kit resize --help`

    if rank < 1:
        raise UserError("--rank must be at least 1")
    if dynamic_energy is not None and not 0.0 < dynamic_energy <= 1.0:
        raise UserError("--dynamic-energy must be in (0, 1]")
    if parsed.uses_dora:
        raise UserError("resizing DoRA adapters is not supported (the magnitude vectors depend on the rank)")
    if not isinstance(parsed, ParsedLora):
        raise UserError(f"resize changes LoRA ranks; a LyCORIS {parsed.algo} file has no up @ down factors to re-factorise")
    new = ParsedLora(family=parsed.family, source_format=parsed.source_format, metadata=dict(parsed.metadata),
                     unet_layout=parsed.unet_layout, text_encoders=[{} for _ in parsed.text_encoders])
    reports = []
    for comp, mod, parts in tqdm(parsed.modules(), desc="resizing", unit="module"):
        key = f"{comp}.{mod}"
        down, up, alpha, k, energy, norm = resize_module(parts["lora_A"], parts["lora_B"], parsed.alphas[key], rank, dynamic_energy)
        target = new.unet if comp == "unet" else new.text_encoders[("text_encoder", "text_encoder_2").index(comp)]
        target[f"{mod}.lora_A.weight"] = down
        target[f"{mod}.lora_B.weight"] = up
        new.alphas[key] = alpha
        reports.append(ModuleReport(key, parts["lora_A"].shape[0], k, energy, norm))
    return new, reports


def overall_energy(reports: list[ModuleReport]) -> float:
    total = sum(r.norm**2 for r in reports)
    return sum(r.norm**2 * r.energy for r in reports) / total if total > 0 else 1.0


def add_arguments(parser) -> None:
    parser.add_argument("lora", help="input LoRA file (kohya or diffusers)")
    parser.add_argument("out", help="output .safetensors (same format as the input)")
    parser.add_argument("--rank", type=int, required=True, help="new rank (the maximum with --dynamic-energy)")
    parser.add_argument("--dynamic-energy", type=float, default=None, metavar="E",
                        help="per-module rank: the smallest that keeps this share of ||delta-W||^2 (e.g. 0.9), capped by --rank")
    parser.add_argument("--precision", choices=("same", "fp16", "bf16", "fp32"), default="same")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--verbose", action="store_true", help="print every module, not only the worst ten")


def _update_metadata(meta: dict, parsed, new, rank: int, dynamic: float | None) -> dict:
    from lora_kit.adapters.io import _summary_rank_alpha  # lazy: imports torch, not for --help

    out = {k: v for k, v in meta.items() if not k.startswith("sshs_")}
    dim, alpha = _summary_rank_alpha(new)
    old_dim = meta.get("ss_network_dim") or _summary_rank_alpha(parsed)[0]
    how = f"dynamic resize (energy {dynamic}, max rank {rank})" if dynamic else f"resized to rank {rank}"
    out["ss_training_comment"] = f"dimension is {how} from {old_dim}; " + meta.get("ss_training_comment", "")
    out["ss_network_dim"], out["ss_network_alpha"] = dim, alpha
    return out


def run(args) -> int:
    # lazy: imports torch, kept out of `lora-kit resize --help`
    from lora_kit.adapters.io import read_lora_file, write_diffusers_lora, write_kohya_lora

    parsed = read_lora_file(args.lora)
    new, reports = resize_parsed(parsed, args.rank, args.dynamic_energy)
    meta = _update_metadata(parsed.metadata, parsed, new, args.rank, args.dynamic_energy)
    precision = None if args.precision == "same" else args.precision
    if parsed.source_format == "kohya":
        out = write_kohya_lora(args.out, new, meta, precision, overwrite=args.force)
    else:
        out = write_diffusers_lora(args.out, new, precision, meta, overwrite=args.force)
    shown = reports if args.verbose else sorted(reports, key=lambda r: r.energy)[:10]
    print(f"{'module':<72} rank      energy  rel.error")
    for r in shown:
        print(f"{r.module:<72} {r.old_rank:>3}->{r.new_rank:<3} {r.energy:>8.4f}  {r.rel_error:8.4f}")
    print(f"overall energy kept: {overall_energy(reports):.4f} over {len(reports)} modules "
          f"(ranks {min(r.new_rank for r in reports)}-{max(r.new_rank for r in reports)}) -> {Path(out)}")
    return 0
