"""The hashes LoRA tools show and look files up by: kohya/addnet, A1111 "AutoV1/V2", full SHA-256.

Written by hand because no library ships them; each follows its origin exactly:
- addnet hash (kohya `sshs_model_hash`, what A1111 computes for LoRA files; its "shorthash" is the first
  12 hex digits): SHA-256 of the bytes after the safetensors header, i.e. of the tensor data only, so
  editing metadata never changes it.
- legacy hash (kohya `sshs_legacy_hash`, A1111's old 8-hex model hash, Civitai "AutoV1"): the first
  8 hex digits of SHA-256 over the 64 KiB at offset 1 MiB of the file.
- AutoV2 (A1111 / Civitai): the first 10 hex digits of the SHA-256 of the whole file.
kohya computes both `sshs_*` values on the file serialised with only its `ss_*` metadata
(`precalculate_safetensors_hashes`) so that user-edited keys do not change them; so does lora-kit.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

import safetensors.torch

_BLOCK = 1 << 20
_LEGACY_OFFSET, _LEGACY_SIZE = 0x100000, 0x10000


def _stream(f: BinaryIO, h) -> str:
    for chunk in iter(lambda: f.read(_BLOCK), b""):
        h.update(chunk)
    return h.hexdigest()


def addnet_hash(f: BinaryIO) -> str:
    """SHA-256 of a safetensors stream's tensor data (everything after the 8-byte length and the header)."""
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    f.seek(8 + n)
    return _stream(f, hashlib.sha256())


def legacy_hash(f: BinaryIO) -> str:
    f.seek(_LEGACY_OFFSET)
    return hashlib.sha256(f.read(_LEGACY_SIZE)).hexdigest()[:8]


def file_addnet_hash(path: str | Path) -> str:
    with open(path, "rb") as f:
        return addnet_hash(f)


def file_legacy_hash(path: str | Path) -> str:
    with open(path, "rb") as f:
        return legacy_hash(f)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return _stream(f, hashlib.sha256())


def autov2(path: str | Path) -> str:
    return sha256_file(path)[:10]


def ss_only(metadata: dict | None) -> dict:
    return {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}


def precalculate_hashes(tensors: dict, metadata: dict | None) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of `tensors` serialised with only the ss_* metadata, as kohya does."""
    data = safetensors.torch.save(tensors, ss_only(metadata) or None)
    buf = io.BytesIO(data)
    return addnet_hash(buf), legacy_hash(buf)


def file_hashes(path: str | Path) -> dict:
    """All the hashes of a LoRA file, named as Civitai lists them."""
    sha = sha256_file(path)
    return {"sha256": sha, "autov2": sha[:10], "addnet": file_addnet_hash(path), "autov1": file_legacy_hash(path)}
