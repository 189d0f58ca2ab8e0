"""Shared test setup: offline, a private cache, one thread, and session-scoped tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Never reach the network from a test; fail fast instead of retrying DNS for 20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def _lora_kit_cache(tmp_path_factory):
    """Builtin models materialise in a per-session cache, never in the user's ~/.cache."""
    if "LORA_KIT_CACHE" not in os.environ:
        os.environ["LORA_KIT_CACHE"] = str(tmp_path_factory.mktemp("lora-kit-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory) -> Path:
    """A tiny random-init SD1.x pipeline saved in diffusers format (seed 0)."""
    from lora_kit.models.presets import write_preset

    return write_preset("tiny-sd15", tmp_path_factory.mktemp("models") / "tiny-sd15", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from lora_kit.models.presets import write_preset

    return write_preset("tiny-sdxl", tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_sd2v_dir(tmp_path_factory) -> Path:
    from lora_kit.models.presets import write_preset

    return write_preset("tiny-sd2v", tmp_path_factory.mktemp("models") / "tiny-sd2v", seed=0)
