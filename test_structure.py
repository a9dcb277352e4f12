"""The module's shape: the command line comes last, and nothing above it uses it.

So the CLI could move to a file of its own without surgery, and a reader of the core never
meets a command-line name.
"""

from __future__ import annotations

import ast
import pathlib

MODULE = pathlib.Path(__file__).with_name("artifactregistry_gauth.py")
BOUNDARY = "# The command line."


def _top_level_names(nodes) -> set:
    names = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_nothing_above_the_command_line_boundary_uses_a_command_line_name():
    source = MODULE.read_text(encoding="utf-8")
    boundary = next(
        number for number, line in enumerate(source.splitlines(), 1) if line.startswith(BOUNDARY)
    )
    body = [n for n in ast.parse(source).body if not isinstance(n, ast.If)]  # __main__ guard
    core = [n for n in body if n.lineno < boundary]
    cli_names = _top_level_names(n for n in body if n.lineno > boundary)
    assert cli_names, "the boundary banner must stand above the command line"
    used = {
        (node.id, node.lineno)
        for top in core
        for node in ast.walk(top)
        if isinstance(node, ast.Name) and node.id in cli_names
    }
    assert not used, f"core code uses command-line names: {sorted(used)}"


def test_the_backend_discovery_order_and_lookup_come_in_the_first_400_lines():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    where = {name: node.lineno for node in tree.body for name in _top_level_names([node])}
    for name in ("_build_backend_class", "lookup", "DISCOVERY"):
        assert where[name] <= 400, f"{name} is at line {where[name]}"


def test_no_test_module_imports_another():
    """Shared test helpers live in conftest.py or the fakes package, never in a test module."""
    root = MODULE.parent
    imports = []
    for path in sorted(root.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            imports += [(path.name, name) for name in names if name.startswith("test_")]
    assert not imports


def test_every_test_module_is_in_pytests_testpaths():
    """./run-tests runs pytest without paths: a module left out of testpaths never runs."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = MODULE.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["pytest"]["ini_options"]["testpaths"])
    assert {path.name for path in root.glob("test_*.py")} <= listed
