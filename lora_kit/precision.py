"""Precision names -> torch dtypes: one table for the three vocabularies users meet.

- `train.mixed_precision` in a recipe is accelerate's: "no" (fp32) / "fp16" / "bf16";
- saved files (`save.precision`, `convert`/`merge`/`resize --dtype`) use kohya's "fp32" / "fp16" / "bf16"
  ("float" too, sd-scripts' spelling of fp32); "same"/"keep" keep the tensors' own dtype;
- inference and captioning `--dtype` also take torch's names ("float32", "float16", "bfloat16") and "auto"
  (half precision on a GPU, fp32 on a CPU, where half is slow or unsupported).
Every spelling maps to the same three dtypes, so a name means one thing wherever it is accepted.
"""

from __future__ import annotations

import torch

from lora_kit.errors import UserError

DTYPES = {
    "no": torch.float32, "fp32": torch.float32, "float": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip
MIXED_PRECISION = ("no", "fp16", "bf16")  # accelerate's names, the recipe's train.mixed_precision
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")  # kohya's names, the recipe's save.precision
KEEP = ("same", "keep")  # save without casting


def to_dtype(name: str, what: str = "precision") -> torch.dtype:
    """Any accepted spelling -> dtype; an unknown one is a one-line UserError naming `what`."""
    if name not in DTYPES:
        raise UserError(f"unknown {what} {name!r}; expected one of fp32, fp16, bf16 (or float32, float16, bfloat16)")
    return DTYPES[name]


def training_dtype(mixed_precision: str) -> torch.dtype:
    """Weight dtype of the frozen models for accelerate's mixed_precision ("no" -> fp32)."""
    return to_dtype(mixed_precision, "mixed_precision")


def save_dtype(precision: str | None) -> torch.dtype | None:
    """dtype to cast saved tensors to; None (or "same"/"keep") keeps theirs."""
    return None if precision in (None, *KEEP) else to_dtype(precision)


def runtime_dtype(name: str | None, device: str, gpu_default: torch.dtype = torch.float16) -> torch.dtype:
    """Inference/captioning `--dtype`: "auto"/empty -> `gpu_default` on CUDA, fp32 elsewhere."""
    if name in (None, "", "auto"):
        return gpu_default if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; expected auto, fp32, fp16, bf16 (or float32, float16, bfloat16)")
    return DTYPES[name]
