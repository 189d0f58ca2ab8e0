"""Issue 17: imports sit at module top; one left inside a function says why (optional backend, import
cycle, keeping `lora-kit --help` fast) in a comment on its line or the line above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lora_kit"
# Tool pragmas are not reasons.
PRAGMA = re.compile(r"#\s*(noqa\b|type:\s*ignore\b|pragma\b|fmt:)[^#]*")


def _comment(line: str) -> bool:
    """True when the line carries a comment other than tool pragmas (a '#' inside a string is ignored
    only roughly: imports hold no strings)."""
    _, sep, rest = line.partition("#")
    return bool(sep) and bool(PRAGMA.sub("", "#" + rest).strip(" #"))


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    found = {}
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[node.lineno] = node  # nested functions: counted once
    return [found[k] for k in sorted(found)]


def undocumented_imports(source: str) -> list[int]:
    """Line numbers of function-level imports without a reason. A comment covers the imports that follow
    it directly (blank lines between them allowed), so one comment can explain a group."""
    lines = source.splitlines()
    imports = _function_imports(ast.parse(source))
    import_lines = {n for node in imports for n in range(node.lineno, node.end_lineno + 1)}
    bad = []
    for node in imports:
        if any(_comment(lines[n - 1]) for n in range(node.lineno, node.end_lineno + 1)):
            continue
        i = node.lineno - 1  # 1-based line above
        while i >= 1 and (not lines[i - 1].strip() or (i in import_lines and not _comment(lines[i - 1]))):
            i -= 1
        if not (i >= 1 and _comment(lines[i - 1])):
            bad.append(node.lineno)
    return bad


def test_rule_sees_a_bare_import_and_accepts_a_commented_group():
    src = (
        "def f():\n"
        "    import torch\n"
        "\n"
        "def g():\n"
        "    # lazy: optional backend\n"
        "    import a\n"
        "\n"
        "    from b import c\n"
        "    x = 1\n"
        "    import d  # noqa: F401\n"
        "\n"
        "def h():\n"
        "    import e  # lazy: import cycle with e\n"
    )
    assert undocumented_imports(src) == [2, 10]


def test_every_function_level_import_in_lora_kit_says_why():
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in undocumented_imports(path.read_text(encoding="utf-8"))
    ]
    assert not bad, "function-level imports without a reason (move them to the module top, or comment why):\n" + "\n".join(bad)
