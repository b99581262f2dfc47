"""The engine stays pure numpy: no web, validation or Redis stack, and no import loop."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import budget_service.engine

ENGINE = Path(budget_service.engine.__file__).parent
FORBIDDEN = ("fastapi", "starlette", "pydantic", "redis", "httpx", "uvicorn")


def engine_modules() -> list[str]:
    return sorted(
        "budget_service.engine" + ("" if path.stem == "__init__" else f".{path.stem}")
        for path in ENGINE.glob("*.py")
    )


def test_importing_the_engine_loads_no_web_or_redis_package() -> None:
    modules = engine_modules()
    assert len(modules) >= 6  # the package and its parts
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert "numpy" in loaded  # the check sees what the engine imports
    assert loaded.isdisjoint(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def engine_imports(module: str) -> set[str]:
    """The engine modules `module` imports (at any level, TYPE_CHECKING blocks included)."""
    stem = module.rsplit(".", 1)[-1]
    path = ENGINE / ("__init__.py" if module == "budget_service.engine" else f"{stem}.py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n in engine_modules())
    return found - {module}


def test_no_import_cycle_among_engine_modules() -> None:
    parts = [m for m in engine_modules() if m != "budget_service.engine"]
    graph = {m: engine_imports(m) - {"budget_service.engine"} for m in parts}
    # the submodules never import the package (that would loop through __init__)
    assert all("budget_service.engine" not in engine_imports(m) for m in parts)
    assert any(graph.values())  # the check sees the imports between parts
    order: list[str] = []  # a topological order exists iff there is no cycle
    while len(order) < len(graph):
        ready = [m for m in graph if m not in order and graph[m] <= set(order)]
        assert ready, f"import cycle among {sorted(set(graph) - set(order))}"
        order.extend(sorted(ready))
