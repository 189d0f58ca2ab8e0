"""A1111 "parameters" text: what A1111, Forge, Civitai and most image viewers read from a PNG.

The format (A1111 `modules/processing.py::create_infotext`, parsed by
`generation_parameters_copypaste.parse_generation_parameters`) is:

    <prompt> <lora:name:weight>
    Negative prompt: <negative>
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64, Model: name, Lora hashes: "name: 0123456789"

Values containing a comma, colon or newline are JSON-quoted, as A1111's `quote()` does. No library
writes this format, hence the hand-written (and tested round-trip) formatter and parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A1111's parse_generation_parameters regex: `Key: value` pairs, values optionally JSON-quoted.
_PAIR = re.compile(r'\s*([\w][\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_LORA_TAG = re.compile(r"<lora:([^:>]+):([^:>]+)>")


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def fmt_number(x: float) -> str:
    """7.0 -> "7", 0.25 -> "0.25": A1111 prints what the user typed, not float noise."""
    return f"{float(x):.6g}"


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{fmt_number(weight)}>"


def strip_lora_tags(prompt: str) -> str:
    return re.sub(r"\s*" + _LORA_TAG.pattern, "", prompt).strip()


def format_parameters(
    prompt: str,
    negative_prompt: str,
    fields: dict[str, Any],
    loras: list[tuple[str, float, str]] = (),
) -> str:
    """The three-part text. `loras` = (alias, weight, short hash); weight-0 LoRAs are left out."""
    active = [(name, w, h) for name, w, h in loras if float(w) != 0.0]
    head = " ".join([prompt] + [lora_tag(n, w) for n, w, _ in active]).strip()
    lines = [head]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = dict(fields)
    hashes = [f"{_alias(n)}: {h}" for n, _, h in active if h]
    if hashes:
        pairs["Lora hashes"] = ", ".join(hashes)
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in pairs.items() if v is not None and v != ""))
    return "\n".join(lines)


def _alias(name: str) -> str:
    # A1111 strips ":" and "," from the alias in "Lora hashes" so the value stays parseable.
    return name.replace(":", "").replace(",", "")


def parse_parameters(text: str) -> dict[str, Any]:
    """Inverse of format_parameters: {"Prompt", "Negative prompt", <fields>..., "loras": {name: weight}}."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(_PAIR.findall(lines[-1])) >= 3 else ""
    body = lines[:-1] if last else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        out[key.strip()] = unquote(value.strip())
    out["loras"] = {m.group(1): float(m.group(2)) for m in _LORA_TAG.finditer(out["Prompt"])}
    if "Lora hashes" in out:
        out["Lora hashes"] = dict(p.split(": ", 1) for p in out["Lora hashes"].split(", ") if ": " in p)
    return out


def controlnet_field(module: str, model: str, weight: float, start: float, end: float, thresholds=None) -> str:
    """The sd-webui-controlnet extension's `ControlNet N` value (itself a comma list, hence quoted later)."""
    parts = [f"Module: {module}", f"Model: {model}", f"Weight: {fmt_number(weight)}", "Resize Mode: Crop and Resize"]
    if thresholds:
        parts += [f"Threshold A: {fmt_number(thresholds[0])}", f"Threshold B: {fmt_number(thresholds[1])}"]
    parts += [f"Guidance Start: {fmt_number(start)}", f"Guidance End: {fmt_number(end)}"]
    return ", ".join(parts)
