"""`--score world` for a rendered grid: every cell labelled, summaries per setting and LoRA weight.

A grid's cells differ by prompt, seed, LoRA weight and maybe other axes (ControlNet scale, CFG...). The
summaries (lora_kit.world.evaluate.summarize) compare weights within one *setting*, i.e. the values of
every axis other than prompt, seed and weight, so a ControlNet column is never averaged with a plain one.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lora_kit.utils import atomic_write_json
from lora_kit.world.evaluate import ConceptSpec, check_targets, label_rows, summarize

# Axes that vary within one summary; any other (a ControlNet scale, a checkpoint of the run, CFG) makes its
# own setting, so that two checkpoints are never averaged into one weight.
_PER_CELL_AXES = ("prompt", "seed", "weight")


def cell_weight(params: dict) -> float:
    """The LoRA weight of a cell: its first LoRA's (0 without any)."""
    loras = params.get("loras") or []
    return float(loras[0]["weight"]) if loras else 0.0


def setting_of(cell: dict) -> str:
    axes = {k: v for k, v in cell["axes"].items() if k.split(":", 1)[0] not in _PER_CELL_AXES}
    return json.dumps(axes, sort_keys=True, default=str)


def score_grid(out_dir: str | Path, cells: list[dict], trigger: str, concept: ConceptSpec) -> dict:
    """Label every cell of a grid in `out_dir`; returns {"trigger", "concept", "groups", "cells"}."""
    out = Path(out_dir)
    groups: dict[str, list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(setting_of(cell), []).append(i)
    rows: list[dict] = [{} for _ in cells]
    result_groups = []
    for setting, idx in groups.items():
        images = [Image.open(out / cells[i]["file"]) for i in idx]
        prompts = [cells[i]["params"]["prompt"] for i in idx]
        weights = [cell_weight(cells[i]["params"]) for i in idx]
        labelled = label_rows(images, prompts, weights, trigger, concept)
        for i, row in zip(idx, labelled):
            rows[i] = {"file": cells[i]["file"], **row}
        summary = summarize(labelled)
        result_groups.append({"setting": json.loads(setting), "summary": summary, "targets": check_targets(summary)})
    return {"trigger": trigger, "concept": concept.to_dict(), "groups": result_groups, "cells": rows}


def write_scores(path: str | Path, scores: dict) -> Path:
    """scores.json with the weights as strings (JSON keys)."""
    data = {**scores, "groups": [{**g, "summary": {str(w): v for w, v in g["summary"].items()}} for g in scores["groups"]]}
    return atomic_write_json(Path(path), data)
