"""No module under tests/ imports from a test module: what several modules share lives in
tests/support/ (plain helpers and classes) or in a conftest.py (pytest fixtures).

Importing from a test module couples two suites' fixtures and helpers through a file that is
collected for its own tests, and a fixture imported by name silently shadows a conftest one.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parent.parent
REPO = TESTS.parent


def is_test_module(name: str) -> bool:
    """True when a dotted module name has a part named like a test module (`test_*`)."""
    return any(part.startswith("test_") for part in name.split("."))


def imports_of_test_modules(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, imported module) for every import of a test module in `source`, at any depth
    (inside functions and `if TYPE_CHECKING:` blocks too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if is_test_module(alias.name))
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if is_test_module(node.module or ""):
                found.append((node.lineno, module))
            elif node.level or module.split(".")[0] == "tests":
                # `from . import test_x` / `from tests.integration import test_x` import the module itself.
                found.extend(
                    (node.lineno, f"{module.rstrip('.')}.{alias.name}" if node.module else module + alias.name)
                    for alias in node.names
                    if alias.name.startswith("test_")
                )
    return sorted(found)


def violations() -> list[str]:
    problems = []
    for path in sorted(TESTS.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for line, module in imports_of_test_modules(path.read_text(encoding="utf-8"), str(path)):
            problems.append(f"{path.relative_to(REPO)}:{line} imports from test module {module}")
    return problems


def test_no_module_under_tests_imports_from_a_test_module() -> None:
    problems = violations()
    assert not problems, "shared helpers belong in tests/support/, shared fixtures in a conftest.py:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from pkg.test_feed import Feed\n", [(1, "pkg.test_feed")]),
        ("import pkg.test_feed\n", [(1, "pkg.test_feed")]),
        ("import pkg.test_feed as feed\n", [(1, "pkg.test_feed")]),
        ("from .test_feed import Feed\n", [(1, ".test_feed")]),
        ("from . import test_feed\n", [(1, ".test_feed")]),
        ("from tests.integration import test_feed, authority_server\n", [(1, "tests.integration.test_feed")]),
        ("def f():\n    from pkg.test_feed import Feed\n", [(2, "pkg.test_feed")]),
        ("if TYPE_CHECKING:\n    from pkg.test_feed import Feed\n", [(2, "pkg.test_feed")]),
        ("from tests.support import details\nfrom tests.integration.authority_server import A\n", []),
        ("from tests.support.reporting import Feed\nimport pytest\n", []),
        ("from unittest import test_helper\n", []),  # a name from a third-party package, not a test module
    ],
)
def test_the_check_finds_imports_of_test_modules(source: str, expected: list[tuple[int, str]]) -> None:
    assert imports_of_test_modules(source) == expected
