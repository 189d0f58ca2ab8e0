"""The method table (issue 18): the demo's subject and style trained as LoRA, LoHa, LoKr and DoRA.

Same recipes (recipes/demo-subject.toml, demo-style.toml), same steps, same data, same grid and scorer as
`lora-kit demo` (lora_kit.world.demo / lora_kit.world.evaluate), without the ControlNet columns. Per method
and concept: concept rate at weight 1 and 0 on trigger prompts, bleed and plain-prompt shape / colour
accuracy, colour error and area at weight 1, file size, training and total wall time. Offline, CPU.

  python scripts/bench_methods.py [--out runs/methods] [--methods lora,loha,lokr,dora] [--concepts subject,style]

DoRA runs without the ResNet-conv adapters (peft DoRA files have no kohya layout for convolutions), so it
trains only the attention/feed-forward layers the others train besides their convs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = {
    "lora": [],
    "loha": ['network.algo="loha"'],
    "lokr": ['network.algo="lokr"'],
    "dora": ["network.use_dora=true", "network.conv_rank=0"],
}


def run_one(method: str, concept: str, out: Path, seeds: int) -> dict:
    from lora_kit.world import demo

    recipe, dataset, trigger, prompts = demo.CONCEPTS[concept]
    folder = out / method / concept
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    data, _ = demo._prepare_data(dataset, trigger, folder)
    r, files = demo._train(recipe, data, folder, 0, METHODS[method])
    trained = time.perf_counter() - t0
    lora = Path(files.get("kohya") or files["diffusers"])
    grid = demo._grid(r.model.pretrained, lora, prompts + demo.PLAIN_PROMPTS, seeds, 20, folder / "grid", None)
    scores = demo.score_demo(grid, trigger, data)
    s = scores["summary"]
    w0, w1 = s[0.0], s[1.0]
    row = {"method": method, "concept": concept, "file_kb": round(lora.stat().st_size / 1024),
           "file": lora.name, "train_s": round(trained), "total_s": round(time.perf_counter() - t0),
           "weight1": w1, "weight0": w0, "targets": scores["targets"]}
    (folder / "row.json").write_text(json.dumps(row, indent=2, default=str))
    return row


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| concept | method | concept w1 / w0 | bleed w1 | shape w1 (w0) | colour w1 (w0) | colour error w1 (w0) | "
             "area w1 / w0 | file | train s | total s | targets met |", "|---" * 12 + "|"]
    for r in rows:
        a, b = r["weight1"], r["weight0"]
        lines.append(
            f"| {r['concept']} | {r['method']} | {_pct(a.get('concept'))} / {_pct(b.get('concept'))} | {_pct(a.get('bleed'))} | "
            f"{_pct(a.get('shape'))} ({_pct(b.get('shape'))}) | {_pct(a.get('color'))} ({_pct(b.get('color'))}) | "
            f"{_num(a.get('color_error'))} ({_num(b.get('color_error'))}) | {_num((a.get('drift') or {}).get('area_ratio'), '.2f')} | "
            f"{r['file_kb']} KB | {r['train_s']} | {r['total_s']} | {sum(map(bool, r['targets'].values()))}/{len(r['targets'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/methods")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--concepts", default="subject,style")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    from lora_kit.runtime import configure_threads

    configure_threads()
    rows = []
    for concept in a.concepts.split(","):
        for method in a.methods.split(","):
            rows.append(run_one(method, concept, Path(a.out), a.seeds))
            print(f"{concept} {method}: {json.dumps(rows[-1], default=str)}", flush=True)
    print("\n" + table(rows))
    print("ROWS " + json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
