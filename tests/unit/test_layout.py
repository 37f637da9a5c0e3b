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
    """The services' and the client's packages alone, without the developer's tools in
    scripts/ (the stricter reading of "the product")."""
    benchmarks, product = _lines(_python("benchmarks")), _lines(_python(*PRODUCT[:-1]))
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


def test_every_package_the_product_imports_is_declared():
    """What the services, the job and the client import is in pyproject's dependencies (or a
    runtime family's extra), not only there because BentoML happens to bring it."""
    import sys
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [
        *project["dependencies"],
        *(r for n in ("onnx", "keras", "openvino") for r in extras[n]),
    ]
    names = {_normalized(requirement.split("==")[0].split("[")[0]) for requirement in declared}
    ours = {"classify", "common", "preprocess", "client", "service", "scripts"}
    providers = packages_distributions()
    undeclared = set()
    for path in _python(*PRODUCT[:-1]):  # scripts/ are the developer's tools
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ours:
                    continue
                dists = {_normalized(d) for d in providers.get(top, [top])}
                if not dists & names:
                    undeclared.add(f"{top} ({path.relative_to(REPO)})")
    assert sorted(undeclared) == []


def _normalized(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")
