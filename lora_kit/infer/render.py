"""Drawing the grid image: cells in rows x columns with axis labels, and cell PNGs with their parameters.

diffusers' `make_image_grid` pastes images but draws no labels, and a grid without labels cannot be read
once it leaves the tool, hence this module. Sizes are exact integer arithmetic (see `Layout`):

    width  = label_width  + cols * cell_width
    height = label_height + rows * cell_height

The font scales with the cell (`font_size`), so labels stay readable on 64-px and on 1024-px cells.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from lora_kit.utils import atomic_write_bytes

MAX_HEADER_LINES = 3


def font_size_for(cell_width: int, cell_height: int) -> int:
    """12 px at 64-px cells, 32 px at 512-px cells (1/16 of the shorter side, never under 12)."""
    return max(12, round(min(cell_width, cell_height) / 16))


def load_font(size: int):
    # Pillow >= 10.1 ships a scalable default font (needs FreeType); older or FreeType-less builds
    # fall back to the fixed bitmap font, which is small but still legible.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


@dataclass(frozen=True)
class Layout:
    rows: int
    cols: int
    cell_width: int
    cell_height: int
    label_width: int  # left column with the row labels (0 when there are no row axes)
    label_height: int  # top band with the column labels (0 when there are no column axes)
    font_size: int
    padding: int

    @property
    def width(self) -> int:
        return self.label_width + self.cols * self.cell_width

    @property
    def height(self) -> int:
        return self.label_height + self.rows * self.cell_height

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = self.label_width + col * self.cell_width
        y = self.label_height + row * self.cell_height
        return (x, y, x + self.cell_width, y + self.cell_height)

    def to_dict(self) -> dict:
        return {**asdict(self), "width": self.width, "height": self.height}


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def wrap(text: str, font, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap; words longer than a line are split; overflow ends in an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if _text_width(font, trial) <= max_width:
            current = trial
            continue
        if current:
            lines.append(current)
        while _text_width(font, word) > max_width and len(word) > 1:
            cut = next((i for i in range(len(word) - 1, 0, -1) if _text_width(font, word[:i]) <= max_width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(font, last + "…") > max_width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines or [""]


def _line_height(font, size: int) -> int:
    box = font.getbbox("Ag")
    return max(size, box[3] - box[1]) + max(2, size // 6)


def plan_layout(row_labels: list[str], col_labels: list[str], cell_width: int, cell_height: int) -> Layout:
    """Label band sizes from the wrapped labels (pure: same labels and cell size -> same layout)."""
    size = font_size_for(cell_width, cell_height)
    font, pad = load_font(size), max(2, size // 3)
    line = _line_height(font, size)
    rows, cols = max(1, len(row_labels)), max(1, len(col_labels))
    label_height = 0
    if any(col_labels):
        n = max(len(wrap(t, font, cell_width - 2 * pad, MAX_HEADER_LINES)) for t in col_labels)
        label_height = 2 * pad + n * line
    label_width = 0
    if any(row_labels):
        cap = max(8 * size, min(cell_width, 12 * size))
        max_lines = max(1, (cell_height - 2 * pad) // line)
        widest = max(_text_width(font, ln) for t in row_labels for ln in wrap(t, font, cap - 2 * pad, max_lines))
        label_width = int(min(cap, widest + 2 * pad + 1))
    return Layout(rows, cols, cell_width, cell_height, label_width, label_height, size, pad)


def compose_grid(images: list[Image.Image], layout: Layout, row_labels: list[str], col_labels: list[str], corner: str = "") -> Image.Image:
    """Row-major `images` pasted at `layout.cell_box`, labels centred in their bands."""
    grid = Image.new("RGB", (layout.width, layout.height), "white")
    for i, img in enumerate(images):
        r, c = divmod(i, layout.cols)
        box = layout.cell_box(r, c)
        if img.size != (layout.cell_width, layout.cell_height):
            img = img.resize((layout.cell_width, layout.cell_height), Image.Resampling.LANCZOS)
        grid.paste(img.convert("RGB"), box[:2])
    draw = ImageDraw.Draw(grid)
    font = load_font(layout.font_size)
    pad, line = layout.padding, _line_height(font, layout.font_size)
    if layout.label_height:
        for c, text in enumerate(col_labels):
            x0 = layout.label_width + c * layout.cell_width
            lines = wrap(text, font, layout.cell_width - 2 * pad, MAX_HEADER_LINES)
            _draw_block(draw, font, lines, (x0, 0, x0 + layout.cell_width, layout.label_height), line)
    if layout.label_width:
        max_lines = max(1, (layout.cell_height - 2 * pad) // line)
        for r, text in enumerate(row_labels):
            y0 = layout.label_height + r * layout.cell_height
            lines = wrap(text, font, layout.label_width - 2 * pad, max_lines)
            _draw_block(draw, font, lines, (0, y0, layout.label_width, y0 + layout.cell_height), line)
    if corner and layout.label_width and layout.label_height:
        small = load_font(max(10, layout.font_size * 2 // 3))
        lines = wrap(corner, small, layout.label_width - 2 * pad, max(1, (layout.label_height - 2 * pad) // line))
        _draw_block(draw, small, lines, (0, 0, layout.label_width, layout.label_height), _line_height(small, layout.font_size * 2 // 3), fill="#555555")
    return grid


def _draw_block(draw, font, lines: list[str], box: tuple, line_h: int, fill: str = "black") -> None:
    x0, y0, x1, y1 = box
    top = y0 + (y1 - y0 - len(lines) * line_h) // 2
    for i, text in enumerate(lines):
        w = font.getlength(text)
        draw.text((x0 + (x1 - x0 - w) / 2, top + i * line_h), text, fill=fill, font=font)


def png_bytes(image: Image.Image, parameters: str = "") -> bytes:
    """PNG with the A1111 `parameters` text chunk (deterministic: same pixels + text -> same bytes)."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, path: str | Path, parameters: str = "") -> Path:
    return atomic_write_bytes(path, png_bytes(image, parameters))
