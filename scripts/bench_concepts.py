"""Concepts nobody tuned for (issue 19): the shipped demo recipes on new subjects and styles of the world.

What a new user does: copy recipes/demo-subject.toml or demo-style.toml, change only the dataset, the
trigger word, the name and the output folder, train, and look at a grid. Here the datasets are drawn by the
world's generator (lora_kit.world.concepts.Concept, like the shipped star and stripes: 20 images, 10
repeats, every colour and canvas) for shapes and fills the recipes were never tuned on, the grid is the
demo's (4 trigger prompts written like the captions + the demo's 4 plain prompts, 5 seeds, LoRA weight 0 /
0.5 / 1, no ControlNet) and lora_kit.world.evaluate scores it against issue 19's targets, with the concept's
signature learned from the training images.

  python scripts/bench_concepts.py --concepts subject:hexagon:sks,style:checker:zyk [--out runs/concepts]
      [--set optimizer.lr=3e-3] [--steps N] [--seeds 5] [--data-seed K]
  python scripts/bench_concepts.py --rescore runs/concepts   # the saved grids again, with today's scorer

A concept is KIND:NAME:TRIGGER; KIND is subject (NAME a shape of lora_kit.world.shapes.ALL_SHAPES) or style
(NAME a fill of ALL_FILLS, drawn on the four base shapes). Offline, CPU; about 5 minutes per concept on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lora_kit.infer.grid import load_manifest  # noqa: E402
from lora_kit.runtime import configure_threads  # noqa: E402
from lora_kit.world import demo  # noqa: E402
from lora_kit.world.concepts import CONCEPTS, STYLE, SUBJECT, Concept, write_concept_dataset  # noqa: E402
from lora_kit.world.shapes import sample_scene  # noqa: E402

RECIPES = {SUBJECT: "demo-subject", STYLE: "demo-style"}


# The shipped datasets the demo recipes train on: a new concept is drawn like them (count, repeats, size range).
SHIPPED = {SUBJECT: CONCEPTS["shapes-star"], STYLE: CONCEPTS["shapes-stripes"]}


def make_concept(kind: str, name: str, trigger: str, seed: int) -> Concept:
    """The shipped star (subject) or stripes (style) definition with another shape or fill, trigger and seed."""
    what = {"shapes": (name,)} if kind == SUBJECT else {"fill": name}
    return dataclasses.replace(SHIPPED[kind], name=f"shapes-{name}", trigger=trigger, class_token=name, seed=seed, **what)


def trigger_prompts(concept: Concept, n: int = 4, seed: int = 4242) -> list[str]:
    """Prompts written like the captions, on scenes the dataset does not hold."""
    rng = np.random.default_rng(seed)
    return [concept.caption(sample_scene(rng, shapes=concept.shapes, fills=[concept.fill], size_range=concept.size_range))
            for _ in range(n)]


def run_one(spec: str, out: Path, seeds: int, steps: int, overrides: list[str], data_seed: int = 0) -> dict:
    kind, name, trigger = spec.split(":")
    concept = make_concept(kind, name, trigger, seed=5000 + sum(map(ord, name)) + data_seed)
    folder = out / f"{kind}-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    data = write_concept_dataset(concept, folder)
    r, files = demo._train(RECIPES[kind], data, folder, steps, [f'dataset.trigger_word="{trigger}"', f'name="{name}"'] + overrides)
    trained = time.perf_counter() - t0
    lora = Path(files.get("kohya") or files["diffusers"])
    prompts = trigger_prompts(concept)
    grid = demo._grid(r.model.pretrained, lora, prompts + demo.PLAIN_PROMPTS, seeds, 20, folder / "grid", None)
    scores = demo.score_demo(grid, trigger, data)
    s = scores["summary"]
    row = {"concept": spec, "signature": scores["concept"].describe(), "weight1": s[1.0], "weight0": s[0.0],
           "targets": scores["targets"], "train_s": round(trained), "total_s": round(time.perf_counter() - t0),
           "overrides": overrides, "steps": r.train.max_steps, "prompts": prompts, "data_seed": data_seed,
           "plain_distance": plain_distance(grid.cells, trigger)}
    (folder / "row.json").write_text(json.dumps(row, indent=2, default=str))
    return row


def plain_distance(cells: list[dict], trigger: str) -> float | None:
    """Mean pixel distance (the grid's base_distance, 0..1) of each prompt without the trigger at weight 1 from
    the same prompt and seed at weight 0. A drift measure with no threshold: it moves with the adapter where
    the scorer's rates move in steps of one picture (5 points), so two recipes compare on fewer runs."""
    d = [c["metrics"]["base_distance"] for c in cells
         if trigger not in c["params"]["prompt"].split() and "base_distance" in c.get("metrics", {})
         and [lo["weight"] for lo in c["params"]["loras"]] == [1.0]]
    return round(sum(d) / len(d), 4) if d else None


def rescore(folder: Path) -> dict:
    """A finished concept's row again from its saved grid and training images (a scorer change needs no training)."""
    row = json.loads((folder / "row.json").read_text())
    trigger = row["concept"].split(":")[2]
    data = next(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("shapes-"))
    grid = SimpleNamespace(out_dir=folder / "grid", cells=load_manifest(folder / "grid")["cells"])
    scores = demo.score_demo(grid, trigger, data)
    s = scores["summary"]
    return {**row, "signature": scores["concept"].describe(), "weight1": s[1.0], "weight0": s[0.0], "targets": scores["targets"],
            "plain_distance": plain_distance(grid.cells, trigger)}


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def table(rows: list[dict]) -> str:
    lines = ["| concept | signature | concept w1 / w0 | bleed w1 | shape w1 (w0) | colour w1 (w0) | colour error w1 (w0) | "
             "area w1 / w0 | plain distance w1 | train s | targets met | missed |", "|---" * 12 + "|"]
    for r in rows:
        a, b = r["weight1"], r["weight0"]
        err = "-" if a.get("color_error") is None else f"{a['color_error']:.0f} ({b['color_error']:.0f})"
        area = (a.get("drift") or {}).get("area_ratio")
        missed = ", ".join(k for k, ok in (r["targets"] or {}).items() if not ok) or "-"
        lines.append(f"| {r['concept']} | {r['signature']} | {_pct(a.get('concept'))} / {_pct(b.get('concept'))} | {_pct(a.get('bleed'))} | "
                     f"{_pct(a.get('shape'))} ({_pct(b.get('shape'))}) | {_pct(a.get('color'))} ({_pct(b.get('color'))}) | {err} | "
                     f"{'-' if area is None else f'{area:.2f}'} | {r.get('plain_distance') or '-'} | {r['train_s']} | "
                     f"{sum(map(bool, (r['targets'] or {}).values()))}/{len(r['targets'] or {})} | {missed} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", default="subject:hexagon:sks,style:checker:zyk")
    ap.add_argument("--out", default="runs/concepts")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: the recipe's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--data-seed", type=int, default=0, help="draw another training set of the same concept")
    ap.add_argument("--rescore", type=Path, metavar="DIR", help="score the finished concepts under DIR again (no training)")
    a = ap.parse_args()
    configure_threads()
    if a.rescore:
        rows = [rescore(p.parent) for p in sorted(a.rescore.rglob("row.json"))]
        print(table(rows))
        return
    rows = []
    for spec in a.concepts.split(","):
        rows.append(run_one(spec, Path(a.out), a.seeds, a.steps, a.overrides, a.data_seed))
        print(f"{spec}: {json.dumps(rows[-1], default=str)}", flush=True)
    print("\n" + table(rows))
    print("ROWS " + json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
