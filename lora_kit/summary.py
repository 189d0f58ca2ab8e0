"""`summary.json`: what a finished run tells its files' metadata and the publisher, as one typed record.

The trainer fills a `RunSummary` once (lora_kit.train.export.run_summary); the kohya/ModelSpec metadata of
the adapter files is built from it (lora_kit.adapters.metadata, through `as_info`) and it is written as
`summary.json`, which `lora-kit publish` reads back with `RunSummary.read`. Field names are kohya's
`ss_*` names without the prefix where one exists, so each metadata key has this one source.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.utils import atomic_write_json

FILE = "summary.json"


@dataclass
class RunSummary:
    output_name: str = ""
    family: str = ""  # models.family name: sd1 / sd2 / sd2v / sdxl
    base_model: str = ""
    rank: int | None = None  # kohya network_dim
    alpha: float | None = None  # kohya network_alpha
    network_dropout: float = 0.0
    network_args: dict = field(default_factory=dict)  # kohya ss_network_args (target, conv_dim, algo, ...)
    training_started_at: float | None = None
    training_finished_at: float | None = None
    steps: int = 0
    epoch: int = 0  # epochs begun, kohya's 1-based count
    max_train_steps: int = 0
    learning_rate: float | None = None
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer: str = ""  # kohya-style "module.Class(args)"
    lr_scheduler: str = ""
    resolution: int | None = None
    num_train_images: int = 0  # with repeats (kohya)
    num_reg_images: int = 0
    batch_size: int = 1  # per optimizer step over all processes, before accumulation
    gradient_accumulation_steps: int = 1
    tag_frequency: dict = field(default_factory=dict)  # {folder: {tag: count}} (kohya ss_tag_frequency)
    dataset_dirs: dict = field(default_factory=dict)  # {folder: {"n_repeats", "img_count"}} (ss_dataset_dirs)
    seed: int | None = None
    min_snr_gamma: float | None = None
    noise_offset: float | None = None
    loss_type: str = "l2"  # kohya loss_type: l2 / huber / smooth_l1
    huber_schedule: str | None = None
    huber_c: float | None = None
    huber_scale: float | None = None
    masked_loss: bool = False
    clip_skip: int | None = None
    mixed_precision: str = ""
    prediction_type: str = ""
    title: str = ""
    author: str = ""
    description: str = ""
    license: str = ""
    tags: list = field(default_factory=list)
    trigger_words: list = field(default_factory=list)
    run_id: str = ""
    files: dict = field(default_factory=dict)  # {"kohya": name, "diffusers": name} in the run folder

    def as_info(self, recipe: dict | None = None) -> dict:
        """The mapping lora_kit.adapters.metadata builds the files' metadata from (plus the recipe)."""
        info = dataclasses.asdict(self)
        info.pop("files")
        info.pop("run_id")
        return {**info, "recipe": recipe} if recipe is not None else info

    @classmethod
    def from_dict(cls, data: dict) -> "RunSummary":
        """From summary.json; keys this version does not know are ignored, missing ones take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, path: str | Path) -> "RunSummary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path.name}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise UserError(f"{path.name}: expected a JSON object")
        return cls.from_dict(data)

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, dataclasses.asdict(self))
