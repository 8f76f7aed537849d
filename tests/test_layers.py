"""The package layering, as import-linter contracts would state it, checked on every import
statement (module level and inside functions) of the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "server", "attacker", "defender", "testbed", "bench", "tests")
# package -> the first-party packages it must never import
FORBIDDEN = {
    "shared": {"server", "attacker", "defender", "testbed", "bench", "tests"},
    "server": {"attacker", "defender", "testbed", "bench", "tests"},
    "attacker": {"server", "defender", "testbed", "bench", "tests"},
    "defender": {"server", "attacker", "testbed", "bench", "tests"},
    "testbed": {"bench", "tests"},
    "bench": {"tests"},
}


def first_party_imports(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_allowed_layers(package):
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}"
           for p in sorted((REPO / package).rglob("*.py"))
           for mod, line in sorted(first_party_imports(p), key=lambda x: x[1]) if mod in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from server.app import create_app\n    import attacker.cli\n")
    assert first_party_imports(f) == {("server", 2), ("attacker", 3)}
