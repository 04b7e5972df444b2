"""House rules a reader relies on: short files, short functions (split by role)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rayfed_bpt"


def test_no_package_file_over_400_lines_and_no_function_over_80():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = path.read_text()
        name = path.relative_to(PACKAGE.parent)
        if len(src.splitlines()) > 400:
            long.append(f"{name}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{name}:{node.lineno} {node.name}: {n} lines")
    assert not long, "split by role: " + "; ".join(long)
