"""Rows of a `datasets.save_to_disk` folder read as encoded image bytes (no decode, opened once per process)."""

from __future__ import annotations

import functools
from pathlib import Path

from lora_kit.errors import UserError, missing_extra


@functools.lru_cache(maxsize=4)
def open_disk_dataset(path: str, column: str):
    """A `save_to_disk` dataset with its image column left encoded (bytes + path), opened once per process."""
    try:
        # lazy: `datasets` pulls in pyarrow and pandas (about a second); only save_to_disk folders need it.
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise missing_extra("datasets", purpose="Hugging Face datasets") from None
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    if column not in ds.column_names:
        raise UserError(f"{Path(path).name}: no column {column!r} (columns: {', '.join(ds.column_names)})")
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def row_bytes(path: str, column: str, row: int) -> bytes:
    value = open_disk_dataset(path, column)[row][column]
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a column of file paths
        return Path(value).read_bytes()
    raise OSError(f"row {row}: column {column!r} holds no image")
