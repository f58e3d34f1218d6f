"""The import rules of ARCHITECTURE.md: codecs are pure; the core knows no wire protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

FORBIDDEN = {
    "codecs": ("trio", "gateway.core", "gateway.listeners", "gateway.bridges", "gateway.store"),
    "core": (
        "gateway.codecs",
        "gateway.listeners",
        "gateway.bridges",
        "h11",
        "wsproto",
        "ssl",
        "pamqp",
    ),
}


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.append(target)
            names.extend(f"{target}.{alias.name}" for alias in node.names)
    return names


def _violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert _violations(layer) == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a relative import of the core from a codec is caught."""
    fake = PACKAGE / "codecs" / "_layering_probe.py"
    fake.write_text("from ..core import Broker\nimport trio\n", encoding="utf-8")
    try:
        found = _violations("codecs")
    finally:
        fake.unlink()
    assert any("imports gateway.core" in item for item in found)
    assert any("imports trio" in item for item in found)
