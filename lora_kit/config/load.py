"""Recipe files: TOML -> validated `Recipe`, command-line overrides, and the resolved copy of a run.

Validation walks the dataclass type hints, so the schema lives in one place (schema.py). Every problem is
one line that names the file, the key and what was expected, e.g.
    recipes/x.toml: [network] rank: expected an integer, got "sixteen"
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w

from lora_kit.config.checks import check_recipe
from lora_kit.config.schema import Recipe
from lora_kit.errors import UserError
from lora_kit.paths import resolve_recipe_path
from lora_kit.utils import atomic_write_text


class RecipeError(UserError):
    pass


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"a list of {_describe(inner)}s" if inner is not Any else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check one value against a type hint; ints are accepted where floats are expected."""
    origin = get_origin(tp)
    bad = RecipeError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[...], or a choice such as bool | Literal["auto"]
        if value is None and type(None) in get_args(tp):
            return None
        for inner in (a for a in get_args(tp) if a is not type(None)):
            try:
                return _coerce(value, inner, where)
            except RecipeError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)] if inner is not Any else value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # TOML has nan and inf; no key means either (a nan alpha trains a nan LoRA)
            raise RecipeError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    raise bad


def _build(cls: type, data: dict, source: str, section: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        where = f"{source}: [{section}] {key}" if section else f"{source}: {key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise RecipeError(f"{where}: unknown key (expected one of: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: expected a [{key}] table, got {value!r}")
            kwargs[key] = _build(tp, value, source, key)
        else:
            kwargs[key] = _coerce(value, tp, where)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value). The value is read as TOML, else as a string."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = [part.strip() for part in key.split(".")]
    if not all(path):  # "=3", "optimizer.=1", "optimizer..lr=1": a key part is missing
        raise RecipeError(f"override {text!r}: expected section.key=value (a key part is empty)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    p = resolve_recipe_path(str(path))
    source = str(path)
    if not p.is_file():
        raise RecipeError(f"{source}: recipe file not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: not valid TOML ({exc})") from None
    return recipe_from_dict(data, source, overrides or [])


def recipe_from_dict(data: dict, source: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    # A deep copy: overrides write into nested tables, which belong to the caller (a recipe dict reused for
    # several runs, as the benches do, must not carry one run's --set into the next).
    data = apply_overrides(copy.deepcopy(data), overrides or [])
    recipe = _build(Recipe, data, source)
    recipe.source = source
    recipe.output_dir = recipe.output_dir.replace("{name}", recipe.name)
    check_recipe(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    d = dataclasses.asdict(recipe)
    d.pop("source", None)
    return d


def dump_recipe(recipe: Recipe) -> str:
    header = f"# resolved lora-kit recipe (from {Path(recipe.source).name if recipe.source else 'defaults'})\n"
    return header + tomli_w.dumps(recipe_to_dict(recipe))


def write_resolved(recipe: Recipe, out_dir: str | Path) -> Path:
    return atomic_write_text(Path(out_dir) / "recipe.toml", dump_recipe(recipe))
