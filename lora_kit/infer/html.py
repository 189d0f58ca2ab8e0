"""grid.html: one self-contained page per grid (relative image paths, inline CSS/JS, nothing fetched).

It opens from disk (file://) and from any static host. The inline script sets the page title to
"loaded N/M" once every image has loaded or failed, which scripts/check_grid_html.py reads from a
headless browser to prove the page works.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from lora_kit.utils import atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:1rem;color:#222;background:#fafafa}
table.grid{border-collapse:collapse}
table.grid th{font-weight:600;padding:4px 6px;vertical-align:middle;text-align:center;max-width:16rem}
table.grid td{padding:2px;vertical-align:top;text-align:center}
figure{margin:0}
img{display:block;image-rendering:auto;background:#ddd}
img.small{image-rendering:pixelated}
figcaption{font-size:.75rem;color:#555}
details{font-size:.7rem;text-align:left;max-width:24rem}
pre{white-space:pre-wrap;word-break:break-word}
.meta{color:#555;font-size:.9rem}
"""

_SCRIPT = """
(function () {
  var imgs = Array.prototype.slice.call(document.images);
  var total = imgs.length, left = 0;
  function report() {
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.title = "loaded " + ok + "/" + total;
  }
  imgs.forEach(function (i) {
    if (i.complete) return;
    left++;
    function one() { if (--left === 0) report(); }
    i.addEventListener("load", one);
    i.addEventListener("error", one);
  });
  if (left === 0) report();
})();
"""


def _caption(metrics: dict) -> str:
    parts = []
    if "base_distance" in metrics:
        parts.append(f"Δbase {metrics['base_distance']:.4f}")
    if "clip_score" in metrics:
        parts.append(f"CLIP {metrics['clip_score']:.2f}")
    return " · ".join(parts)


def _cell_html(cell: dict, width: int, height: int) -> str:
    shown = max(width, 128)  # tiny 64-px cells are shown enlarged (pixelated) so they can be seen
    scale = shown / width
    cls = ' class="small"' if width < 128 else ""
    text = escape(cell["parameters"])
    return (
        f'<td><figure><a href="{escape(cell["file"])}"><img src="{escape(cell["file"])}"{cls} '
        f'width="{shown}" height="{round(height * scale)}" alt="{escape(cell["row_label"] + " " + cell["col_label"])}" '
        f'title="{text}"></a><figcaption>{escape(_caption(cell.get("metrics", {})))}</figcaption>'
        f"<details><summary>parameters</summary><pre>{text}</pre></details></figure></td>"
    )


def render_html(manifest: dict) -> str:
    layout = manifest["layout"]
    cols, rows = layout["cols"], layout["rows"]
    cells = manifest["cells"]
    w, h = layout["cell_width"], layout["cell_height"]
    col_labels = [c["col_label"] for c in cells[:cols]]
    has_rows = any(c["row_label"] for c in cells)
    head = "<tr>" + ("<th></th>" if has_rows else "") + "".join(f"<th>{escape(t)}</th>" for t in col_labels) + "</tr>"
    body = []
    for r in range(rows):
        row = cells[r * cols : (r + 1) * cols]
        th = f"<th>{escape(row[0]['row_label'])}</th>" if has_rows else ""
        body.append("<tr>" + th + "".join(_cell_html(c, w, h) for c in row) + "</tr>")
    model = manifest["model"]
    meta = f"model {escape(model['name'])} ({escape(model['family'])}) · {len(cells)} cells · " + (
        "LoRAs fused" if manifest.get("fused") else "LoRAs unfused"
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>lora-kit grid</title><style>{_CSS}</style></head><body>\n"
        f"<h1>lora-kit grid</h1><p class=\"meta\">{meta} · <a href=\"grid.png\">grid.png</a> · "
        "<a href=\"grid.json\">grid.json</a></p>\n"
        f"<table class=\"grid\"><thead>{head}</thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def write_html(manifest: dict, path: str | Path) -> Path:
    return atomic_write_text(path, render_html(manifest))
