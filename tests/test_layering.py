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


def _imports(path: Path, package: Path = PACKAGE) -> list[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
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


def _violations(layer: str, package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted((package / layer).rglob("*.py")):
        for name in _imports(path, package):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(package.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    assert _violations(layer) == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a relative import of the core from a codec is caught."""
    package = tmp_path / "gateway"
    (package / "codecs").mkdir(parents=True)
    (package / "codecs" / "probe.py").write_text("from ..core import Broker\nimport trio\n")
    found = _violations("codecs", package)
    assert "gateway/codecs/probe.py imports trio" in found
    assert "gateway/codecs/probe.py imports gateway.core" in found
