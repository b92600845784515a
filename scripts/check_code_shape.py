"""Checks of code shape that ruff and import-linter do not make; `make lint` runs it.

- No private name (`_name`, not a dunder) imported from another first-party
  module. A helper two modules need is public and lives where both import it.
  Ruff's PLC2701 allows private imports inside one top-level package, which is
  exactly where they happened, so this walks the import statements itself
  (imports inside functions included).
- No first-party module longer than MAX_LINES lines.

Import cycles are import-linter's (`acyclic_siblings` in pyproject.toml).

    python scripts/check_code_shape.py [ROOT ...]   (default: avgate gateway services tests scripts)
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections.abc import Iterator

MAX_LINES = 900
DEFAULT_ROOTS = ("avgate", "gateway", "services", "tests", "scripts")
GENERATED = ("/v1/",)


def python_files(roots: list[pathlib.Path]) -> Iterator[pathlib.Path]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            text = path.as_posix()
            if "__pycache__" in text or any(part in text for part in GENERATED):
                continue
            yield path


def module_name(path: pathlib.Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_imports(path: pathlib.Path, first_party: set[str]) -> Iterator[str]:
    importer = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = imported_module(node, importer, path.name == "__init__.py")
        if target.split(".")[0] not in first_party or target == importer:
            continue
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            if f"{target}.{name}" in MODULES:
                continue  # a private submodule: its package's own business
            yield f"{path}:{node.lineno}: imports private name {name!r} from {target}"


MODULES: set[str] = set()


def main(argv: list[str]) -> int:
    roots = [pathlib.Path(r) for r in (argv or DEFAULT_ROOTS)]
    files = list(python_files(roots))
    MODULES.update(module_name(p) for p in files)
    first_party = {r.name for r in roots}
    problems: list[str] = []
    for path in files:
        problems.extend(private_imports(path, first_party))
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{path}: {lines} lines; a module holds at most {MAX_LINES} (split it by what it owns)")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
