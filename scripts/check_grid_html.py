#!/usr/bin/env python
"""Render a small grid and open its grid.html in headless Chromium: every image must load from disk.

    python scripts/check_grid_html.py [--out DIR] [--install]

grid.html's inline script sets the page title to "loaded N/M" once every image has loaded or failed;
Chromium's --dump-dom prints the DOM after the load event, so the title says how many images a real
browser could display from the file:// page. A screenshot is taken as well (DIR/screenshot.png).
Chromium: /usr/bin/chromium (Debian: `apt-get install -y chromium`; --install runs that when missing).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars"]  # fmt: skip


def find_chromium(install: bool) -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if install:
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True)
        return find_chromium(False)
    raise SystemExit("Chromium not found: install it (Debian/Ubuntu: apt-get install -y chromium) or pass --install")


def render_small_grid(out: Path):
    """2 prompts x LoRA weight 0 / 1 on tiny-sd15 with a random LoRA, plus weight-0 references."""
    from lora_kit.infer.grid import render_grid
    from lora_kit.infer.pipeline import LoraPipeline
    from lora_kit.infer.spec import Axis, CellParams, GridSpec, LoraRef
    from lora_kit.infer.synthetic import write_random_lora

    pipe = LoraPipeline.load("builtin:tiny-sd15")
    lora = write_random_lora(out.parent / "check-lora.safetensors", pipe.pipe.unet, rank=4, seed=1)
    spec = GridSpec(base=CellParams(prompt="a star", steps=4, loras=[LoraRef(str(lora), 1.0, name="check")]),
                    rows=[Axis("prompt", ["a red star", "a blue moon, at night"])], cols=[Axis("weight", [0.0, 0.5, 1.0], "check")])  # fmt: skip
    return render_grid(spec, out, pipeline=pipe, overwrite=True)


def run_chromium(chromium: str, page: Path, profile: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="where the grid goes (default: a temporary folder)")
    p.add_argument("--install", action="store_true", help="apt-get install chromium when it is missing")
    args = p.parse_args()
    chromium = find_chromium(args.install)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lora-kit-html-"))
    result = render_small_grid(work / "grid")
    page = result.html_path
    n_images = len(result.cells)
    with tempfile.TemporaryDirectory() as profile:
        dom = run_chromium(chromium, page, Path(profile), ["--dump-dom"])
        shot = work / "screenshot.png"
        run_chromium(chromium, page, Path(profile), [f"--screenshot={shot}", "--window-size=900,700"])
    m = re.search(r"<title>(.*?)</title>", dom.stdout)
    title = m.group(1) if m else ""
    print(f"chromium: {chromium}")
    print(f"page: {page}")
    print(f"title after load: {title!r} (expected 'loaded {n_images}/{n_images}')")
    ok = title == f"loaded {n_images}/{n_images}"
    if shot.exists():
        from PIL import Image
        import numpy as np

        a = np.asarray(Image.open(shot).convert("RGB"))
        nonwhite = float((a.min(axis=2) < 200).mean())
        print(f"screenshot: {shot} {a.shape[1]}x{a.shape[0]}, {100 * nonwhite:.1f}% non-white pixels")
        ok = ok and nonwhite > 0.05
    else:
        print("screenshot: not written", dom.stderr[-500:])
        ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
