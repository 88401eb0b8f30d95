"""The shape of the tree (issue 27): files over 600 lines, functions over 60 lines, argparse command lines, ComfyUI
bootstraps outside ``headless/comfy_import.py``, PyAV readers outside ``models/video_reader.py``, and import cycles among
the package's modules. Prints one line per finding and a count per kind; exit code 1 when any count is non-zero.

    python scripts/code_counts.py            # the tracked .py files outside tests/
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
BOOTSTRAP = "headless/comfy_import.py"  # the one place that puts ComfyUI on sys.path
READER = "models/video_reader.py"  # the one video reader (PyAV)
PACKAGES = ("memory", "models", "nodes", "headless", "training", "demo")  # the installed package framememory.*


def tracked_sources() -> list[str]:
    """The .py files outside tests/ that git tracks or would track (not ignored), as they are in the working tree
    (paths relative to the repository root)."""
    out = subprocess.check_output(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                                  text=True)
    return sorted({f for f in out.split() if not f.startswith("tests/") and (ROOT / f).is_file()})


def long_pieces(path: str, tree: ast.Module, text: str) -> list[str]:
    """Findings for one file: its length over MAX_FILE_LINES, each function over MAX_FUNCTION_LINES."""
    found = []
    if text.count("\n") > MAX_FILE_LINES:
        found.append(f"file {path}: {text.count(chr(10))} lines")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"function {path}:{node.lineno} {node.name}: {length} lines")
    return found


def by_library(path: str, tree: ast.Module, text: str) -> dict[str, list[str]]:
    """Findings for one file: argparse imports, ComfyUI bootstraps, PyAV opens for reading."""
    found = defaultdict(list)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if "argparse" in names:
            found["argparse"].append(f"argparse {path}:{node.lineno}")
    if path != BOOTSTRAP and re.search(r"sys\.path\.insert\([^\n]*(COMFYUI|comfy)", text):
        found["bootstrap"].append(f"bootstrap {path}")
    for k, line in enumerate(text.splitlines(), 1):
        if path != READER and "av.open(" in line and '"w"' not in line and "'w'" not in line:
            found["reader"].append(f"reader {path}:{k}")
    return found


def module_imports(path: str, tree: ast.Module) -> set[str]:
    """The package modules ``path`` imports, at module level or inside a function (relative and framememory.*
    imports; ``from . import name`` counts as importing the submodule ``name``; imports under ``if TYPE_CHECKING``
    do not count)."""
    here = path[:-3].replace("/", ".").removesuffix(".__init__")
    parts = here.split(".")
    found = set()
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(block.test) for n in ast.walk(block)}  # annotations only: no import at run time
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in typing_only:
            continue
        if node.level:
            base = parts[:len(parts) - node.level + (1 if path.endswith("__init__.py") else 0)]
        elif (node.module or "").startswith("framememory."):
            base = []
        else:
            continue
        module = ".".join(base + ([node.module.removeprefix("framememory.")] if node.module else []))
        found.add(module)
        found.update(f"{module}.{a.name}" for a in node.names)  # a submodule, where the name is one
    return found


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Import cycles among the package's modules, each as 'a -> b -> a' (a package importing its own submodules from
    its ``__init__`` is not one)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node or node.startswith(nxt + "."):  # not ours, itself, or its package
                continue
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return [f"cycle {c}" for c in found]


def main() -> int:
    findings, graph = defaultdict(list), {}
    for path in tracked_sources():
        text = (ROOT / path).read_text()
        tree = ast.parse(text)
        for line in long_pieces(path, tree, text):
            findings["file" if line.startswith("file") else "function"].append(line)
        for kind, lines in by_library(path, tree, text).items():
            findings[kind] += lines
        if path.split("/")[0] in PACKAGES:
            graph[path[:-3].replace("/", ".").removesuffix(".__init__")] = module_imports(path, tree)
    findings["cycle"] = cycles(graph)
    for kind in ("file", "function", "argparse", "bootstrap", "reader", "cycle"):
        print("\n".join(findings[kind]) or f"({kind}: none)")
    counts = {kind: len(findings[kind]) for kind in ("file", "function", "argparse", "bootstrap", "reader", "cycle")}
    print("counts:", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
