"""The layout stays what the README's "Layout" promises: a benchmark harness smaller than the
product, in small modules and functions, and tests that lean on the product, not the harness."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# What ships: the two services, the classify package, their shared code, the bulk client and the
# Python tools the deploy and model scripts run (model import, INT8 calibration, sizing).
PRODUCT = ("service.py", "classify", "common", "preprocess", "client", "scripts")
LONGEST_MODULE = 420
LONGEST_FUNCTION = 60


def _python(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = REPO / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def _lines(files: list[Path]) -> int:
    return sum(len(path.read_text().splitlines()) for path in files)


def test_the_benchmarks_are_smaller_than_the_product():
    benchmarks, product = _lines(_python("benchmarks")), _lines(_python(*PRODUCT))
    assert benchmarks <= product, f"benchmarks/ {benchmarks} lines against {product}"


def test_no_benchmark_module_or_function_is_long():
    long = []
    for path in _python("benchmarks"):
        source = path.read_text()
        if len(source.splitlines()) > LONGEST_MODULE:
            long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length}")
    assert long == []


def test_only_the_benchmark_tests_import_the_benchmarks():
    importers = []
    for path in _python("tests", *PRODUCT):
        if path.is_relative_to(REPO / "tests" / "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(module.split(".")[0] == "benchmarks" for module in modules):
                importers.append(str(path.relative_to(REPO)))
    assert importers == []
