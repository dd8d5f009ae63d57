"""The layers of docs/ARCHITECTURE.md, checked on the source: imports run one way.

    frameexit/  (plain PyTorch: no ray, pipelines, tuning or bench)
        ▲
    pipelines/  (Ray glue: no tuning or bench)
        ▲
    tuning/     (Ray Tune: no bench)
        ▲
    frameexit_cli/  (the `frameexit` command: on top of all; nothing imports it)

    bench/      frameexit/ and the public entry points it benchmarks only

Every import statement counts, also the ones inside functions (lazy imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What a layer must never import (top-level module names or dotted prefixes).
FORBIDDEN = {
    "frameexit": ("ray", "pipelines", "tuning", "bench", "frameexit_cli"),
    "pipelines": ("tuning", "bench", "frameexit_cli"),
    "tuning": ("bench", "frameexit_cli"),
    "frameexit_cli": ("bench",),
}
# bench/ benchmarks these entry points; everything else of pipelines/ and tuning/ is internal.
BENCH_ENTRY_POINTS = (
    "pipelines.check", "pipelines.label", "pipelines.train", "tuning.sweep",
    "pipelines.labeling.simulation",  # the part protocol's schedule player
)  # fmt: skip


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file (``from a.b import c`` → ``a.b.c`` and
    ``a.b``; relative imports are resolved against the file's package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_one_way(layer):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(layer)
        for line, module in imported_modules(path)
        if any(_matches(module, banned) for banned in FORBIDDEN[layer])
    ]
    assert not bad, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(bad)


#: packages whose public names (their ``__all__``) a benchmark may use: the labeling
#: package's part writer and readers build outputs as runs write them
BENCH_PUBLIC_PACKAGES = ("pipelines.labeling",)


def _public(module: str) -> bool:
    import importlib

    package, _, name = module.rpartition(".")
    if module in BENCH_PUBLIC_PACKAGES:
        return True
    return package in BENCH_PUBLIC_PACKAGES and name in importlib.import_module(package).__all__


def test_bench_uses_frameexit_and_entry_points_only():
    bad = []
    for path in _sources("bench"):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top not in ("pipelines", "tuning") or module in ("pipelines", "tuning"):
                continue
            if _public(module):
                continue
            if not any(
                _matches(module, entry) or entry.startswith(module + ".")
                for entry in BENCH_ENTRY_POINTS
            ):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "bench/ may use frameexit/ and the entry points only:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule would catch an import hidden in a function or written relative."""
    probe = tmp_path / "frameexit" / "video" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    import ray.data\n    from ...pipelines import common\n")
    found = [module for _, module in imported_modules(probe, root=tmp_path)]
    assert "ray.data" in found and "pipelines.common" in found
    assert any(_matches(m, "ray") for m in found)


def test_the_map_lists_every_module():
    """docs/ARCHITECTURE.md names every module of the three layers (keep map and code in step)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(ROOT))
        for layer in ("frameexit", "pipelines", "tuning", "frameexit_cli")
        for path in _sources(layer)
        if path.name != "__init__.py" and str(path.relative_to(ROOT)) not in text
    ]
    assert not missing, "modules missing from docs/ARCHITECTURE.md: " + ", ".join(missing)
